"""Tests of the dataset catalog, fetching with sha256 checks, and the ``nmt data`` commands.

The Multi30k tests copy from the tests' Multi30k folder (conftest; no network); downloads are
tested with ``file://`` URLs in a small catalog written by the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import nmt.data.catalog as catalog
from cli import data as data_cli
from nmt.data.catalog import ChecksumError, DownloadError, get_dataset, load_catalog, sha256_file
from nmt.errors import ConfigError, InputError

MULTI30K_FILES = sorted(
    f"{split}.{lang}.gz"
    for split in ("train", "val", "test_2016_flickr")
    for lang in ("de", "en", "fr", "cs")
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Temporary files a fetch may have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def mirror(multi30k_dir: Path) -> Path:
    """The tests' Multi30k folder (conftest), a mirror of the catalog's Multi30k files."""
    return multi30k_dir


@pytest.fixture
def mirror_copy(tmp_path: Path, mirror: Path) -> Path:
    """A writable copy of the Multi30k mirror."""
    copy = tmp_path / "mirror"
    copy.mkdir()
    for name in MULTI30K_FILES:
        shutil.copyfile(mirror / name, copy / name)
    return copy


@pytest.fixture
def tiny_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A catalog of one dataset, ``tiny``, whose two files are served from ``file://`` URLs."""
    served = tmp_path / "served"
    served.mkdir()
    contents = {"a.txt": b"ein Hund\n" * 1000, "b.txt": b"a dog\n" * 1000}
    files = []
    for name, data in contents.items():
        (served / name).write_bytes(data)
        url = (served / name).as_uri()
        files.append({"name": name, "url": url, "sha256": _sha256(data), "bytes": len(data)})
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"tiny": {"languages": ["de", "en"], "files": files}}))
    monkeypatch.setattr(catalog, "CATALOG_PATH", path)
    return contents


UPSTREAM_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"  # pinned: upstream master moved

# The catalog ----------------------------------------------------------------------------------


def test_catalog_lists_multi30k_with_four_languages_and_twelve_files() -> None:
    dataset = load_catalog()["multi30k"]
    assert sorted(dataset.languages) == ["cs", "de", "en", "fr"]
    assert dataset.splits == {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
    assert sorted(f.name for f in dataset.files) == MULTI30K_FILES
    for file in dataset.files:
        assert len(file.sha256) == 64
        assert (
            file.url == f"https://github.com/multi30k/dataset/raw/{UPSTREAM_COMMIT}/data/task1/raw/"
            f"{file.name}"
        )


def test_catalog_digests_and_sizes_match_the_mirror(mirror: Path) -> None:
    for file in load_catalog()["multi30k"].files:
        assert sha256_file(mirror / file.name) == file.sha256, file.name
        assert (mirror / file.name).stat().st_size == file.bytes, file.name


def test_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset catalog not found"):
        load_catalog(tmp_path / "nope.json")


def test_catalog_entry_with_unknown_key_lists_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    file = {"name": "a.txt", "url": "file:///a.txt", "sha256": "0" * 64}
    path.write_text(json.dumps({"x": {"files": [file], "licence": "MIT"}}))
    with pytest.raises(ConfigError, match=r"unknown keys \['licence'\].*'license'"):
        load_catalog(path)


def test_catalog_rejects_a_malformed_digest(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    file = {"name": "a.txt", "url": "file:///a.txt", "sha256": "abc"}
    path.write_text(json.dumps({"x": {"files": [file]}}))
    with pytest.raises(ConfigError, match="not 64 hex"):
        load_catalog(path)


def test_unknown_dataset_lists_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'multi31k'.*multi30k"):
        get_dataset("multi31k", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Fetching from a mirror -----------------------------------------------------------------------


def test_get_from_mirror_gives_the_twelve_files_with_their_digests(
    tmp_path: Path, no_network: None, mirror: Path
) -> None:
    out = tmp_path / "out"
    calls: list[tuple[str, int, int | None]] = []
    paths = get_dataset("multi30k", out, mirror=mirror, progress=lambda *a: calls.append(a))
    assert sorted(p.name for p in paths) == MULTI30K_FILES
    assert sorted(p.name for p in out.iterdir()) == MULTI30K_FILES
    for file in load_catalog()["multi30k"].files:
        assert sha256_file(out / file.name) == file.sha256
        assert (out / file.name).read_bytes() == (mirror / file.name).read_bytes()
        assert (file.name, file.bytes, file.bytes) in calls  # the last report of each file


def test_second_get_skips_files_that_are_already_intact(
    tmp_path: Path, no_network: None, mirror: Path
) -> None:
    out = tmp_path / "out"
    get_dataset("multi30k", out, mirror=mirror)
    for path in out.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an mtime a rewrite would change
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()}
    paths = get_dataset("multi30k", out, mirror=mirror)
    assert sorted(p.name for p in paths) == MULTI30K_FILES
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()} == before


def test_second_get_needs_neither_mirror_nor_network(
    tmp_path: Path, no_network: None, mirror: Path
) -> None:
    out = tmp_path / "out"
    get_dataset("multi30k", out, mirror=mirror)
    assert sorted(p.name for p in get_dataset("multi30k", out)) == MULTI30K_FILES


def test_corrupt_mirror_file_is_an_error_naming_it_and_leaves_nothing(
    tmp_path: Path, mirror_copy: Path
) -> None:
    corrupt = bytearray((mirror_copy / "val.fr.gz").read_bytes())
    corrupt[100] ^= 0xFF
    (mirror_copy / "val.fr.gz").write_bytes(bytes(corrupt))
    expected = next(f.sha256 for f in load_catalog()["multi30k"].files if f.name == "val.fr.gz")
    out = tmp_path / "out"
    with pytest.raises(ChecksumError) as info:
        get_dataset("multi30k", out, mirror=mirror_copy)
    message = str(info.value)
    assert "val.fr.gz" in message
    assert expected in message
    assert _sha256(bytes(corrupt)) in message
    assert not (out / "val.fr.gz").exists()
    assert _leftovers(out) == []


def test_corrupt_file_in_the_output_folder_is_fetched_again(
    tmp_path: Path, mirror_copy: Path
) -> None:
    out = tmp_path / "out"
    get_dataset("multi30k", out, mirror=mirror_copy)
    (out / "train.en.gz").write_bytes(b"truncated")
    get_dataset("multi30k", out, mirror=mirror_copy)
    assert (out / "train.en.gz").read_bytes() == (mirror_copy / "train.en.gz").read_bytes()


def test_file_missing_from_the_mirror_is_an_error_naming_its_path(
    tmp_path: Path, mirror_copy: Path
) -> None:
    (mirror_copy / "test_2016_flickr.cs.gz").unlink()
    with pytest.raises(InputError) as info:
        get_dataset("multi30k", tmp_path / "out", mirror=mirror_copy)
    assert str(mirror_copy / "test_2016_flickr.cs.gz") in str(info.value)
    assert "not in the mirror folder" in str(info.value)
    assert _leftovers(tmp_path / "out") == []


def test_missing_mirror_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mirror folder not found"):
        get_dataset("multi30k", tmp_path / "out", mirror=tmp_path / "nowhere")


# Downloading ----------------------------------------------------------------------------------


def test_download_from_file_urls_writes_and_verifies(
    tmp_path: Path, tiny_catalog: dict[str, bytes]
) -> None:
    out = tmp_path / "out"
    calls: list[tuple[str, int, int | None]] = []
    paths = get_dataset("tiny", out, progress=lambda *a: calls.append(a))
    assert [p.name for p in paths] == ["a.txt", "b.txt"]
    for name, data in tiny_catalog.items():
        assert (out / name).read_bytes() == data
        assert calls.count((name, len(data), len(data))) == 1
    assert _leftovers(out) == []


def test_download_with_wrong_digest_leaves_nothing(
    tmp_path: Path, tiny_catalog: dict[str, bytes]
) -> None:
    (tmp_path / "served" / "b.txt").write_bytes(b"tampered\n")
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match=r"b\.txt.*sha256 mismatch"):
        get_dataset("tiny", out)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]


