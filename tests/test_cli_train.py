"""``nmt train`` through Typer's CliRunner: bad input or config exits 1 with a one-line error
before anything is written; the options reach the library; a tiny run gives a model folder
that ``nmt translate -m`` accepts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import cli.train
from cli.main import app
from nmt.config import ModelConfig, TrainConfig, preset
from nmt.model.checkpoint import load_resume

runner = CliRunner()  # result.stdout and result.stderr are kept apart


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["train", *map(str, args)])


def assert_one_line_error(result, *parts: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # handled: no traceback
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for part in parts:
        assert part in errors[0], errors[0]


@pytest.fixture
def corpus(tmp_path: Path, corpus_writer, multi30k) -> tuple[Path, Path]:
    """``(train_prefix, valid_prefix)`` of 60 and 10 Multi30k pairs."""
    train = corpus_writer(
        tmp_path / "data" / "train", multi30k("train", "de", 60), multi30k("train", "en", 60)
    )
    valid = corpus_writer(
        tmp_path / "data" / "valid", multi30k("val", "de", 10), multi30k("val", "en", 10)
    )
    return train, valid


def train_args(train: Path, valid: Path, out: Path, *more: str | Path) -> list[str | Path]:
    return ["--train", train, "--valid", valid, "-o", out, "--device", "cpu", *more]


def test_missing_corpus_file(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    out = tmp_path / "run"
    result = invoke(*train_args(tmp_path / "nope", corpus[1], out))
    assert_one_line_error(result, str(tmp_path / "nope.de"), "not found")
    assert not out.exists()
    result = invoke(*train_args(corpus[0], corpus[1], out, "--tgt-lang", "fr"))
    assert_one_line_error(result, str(corpus[0]) + ".fr", "not found")
    assert not out.exists()


def test_mismatched_line_counts(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    train = corpus[0]
    lines = Path(f"{train}.en").read_text(encoding="utf-8").splitlines()
    Path(f"{train}.en").write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    out.mkdir()  # an existing, empty run folder stays empty
    result = invoke(*train_args(train, corpus[1], out))
    assert_one_line_error(result, f"{train}.de has 60 lines but {train}.en has 58")
    assert list(out.iterdir()) == []


def test_non_utf8_corpus_line(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    valid = corpus[1]
    path = Path(f"{valid}.de")
    data = path.read_bytes().split(b"\n")
    data[6] = b"Ein Hund \xe4 bellt."  # Latin-1, not UTF-8
    path.write_bytes(b"\n".join(data))
    out = tmp_path / "run"
    result = invoke(*train_args(corpus[0], valid, out))
    assert_one_line_error(result, f"{path}:7:", "UTF-8")
    assert not out.exists()


def test_empty_corpus(tmp_path: Path, corpus: tuple[Path, Path], corpus_writer) -> None:
    empty = corpus_writer(tmp_path / "empty", [], [])
    out = tmp_path / "run"
    result = invoke(*train_args(empty, corpus[1], out))
    assert_one_line_error(result, "corpus is empty", str(empty) + ".de")
    assert not out.exists()


def test_unknown_preset(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    out = tmp_path / "run"
    result = invoke(*train_args(*corpus, out, "--preset", "huge"))
    assert_one_line_error(result, "'huge'", "tiny, small, base, big")
    assert not out.exists()


def test_unknown_config_key(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"\n[train]\nlearning_rate = 0.001\n', encoding="utf-8")
    out = tmp_path / "run"
    result = invoke(*train_args(*corpus, out, "--config", config))
    assert_one_line_error(result, str(config), "learning_rate", "valid keys:", "lr", "warmup_steps")
    assert not out.exists()


def test_invalid_value(tmp_path: Path, corpus: tuple[Path, Path]) -> None:
    out = tmp_path / "run"
    result = invoke(*train_args(*corpus, out, "--dropout", "1.5"))
    assert_one_line_error(result, "--dropout 1.5")
    result = invoke(*train_args(*corpus, out, "--dtype", "fp8"))
    assert_one_line_error(result, "--dtype 'fp8'", "auto, fp32, bf16, fp16")
    assert not out.exists()


def test_options_reach_the_library(tmp_path: Path, corpus: tuple[Path, Path], monkeypatch) -> None:
    calls = []

    def fake_train(*args, data_dir, **flags):  # type: ignore[no-untyped-def]
        calls.append((*args, data_dir))
        return SimpleNamespace(dist=SimpleNamespace(is_main=False)), "done"

    monkeypatch.setattr(cli.train, "run_training", fake_train)
    config = tmp_path / "run.toml"
    config.write_text("[model]\nffn_dim = 128\n[train]\nlr = 0.001\nseed = 3\n", encoding="utf-8")
    out = tmp_path / "run"
    result = invoke(
        "--train",
        corpus[0],
        "--valid",
        corpus[1],
        "-o",
        out,
        "--preset",
        "tiny",
        "--config",
        config,
        "--lr",
        "0.004",
        "--vocab-size",
        "500",
        "--max-steps",
        "7",
        "--src-lang",
        "en",
        "--tgt-lang",
        "de",
        "--dtype",
        "fp32",
        "--spm",
        tmp_path / "x.model",
        "--compile",
    )
    assert result.exit_code == 0, result.output
    [(train, valid, folder, model_cfg, train_cfg, spm, observer, data_dir)] = calls
    assert (train, valid, folder, data_dir) == (str(corpus[0]), str(corpus[1]), out, None)
    assert spm == tmp_path / "x.model"
    assert model_cfg == ModelConfig(**{**preset("tiny"), "ffn_dim": 128, "vocab_size": 500})
    assert train_cfg == TrainConfig(
        lr=0.004, seed=3, max_steps=7, src_lang="en", tgt_lang="de", dtype="fp32", compile=True
    )
    assert isinstance(observer, cli.train.RichObserver)


def test_tiny_training_gives_a_model_folder_translate_accepts(
    tmp_path: Path, corpus: tuple[Path, Path], spm_model: Path, multi30k
) -> None:
    out = tmp_path / "run"
    result = invoke(*train_args(
        *corpus, out, "--preset", "tiny", "--spm", spm_model, "--max-steps", "6",
        "--eval-every", "3", "--save-every", "3", "--batch-tokens", "600", "--dtype", "fp32",
    ))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # progress and the summary go to stderr
    assert "training finished: reached max_steps=6" in result.stderr
    for name in ("config.json", "spm.model", "model.safetensors", "last.safetensors", "resume.pt"):
        assert (out / name).is_file(), name

    src = tmp_path / "in.de"
    lines = multi30k("test_2016_flickr", "de", 4)
    src.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["translate", str(src), "-m", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 5 and result.stdout.splitlines()[1] == ""


def test_sigterm_saves_a_resume_checkpoint_and_the_run_continues(
    tiny_corpus: tuple[Path, Path], spm_model: Path, tmp_path: Path
) -> None:
    """SIGTERM finishes the step, writes resume.pt, exits 130; the same command continues."""
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "cli",
        "train",
        "--train",
        str(tiny_corpus[0]),
        "--valid",
        str(tiny_corpus[1]),
        "--output",
        str(out),
        "--preset",
        "tiny",
        "--spm",
        str(spm_model),
        "--eval-every",
        "100000",
        "--save-every",
        "100000",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--max-steps",
        "100000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    # stderr to a file: a pipe that nobody reads while waiting could fill up and stall the run.
    with (tmp_path / "stderr.txt").open("w+b") as log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 600  # a bound for a hung run, not a speed requirement
        while (logged := train_steps(out)) == [] and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("no step-50 record after 600 s")
            time.sleep(0.2)
        assert logged[:1] == [50], tail(log)  # the first record (log_every=50): 50 updates done
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
        assert proc.returncode == 130, tail(log)
        assert "resume" in tail(log)
    step = load_resume(out / "resume.pt")["state"]["step"]
    assert step >= 50  # SIGTERM came after step 50 was logged
    # No step checkpoint off the schedule: `nmt average` of the resumed run would take it.
    assert not (out / "checkpoints" / f"step-{step:08d}.safetensors").exists()
    args[args.index("--max-steps") + 1] = str(step + 5)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert load_resume(out / "resume.pt")["state"]["step"] == step + 5


def train_steps(run: Path) -> list[int]:
    """The steps of the training records ``run/metrics.jsonl`` holds so far (complete lines)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the last one may be partial
    return [r["step"] for r in map(json.loads, lines) if r["type"] == "train"]


