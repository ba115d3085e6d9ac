"""nmt.model.checkpoint: round trips, format versions, missing files, atomic writes, safe
loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nmt.config import DecodeConfig
from nmt.decode.translate import Translator
from nmt.errors import CheckpointError
from nmt.model.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    RESUME_FILE,
    SPM_FILE,
    WEIGHTS_FILE,
    atomic_write,
    load_model,
    load_resume,
    load_weights,
    read_config,
    save_resume,
    save_weights,
    write_json,
)


@pytest.fixture
def model_dir(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained model folder's three files, for tests that damage it."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in (CONFIG_FILE, SPM_FILE, WEIGHTS_FILE):
        shutil.copy(tiny_run / name, folder / name)
    return folder


def translations(folder: Path, lines: list[str], beam_size: int = 4) -> list[tuple[str, float]]:
    translator = Translator.load(folder, DecodeConfig(beam_size=beam_size), device="cpu")
    return [(t.text, t.score) for t in translator.translate(lines)]


def test_save_load_round_trip_gives_identical_translations(
    tiny_run: Path, tmp_path: Path, multi30k
) -> None:
    model, config = load_model(tiny_run)
    assert not model.training and config["format_version"] == FORMAT_VERSION
    copy = tmp_path / "copy"
    save_weights(copy / WEIGHTS_FILE, model, step=7)
    write_json(copy / CONFIG_FILE, config)
    shutil.copy(tiny_run / SPM_FILE, copy / SPM_FILE)
    original, reloaded = load_weights(tiny_run / WEIGHTS_FILE), load_weights(copy / WEIGHTS_FILE)
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in reloaded)
    lines = multi30k("test_2016_flickr", "de", 8)
    assert translations(copy, lines) == translations(tiny_run, lines)


def test_other_weights_file_by_name(tiny_run: Path) -> None:
    last, _ = load_model(tiny_run, weights="last.safetensors")
    state = load_weights(tiny_run / "last.safetensors")
    assert all(torch.equal(p, state[k]) for k, p in last.state_dict().items())


def test_other_format_version_is_refused_naming_both_versions(model_dir: Path) -> None:
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    write_json(model_dir / CONFIG_FILE, {**config, "format_version": 99})
    with pytest.raises(CheckpointError) as info:
        Translator.load(model_dir, device="cpu")
    message = str(info.value)
    assert str(model_dir / CONFIG_FILE) in message
    assert f"model format version 99, this nmt reads version {FORMAT_VERSION}" in message


def test_version_1_folder_loads_with_the_new_options_at_their_defaults(
    model_dir: Path, multi30k
) -> None:
    """A folder written before the Marian options existed (format version 1, no such keys)
    translates exactly as the same model written now."""
    lines = multi30k("test_2016_flickr", "de", 4)
    now = translations(model_dir, lines)
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    new_keys = ("activation", "output_bias", "position_layout", "scale_embeddings", "pad_id",
                "bos_id", "eos_id")  # fmt: skip
    old_model = {k: v for k, v in config["model"].items() if k not in new_keys}
    write_json(model_dir / CONFIG_FILE, {**config, "format_version": 1, "model": old_model})
    assert translations(model_dir, lines) == now


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (WEIGHTS_FILE, "weights file not found"),
        (SPM_FILE, "SentencePiece model not found"),
        (CONFIG_FILE, "missing; is"),
    ],
)
def test_missing_file_is_named(model_dir: Path, name: str, expected: str) -> None:
    (model_dir / name).unlink()
    with pytest.raises(CheckpointError) as info:
        Translator.load(model_dir, device="cpu")
    assert str(info.value).startswith(f"{model_dir / name}: {expected}")


def test_damaged_files_are_checkpoint_errors(model_dir: Path) -> None:
    (model_dir / WEIGHTS_FILE).write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(model_dir)
    (model_dir / CONFIG_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(model_dir)


def test_weights_that_do_not_fit_the_config(model_dir: Path) -> None:
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    config["model"]["n_decoder_layers"] += 1  # a layer whose weights the file lacks
    write_json(model_dir / CONFIG_FILE, config)
    with pytest.raises(CheckpointError, match="weights do not match .*missing: decoder_layers.2"):
        load_model(model_dir)
    config["model"]["n_decoder_layers"] -= 1
    config["model"]["ffn_dim"] *= 2  # the same names with other shapes
    write_json(model_dir / CONFIG_FILE, config)
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(model_dir)


def test_atomic_write_keeps_the_mode_follows_a_link_and_refuses_a_folder(tmp_path: Path) -> None:
    """A private (0600) file stays private once replaced (it became 0644); a symbolic link
    stays a link to the replaced file; a folder is refused before ``write`` runs (the
    translation of a whole file once ran before ``-o .`` failed)."""
    import os
    import stat

    private = tmp_path / "private.en"
    private.write_bytes(b"old")
    private.chmod(0o600)
    atomic_write(private, lambda f: f.write(b"new"))
    assert private.read_bytes() == b"new" and stat.S_IMODE(private.stat().st_mode) == 0o600
    link = tmp_path / "link.en"
    link.symlink_to(private.name)
    atomic_write(link, lambda f: f.write(b"through"))
    assert link.is_symlink() and private.read_bytes() == b"through"
    calls = []
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, lambda f: calls.append(f))
    assert calls == [] and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_atomic_write_failure_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous content")

    def crash_midway(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"new content, but only half of it")
        f.flush()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash_midway)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left

    atomic_write(target, lambda f: f.write(b"complete"))
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_interrupted_save_keeps_the_last_checkpoint(
    tiny_run: Path, tmp_path: Path, monkeypatch
) -> None:
    model, _ = load_model(tiny_run)
    path = tmp_path / WEIGHTS_FILE
    save_weights(path, model)
    before = path.read_bytes()
    with torch.no_grad():
        model.embed.weight.add_(1.0)

    def interrupted(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr("nmt.fileio.os.fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_weights(path, model)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [WEIGHTS_FILE]


class Payload:
    """An arbitrary object: unpickling it would run code (it creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_resume_round_trip_and_weights_only_loading(tmp_path: Path) -> None:
    state = {
        "format_version": FORMAT_VERSION,
        "model": {"w": torch.arange(6.0).view(2, 3)},
        "state": {"step": 12, "best_bleu": 3.5},
        "python_rng": [1, 2, 3],
    }
    save_resume(tmp_path / RESUME_FILE, state)
    loaded = load_resume(tmp_path / RESUME_FILE)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["state"] == state["state"] and loaded["python_rng"] == [1, 2, 3]

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "x": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=f"{evil}: cannot load resume checkpoint"):
        load_resume(evil)
    assert not marker.exists()  # the payload was never unpickled


