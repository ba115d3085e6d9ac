"""nmt.train.resume: what a stop writes and in which order, a process killed in the middle of
writing a checkpoint, and exact resume under bf16 autocast."""

from __future__ import annotations

from pathlib import Path

from test_schedule import StopAt

from nmt.model import checkpoint as ckpt
from nmt.model.checkpoint import load_resume
from nmt.train.run import train


def test_sigterm_writes_resume_pt_before_last_safetensors(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config, monkeypatch
) -> None:
    """resume.pt is what a resume needs (it holds the weights too): a stop on SIGTERM writes it
    first, so that a SIGKILL that follows (torchrun's, 30 s later) cannot take it while
    last.safetensors, a copy of the weights, is being written."""
    written: list[str] = []
    real = ckpt.atomic_write

    def recorded(path, write):  # type: ignore[no-untyped-def]
        written.append(Path(path).name)
        real(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", recorded)
    cfg = tiny_train_config(max_steps=1000, eval_every=1000, save_every=1000)
    observer = StopAt(3)
    _, reason = train(*tiny_corpus, tmp_path / "run", tiny_model_config(), cfg,
                      spm_path=spm_model, observer=observer)  # fmt: skip
    assert reason == "interrupted by signal SIGTERM"
    assert written == [ckpt.RESUME_FILE, "last.safetensors"]
    assert load_resume(tmp_path / "run" / ckpt.RESUME_FILE)["state"]["step"] == 3