def tail(log) -> str:  # type: ignore[no-untyped-def]
    """The last 2000 characters written to the open file ``log``."""
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


def test_bad_line_in_the_training_corpus_leaves_no_run_folder(
    tmp_path: Path, corpus: tuple[Path, Path], spm_model: Path
) -> None:
    """The training corpus is streamed while it is prepared; a bad line found there is
    reported by file and line, and the half-made run folder is removed."""
    path = Path(f"{corpus[0]}.en")
    data = path.read_bytes().split(b"\n")
    data[41] = b"A dog \xe4 barks."
    path.write_bytes(b"\n".join(data))
    out = tmp_path / "run"
    result = invoke(*train_args(*corpus, out, "--spm", spm_model, "--preset", "tiny"))
    assert_one_line_error(result, f"{path}:42:", "UTF-8")
    assert not out.exists()


def test_train_from_a_prepared_folder(
    tmp_path: Path, corpus: tuple[Path, Path], spm_model: Path
) -> None:
    """`nmt prepare` then `nmt train --data`: languages and validation set come from the
    folder, the run records where its data came from."""
    data = tmp_path / "prepared"
    result = runner.invoke(app, ["prepare", "--train", str(corpus[0]), "--valid", str(corpus[1]),
                                 "--src-lang", "de", "--tgt-lang", "en", "-o", str(data),
                                 "--spm", str(spm_model)])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    result = invoke("--data", data, "-o", out, "--preset", "tiny", "--max-steps", "3",
                    "--eval-every", "3", "--device", "cpu", "--dtype", "fp32")  # fmt: skip
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert f"60 training pairs from {data}, 10 validation pairs" in stderr
    assert (out / "spm.model").read_bytes() == spm_model.read_bytes()
    assert not (out / "data").exists()  # trained from the given folder, not a copy