def test_resume_of_another_format_or_garbage(tmp_path: Path) -> None:
    save_resume(tmp_path / "old.pt", {"format_version": 0})
    with pytest.raises(
        CheckpointError, match=f"resume checkpoint format 0, expected {FORMAT_VERSION}"
    ):
        load_resume(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot load resume checkpoint"):
        load_resume(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError):
        load_resume(tmp_path / "absent.pt")


def test_resume_checkpoint_is_streamed_into_the_file_not_built_in_memory(
    tmp_path: Path, monkeypatch
) -> None:
    """``torch.save`` writes into the temporary file piece by piece: no single write holds
    more than the largest tensor. Built in a BytesIO first, the whole checkpoint was one
    write (and a second copy of it in memory: 3.4 GB for ``big`` with a 32k vocabulary)."""
    from nmt.model import checkpoint

    sizes: list[int] = []

    class Recording:
        def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
            self.f = f

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            sizes.append(memoryview(data).nbytes)
            return self.f.write(data)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.f, name)

    real = checkpoint.atomic_write
    monkeypatch.setattr(
        checkpoint, "atomic_write", lambda path, write: real(path, lambda f: write(Recording(f)))
    )
    tensors = {f"w{i}": torch.full((256, 256), float(i)) for i in range(8)}  # 256 KiB each
    save_resume(tmp_path / RESUME_FILE, {"format_version": FORMAT_VERSION, "model": tensors})
    total = (tmp_path / RESUME_FILE).stat().st_size
    assert sum(sizes) == total > 8 * 256 * 1024
    assert max(sizes) <= 256 * 1024  # one tensor at most
    loaded = load_resume(tmp_path / RESUME_FILE)["model"]
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
