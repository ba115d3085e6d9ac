"""Fine-tuning: ``train(init_from=DIR)`` / ``nmt train --init-from DIR`` starts a new run
from a model folder's weights, shape and SentencePiece model, with a fresh optimizer and
schedule, and resumes like any other run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import Recorder
from typer.testing import CliRunner

from cli.main import app
from nmt.errors import ConfigError
from nmt.model.checkpoint import SPM_FILE, load_model, load_weights
from nmt.train.run import train


@pytest.fixture(scope="module")
def new_data(tmp_path_factory, multi30k, corpus_writer) -> tuple[Path, Path]:
    """Other Multi30k pairs than the tiny run's (lines 3000-3300) and 10 valid pairs."""
    folder = tmp_path_factory.mktemp("finetune-data")
    de, en = multi30k("train", "de", 3300)[3000:], multi30k("train", "en", 3300)[3000:]
    train_prefix = corpus_writer(folder / "train", de, en)
    valid = corpus_writer(folder / "valid", multi30k("val", "de", 10), multi30k("val", "en", 10))
    return train_prefix, valid


def test_fine_tuning_starts_from_the_weights_with_a_fresh_schedule(
    tmp_path: Path, tiny_run: Path, new_data, spm_model, tiny_model_config, tiny_train_config
) -> None:
    cfg = tiny_train_config(max_steps=4, warmup_steps=10, lr=1e-4)
    tuned, scratch = Recorder(), Recorder()
    train(*new_data, tmp_path / "ft", tiny_model_config(), cfg, observer=tuned, init_from=tiny_run)
    train(
        *new_data, tmp_path / "scratch", tiny_model_config(), cfg, spm_path=spm_model,
        observer=scratch,
    )  # fmt: skip
    assert [s.step for s in tuned.steps] == [1, 2, 3, 4]  # a new run, not the 200 of tiny_run
    assert tuned.steps[0].lr == pytest.approx(1e-4 / 10)  # its own warm-up from step 1
    # The first batch (the same in both runs) is already translated far better.
    assert tuned.steps[0].loss < scratch.steps[0].loss - 1.5
    assert any(f"starting from the weights of {tiny_run}" in m for m in tuned.messages)
    config = json.loads((tmp_path / "ft" / "config.json").read_text(encoding="utf-8"))
    assert config["init_from"] == str(tiny_run)
    assert (tmp_path / "ft" / SPM_FILE).read_bytes() == (tiny_run / SPM_FILE).read_bytes()


def test_a_fine_tuned_run_resumes_exactly(
    tmp_path: Path, tiny_run: Path, new_data, tiny_model_config, tiny_train_config
) -> None:
    """6 updates straight = 3, stop, the same call again to 6 (bit for bit): the resume wins
    over --init-from, which would otherwise start again from the initial weights."""
    model_cfg = tiny_model_config(dropout=0.1)

    def run(out: Path, steps: int) -> None:
        cfg = tiny_train_config(max_steps=steps, warmup_steps=5, eval_every=1000)
        train(*new_data, out, model_cfg, cfg, init_from=tiny_run)

    run(tmp_path / "straight", 6)
    run(tmp_path / "split", 3)
    run(tmp_path / "split", 6)
    a, b = (load_weights(tmp_path / r / "last.safetensors") for r in ("straight", "split"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_shape_or_spm_that_disagrees_with_the_initial_model_is_an_error(
    tmp_path: Path, tiny_run: Path, new_data, tiny_model_config, tiny_train_config, tmp_path_factory
) -> None:
    cfg = tiny_train_config(max_steps=2)
    with pytest.raises(ConfigError, match=r"has d_model=64 but this command gives d_model=128"):
        train(*new_data, tmp_path / "a", tiny_model_config(d_model=128), cfg, init_from=tiny_run)
    other_spm = tmp_path / "other.model"
    other_spm.write_bytes((tiny_run / SPM_FILE).read_bytes()[:-1] + b"x")
    with pytest.raises(ConfigError, match=r"--spm .*other\.model differs from .*drop --spm"):
        train(
            *new_data, tmp_path / "b", tiny_model_config(), cfg, spm_path=other_spm,
            init_from=tiny_run,
        )  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_init_from_takes_the_initial_models_shape(
    tmp_path: Path, tiny_run: Path, new_data
) -> None:
    """Without --preset, the model is the initial one (tiny), not the default preset (small);
    a --preset that disagrees is refused with one line."""
    train_prefix, valid = new_data
    common = ["train", "--train", str(train_prefix), "--valid", str(valid), "--device", "cpu",
              "--dtype", "fp32", "--init-from", str(tiny_run), "--max-steps", "2",
              "--dropout", "0.2"]  # fmt: skip
    done = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "ft")])
    assert done.exit_code == 0, done.output
    model, config = load_model(tmp_path / "ft")
    assert model.cfg.d_model == 64 and config["model"]["dropout"] == 0.2  # dropout may change
    refused = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "x"), "--preset", "small"])
    assert refused.exit_code == 1
    assert "has d_model=64 but this command gives d_model=256" in refused.stderr