def test_sigterm_while_preparing_leaves_no_half_written_folder(
    multi30k, spm_model: Path, tmp_path: Path
) -> None:
    """SIGTERM during ``nmt prepare`` (a scheduler stopping the job) is handled as Ctrl+C:
    the half-written data folder is removed and the exit status is 130; it used to die with
    143 and leave megabytes of partial ids behind. The signal is sent once the temporary
    folder exists, so the test waits for what it asserts about."""
    from conftest import write_corpus

    de, en = multi30k("train", "de", 29_000), multi30k("train", "en", 29_000)
    prefix = write_corpus(tmp_path / "big", de * 4, en * 4)  # ~10 s of encoding
    out = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "prepare", "--train", str(prefix), "-o", str(out),
         "--spm", str(spm_model), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=Path(cli.train.__file__).resolve().parents[1],
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("**/.prepare-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the temporary folder never appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]  # 0: it finished before the signal arrived
    assert not out.exists() and not list(tmp_path.glob("**/.prepare-*"))


def test_a_vocabulary_size_that_the_model_cannot_take_is_an_error(
    tiny_run: Path, tiny_corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    """With --init-from (or --data) the folder's vocabulary is the model's: a --vocab-size
    that disagrees was silently ignored; now it is refused before anything is written."""
    result = invoke(
        "--train", tiny_corpus[0], "--valid", tiny_corpus[1], "-o", tmp_path / "ft",
        "--init-from", tiny_run, "--vocab-size", "300", "--max-steps", "1",
    )  # fmt: skip
    assert_one_line_error(result, "--vocab-size 300, but the --init-from folder", "1000-piece")
    assert not (tmp_path / "ft").exists()


def test_languages_with_pairs_are_a_usage_error(tiny_corpus: tuple[Path, Path], tmp_path: Path):
    """--pairs names each pair's languages; --src-lang/--tgt-lang beside it were ignored yet
    written into config.json."""
    result = invoke(
        "--train", tiny_corpus[0], "--valid", tiny_corpus[1], "-o", tmp_path / "ml",
        "--pairs", "de-en", "--src-lang", "cs",
    )  # fmt: skip
    assert result.exit_code == 2 and "each pair names its languages" in result.output
    assert "--src-lang/--tgt-lang" in result.output
    assert not (tmp_path / "ml").exists()


def test_clip_norm_label_smoothing_and_max_len_flags_win_over_the_config_file(
    tmp_path: Path, corpus: tuple[Path, Path], monkeypatch
) -> None:
    """--clip-norm, --label-smoothing and --max-len reach the resolved TrainConfig: a flag
    over the TOML file's value, the file's value over the default, the default otherwise."""
    calls = []

    def fake_train(train, valid, out, model_cfg, train_cfg, *args, **flags):  # type: ignore[no-untyped-def]
        calls.append(train_cfg)
        return SimpleNamespace(dist=SimpleNamespace(is_main=False)), "done"

    monkeypatch.setattr(cli.train, "run_training", fake_train)
    config = tmp_path / "run.toml"
    config.write_text(
        "[train]\nclip_norm = 5.0\nlabel_smoothing = 0.2\nmax_len = 100\n", encoding="utf-8"
    )
    base = train_args(*corpus, tmp_path / "run", "--preset", "tiny")
    flags = ("--clip-norm", "0.5", "--label-smoothing", "0.05", "--max-len", "64")
    for args in ([*base, *flags], [*base, "--config", config, *flags]):
        assert invoke(*args).exit_code == 0
    assert invoke(*base, "--config", config, "--max-len", "80").exit_code == 0
    assert invoke(*base).exit_code == 0
    given = [(c.clip_norm, c.label_smoothing, c.max_len) for c in calls]
    assert given == [(0.5, 0.05, 64), (0.5, 0.05, 64), (5.0, 0.2, 80), (1.0, 0.1, 200)]
    result = invoke(*base, "--label-smoothing", "1.5")
    assert_one_line_error(result, "--label-smoothing 1.5")


def test_the_status_line_shows_the_new_validations_bleu() -> None:
    """The validation of step N follows step N's status update: the line kept showing the
    previous validation's BLEU under the new one's printed result."""
    from nmt.train.run import RunStart, StepStats, ValidResult

    observer = cli.train.RichObserver()
    observer.on_start(RunStart(0, 0.0, 10, 0, 0.0, 5))
    try:
        for step, bleu in ((5, 1.5), (10, 7.25)):
            observer.on_step(StepStats(step, 1, 3.0, 2.9, 1e-3, 1.0, 100.0, 1.0, 0))
            observer.on_validate(ValidResult(step, 3.0, 18.2, bleu, 20.0, "sig", True, 0.1))
            info = observer.progress.tasks[0].fields["info"]
            assert info.startswith(f"step {step} ") and f"BLEU {bleu:.2f} (best {bleu:.2f})" in info
    finally:
        observer.stop()


def test_patience_metric_reaches_the_config(monkeypatch, corpus: tuple[Path, Path], tmp_path: Path):
    calls = []
    not_main = SimpleNamespace(dist=SimpleNamespace(is_main=False))
    monkeypatch.setattr(
        cli.train, "run_training", lambda *args, **kw: calls.append(args[4]) or (not_main, "")
    )
    result = invoke(*train_args(*corpus, tmp_path / "run", "--patience-metric", "loss"))
    assert result.exit_code == 0, result.output
    assert calls[0].patience_metric == "loss"
    result = invoke(*train_args(*corpus, tmp_path / "run", "--patience-metric", "ter"))
    assert_one_line_error(result, "--patience-metric 'ter'", "bleu, chrf, loss")


def test_a_resumed_run_keeps_its_recorded_settings(
    tmp_path: Path, corpus: tuple[Path, Path], spm_model: Path, monkeypatch
) -> None:
    """Trained with --lr-schedule linear --max-steps 100 --warmup-steps 20, stopped with
    Ctrl-C, run again without --lr-schedule: it went on with inverse_sqrt (lr 4.47e-4 at step
    100 instead of 0) and rewrote config.json, without a word. The recorded value is kept; a
    flag that gives another one is an error naming both."""
    out = tmp_path / "run"
    same = train_args(
        *corpus, out, "--preset", "tiny", "--spm", spm_model, "--max-steps", "100",
        "--warmup-steps", "20", "--lr", "1e-3", "--eval-every", "100", "--save-every", "100",
        "--batch-tokens", "300", "--dtype", "fp32",
    )  # fmt: skip
    on_step = cli.train.RichObserver.on_step

    def ctrl_c_at_step_10(self, stats) -> None:  # type: ignore[no-untyped-def]
        on_step(self, stats)
        if stats.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(cli.train.RichObserver, "on_step", ctrl_c_at_step_10)
        result = invoke(*same, "--lr-schedule", "linear")
    assert result.exit_code == 130, result.output
    result = invoke(*same, "--lr-schedule", "inverse_sqrt")
    assert_one_line_error(result, "--lr-schedule 'linear', this command gives 'inverse_sqrt'")
    result = invoke(*same)  # without --lr-schedule
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["train"]["lr_schedule"] == "linear"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").open(encoding="utf-8")]
    assert [r["lr"] for r in logged if r["type"] == "train" and r["step"] == 100] == [0.0]