def test_interrupted_download_leaves_nothing(
    tmp_path: Path, tiny_catalog: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Dropped:
        """A response that sends one chunk, then loses the connection."""

        headers = {"Content-Length": "9000"}

        def __init__(self) -> None:
            self.chunks = [b"ein Hund\n"]

        def __enter__(self) -> Dropped:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self, size: int) -> bytes:
            if self.chunks:
                return self.chunks.pop()
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Dropped())
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"a\.txt.*connection reset.*--mirror"):
        get_dataset("tiny", out)
    assert list(out.iterdir()) == []


# The `nmt data` commands ----------------------------------------------------------------------


def _cli() -> typer.Typer:
    # A private app: cli.main imports every command module, some of which may not exist yet.
    app = typer.Typer()
    app.add_typer(data_cli.app, name="data")
    return app


def test_cli_get_from_mirror(tmp_path: Path, no_network: None, mirror: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _cli(), ["data", "get", "multi30k", "-o", str(out), "--mirror", str(mirror)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == MULTI30K_FILES
    assert result.stdout == ""  # progress and summary go to stderr
    assert "12 files of multi30k" in result.stderr


def test_cli_mirror_defaults_to_the_environment_variable(
    tmp_path: Path, no_network: None, mirror: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _cli(), ["data", "get", "multi30k", "-o", str(out)], env={data_cli.MIRROR_ENV: str(mirror)}
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == MULTI30K_FILES


def test_cli_unknown_dataset_exits_1_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _cli(),
        ["data", "get", "nope", "-o", str(tmp_path / "out")],
        env={data_cli.MIRROR_ENV: None},
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: unknown dataset 'nope'")
    assert "multi30k" in lines[0]


def test_cli_corrupt_mirror_exits_1_and_leaves_no_file(tmp_path: Path, mirror_copy: Path) -> None:
    (mirror_copy / "val.de.gz").write_bytes(b"not the real file")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _cli(), ["data", "get", "multi30k", "-o", str(out), "--mirror", str(mirror_copy)]
    )
    assert result.exit_code == 1
    assert "error: val.de.gz: sha256 mismatch" in result.stderr
    assert not (out / "val.de.gz").exists()
    assert _leftovers(out) == []


def test_cli_list_shows_the_catalog() -> None:
    result = CliRunner().invoke(_cli(), ["data", "list"])
    assert result.exit_code == 0, result.output
    assert "multi30k" in result.stdout
    assert "de en fr cs" in result.stdout
