"""Checkpoint averaging: the mean of the last N step checkpoints, as a translatable folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from nmt.errors import CheckpointError
from nmt.model.checkpoint import SPM_FILE, load_model, load_weights, read_config
from nmt.train.average import average_run, average_weights, step_checkpoints


def test_average_is_the_elementwise_mean_and_translates(tiny_run: Path, tmp_path: Path) -> None:
    paths = step_checkpoints(tiny_run)
    assert [p.name for p in paths] == ["step-00000100.safetensors", "step-00000200.safetensors"]
    out = tmp_path / "averaged"
    assert average_run(tiny_run, 2, out) == paths
    averaged, a, b = (load_weights(p) for p in (out / "model.safetensors", *paths))
    assert averaged.keys() == a.keys()
    for name in a:
        torch.testing.assert_close(averaged[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-7)
    assert not torch.equal(a["embed.weight"], b["embed.weight"])  # a real average of two
    assert read_config(out)["averaged_from"] == [p.name for p in paths]
    # A model folder of its own: the run's model and tokenizer, with the averaged weights.
    model, config = load_model(out)
    assert config["model"] == read_config(tiny_run)["model"]
    assert (out / SPM_FILE).read_bytes() == (tiny_run / SPM_FILE).read_bytes()
    state = model.state_dict()
    assert all(torch.equal(state[name], averaged[name]) for name in averaged)


def test_average_of_one_checkpoint_is_that_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    average_run(tiny_run, 1, tmp_path / "one")
    last = load_weights(step_checkpoints(tiny_run)[-1])
    averaged = load_weights(tmp_path / "one" / "model.safetensors")
    assert all(torch.equal(averaged[k], last[k]) for k in last)


def test_average_refuses_more_checkpoints_than_kept(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"2 step checkpoint\(s\), cannot average the last 3"):
        average_run(tiny_run, 3, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="must differ"):
        average_run(tiny_run, 1, tiny_run)
    assert len(average_run(tiny_run, 3, tmp_path / "fewer", allow_fewer=True)) == 2


def test_average_replaces_a_model_only_when_told(tiny_run: Path, tmp_path: Path) -> None:
    """An existing model folder is refused without --overwrite (it was silently replaced);
    with it, the tokenizer files come as a set: another layout's, left from the folder's old
    model, are removed (a stale joint spm.model once won over the new separate ones)."""
    out = tmp_path / "averaged"
    average_run(tiny_run, 2, out)
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds config.json and model.safetensors"):
        average_run(tiny_run, 1, out)
    assert (out / "model.safetensors").read_bytes() == weights
    (out / "spm.src.model").write_bytes(b"stale")  # another layout's file
    average_run(tiny_run, 1, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != weights
    assert not (out / "spm.src.model").exists() and (out / SPM_FILE).is_file()


def test_cli_average(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(
        app, ["average", "-m", str(tiny_run), "--last", "2", "-o", str(tmp_path / "a")]
    )
    assert done.exit_code == 0, done.stderr
    assert "averaged 2 checkpoints" in done.stderr and done.stdout == ""
    cli_weights = load_weights(tmp_path / "a" / "model.safetensors")
    expected = average_weights(step_checkpoints(tiny_run)[-2:])
    assert cli_weights.keys() == expected.keys()
    assert all(torch.equal(cli_weights[k], expected[k]) for k in expected)
    bad = runner.invoke(app, ["average", "-m", str(tmp_path / "nope"), "-o", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
