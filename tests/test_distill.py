"""``nmt distill`` (sequence-level knowledge distillation, :mod:`nmt.train.distill`): a tiny
teacher distilled into a tiny student that learns its outputs by heart; the translation step
resumed after a crash translates no chunk twice and gives the uninterrupted corpus; dropped
pairs are counted; a resume with another teacher or beam is refused; ``--distilled`` reuses
translations; ``--encoder-layers``/``--decoder-layers`` give the asked shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from nmt.config import DecodeConfig
from nmt.decode.engine import BaseTranslator
from nmt.decode.translate import Translator
from nmt.errors import ConfigError
from nmt.fileio import KILL_AT_ENV
from nmt.train.distill import ASSEMBLED, DISTILLED, assemble, distill, student_vocab
from nmt.train.teacher import (
    MANIFEST,
    TeacherSettings,
    chunk_path,
    read_chunks,
    translate_corpus,
)

REPO = Path(__file__).resolve().parents[1]
LINES = 64  # the distilled set: small enough for a tiny student to learn by heart
CHUNK = 16  # lines per chunk in these tests: 4 chunks


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, spm_text, corpus_writer) -> Path:
    """A corpus prefix of 64 short Multi30k pairs (at most 8 words a side)."""
    pairs = [(s, t) for s, t in zip(spm_text["de"], spm_text["en"]) if len(s.split()) <= 8][:LINES]
    return corpus_writer(
        tmp_path_factory.mktemp("distill-corpus") / "train",
        [s for s, _ in pairs],
        [t for _, t in pairs],
    )


def teacher_of(run: Path, beam: int = 3, *more: Path) -> TeacherSettings:
    return TeacherSettings((run, *more), beam_size=beam, device="cpu", chunk_lines=CHUNK)


@pytest.fixture(scope="module")
def translated(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path, sources: Path) -> Path:
    """A distilled folder: the teacher's (tiny_run's) beam-3 translations of ``sources``."""
    folder = tmp_path_factory.mktemp("translated") / DISTILLED
    assert translate_corpus(teacher_of(tiny_run), sources, "de", "en", folder) == 4
    return folder


def records(folder: Path) -> list[dict]:
    return list(read_chunks(folder))


def test_student_learns_the_teacher(
    tmp_path: Path, tiny_run: Path, sources: Path, tiny_corpus, tiny_model_config,
    tiny_train_config,
) -> None:  # fmt: skip
    out = tmp_path / "student"
    model_cfg = tiny_model_config(n_encoder_layers=2, n_decoder_layers=1, dropout=0.0)
    train_cfg = tiny_train_config(
        max_steps=150, batch_tokens=4000, label_smoothing=0.0, warmup_steps=30,
        eval_every=150, save_every=150,
    )  # fmt: skip
    trainer, reason, summary = distill(
        teacher_of(tiny_run), sources, tiny_corpus[1], out, model_cfg, train_cfg
    )
    assert trainer.state.step == 150
    assert summary.lines == LINES and summary.dropped_worst == 0
    assert summary.kept + summary.dropped_empty == LINES
    # The distilled targets are the teacher's own outputs (same engine, beam and batches).
    kept = [r for r in records(out / DISTILLED) if r["tgt"]]
    teacher = Translator.load(tiny_run, DecodeConfig(beam_size=3), device="cpu")
    expected = [t.text for t in teacher.translate_chunk([r["src"] for r in kept])]
    assert [r["tgt"] for r in kept] == expected
    corpus = (out / DISTILLED / "train.en").read_text(encoding="utf-8").splitlines()
    assert corpus == expected
    # The student took the teacher's vocabulary and learned its outputs by heart.
    assert (out / "spm.model").read_bytes() == (tiny_run / "spm.model").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_encoder_layers"] == 2 and config["model"]["n_decoder_layers"] == 1
    student = Translator.load(out, DecodeConfig(beam_size=1), device="cpu")
    outputs = [t.text for t in student.translate_chunk([r["src"] for r in kept])]
    same = sum(a == b for a, b in zip(outputs, expected))
    assert same >= 0.8 * len(kept), list(zip(outputs, expected))
    # The original references were not learned: validation read the original set.
    assert config["data"]["train"] == str(out / DISTILLED / "train")


KILLED_RUN = """
import sys
from pathlib import Path
from nmt.train.teacher import TeacherSettings, translate_corpus
run, prefix, folder = map(Path, sys.argv[1:4])
translate_corpus(TeacherSettings((run,), beam_size=3, device="cpu", chunk_lines=16), prefix,
                 "de", "en", folder)
"""


def test_resume_after_a_crash(
    tmp_path: Path, tiny_run: Path, sources: Path, translated: Path, monkeypatch
) -> None:
    folder = tmp_path / DISTILLED
    # Killed (SIGKILL) while writing the third chunk, after its fsync, before its rename.
    env = {**os.environ, KILL_AT_ENV: "chunk-000002.jsonl:before-rename", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tiny_run), str(sources), str(folder)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    assert chunk_path(folder, 1).is_file() and not chunk_path(folder, 2).exists()
    assert not json.loads((folder / MANIFEST).read_text())["complete"]
    first_lines: list[int] = []
    original = BaseTranslator.translate_chunk

    def counted(self, lines, first_line=1, *args, **kwargs):  # type: ignore[no-untyped-def]
        first_lines.append(first_line)
        return original(self, lines, first_line, *args, **kwargs)

    monkeypatch.setattr(BaseTranslator, "translate_chunk", counted)
    assert translate_corpus(teacher_of(tiny_run), sources, "de", "en", folder) == 2
    assert first_lines == [2 * CHUNK + 1, 3 * CHUNK + 1]  # chunks 3 and 4, once each
    assert translate_corpus(teacher_of(tiny_run), sources, "de", "en", folder) == 0
    assert first_lines == [2 * CHUNK + 1, 3 * CHUNK + 1]  # complete: nothing translated again
    resumed, whole = records(folder), records(translated)
    assert [(r["src"], r["tgt"]) for r in resumed] == [(r["src"], r["tgt"]) for r in whole]
    for a, b in zip(resumed, whole):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_resume_with_another_teacher_or_beam_is_refused(
    tiny_run: Path, sources: Path, translated: Path
) -> None:
    before = [p.stat().st_mtime_ns for p in sorted((translated / "chunks").iterdir())]
    with pytest.raises(ConfigError, match="beam_size = 3, this command gives 5"):
        translate_corpus(teacher_of(tiny_run, beam=5), sources, "de", "en", translated)
    with pytest.raises(ConfigError, match="teachers"):  # an ensemble is another teacher
        translate_corpus(teacher_of(tiny_run, 3, tiny_run), sources, "de", "en", translated)
    after = [p.stat().st_mtime_ns for p in sorted((translated / "chunks").iterdir())]
    assert before == after


def test_a_teacher_of_another_direction_is_refused_before_anything_is_written(
    tiny_run: Path, sources: Path, tmp_path: Path
) -> None:
    """The de→en teacher cannot make an en→de (or en→en) student's corpus: refused naming
    the flag, with no manifest left behind (a corrected command then starts clean)."""
    folder = tmp_path / DISTILLED
    with pytest.raises(ConfigError, match="--tgt-lang de: the model translates into en"):
        translate_corpus(teacher_of(tiny_run), sources, "en", "de", folder)
    with pytest.raises(ConfigError, match="--src-lang en: the teacher .* translates from de"):
        translate_corpus(teacher_of(tiny_run), sources, "en", "en", folder)
    assert not folder.exists()
    assert translate_corpus(teacher_of(tiny_run), sources, "de", "en", folder) == 4


def test_empty_outputs_and_the_worst_scores_are_dropped(
    tmp_path: Path, tiny_run: Path, sources: Path, corpus_writer
) -> None:
    src = (Path(f"{sources}.de")).read_text(encoding="utf-8").splitlines()[:20]
    src[3] = src[11] = ""  # an empty source gives an empty output
    prefix = corpus_writer(tmp_path / "train", src, src, langs=("de", "en"))
    folder = tmp_path / DISTILLED
    translate_corpus(teacher_of(tiny_run), prefix, "de", "en", folder)
    recs = records(folder)
    summary = assemble(folder, folder, "de", "en", drop_worst_percent=25)
    assert (summary.lines, summary.dropped_empty, summary.dropped_worst) == (20, 2, 4)
    assert summary.kept == 14
    scored = sorted((r["score"], i) for i, r in enumerate(recs) if r["tgt"])
    worst = {i for _, i in scored[:4]}
    kept = [r for i, r in enumerate(recs) if r["tgt"] and i not in worst]
    assert (folder / "train.de").read_text(encoding="utf-8").splitlines() == [
        r["src"] for r in kept
    ]
    assert (folder / "train.en").read_text(encoding="utf-8").splitlines() == [
        r["tgt"] for r in kept
    ]
    assert summary.worst_kept_score == min(r["score"] for r in kept)
    assert json.loads((folder / ASSEMBLED).read_text())["summary"]["dropped_worst"] == 4
    with pytest.raises(ConfigError, match="below 100"):
        assemble(folder, folder, "de", "en", drop_worst_percent=100)


def test_a_marian_teacher_needs_the_students_own_vocabulary(tmp_path: Path) -> None:
    marian = tmp_path / "opus-mt"
    marian.mkdir()
    (marian / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="--spm MODEL .* or --vocab-size N"):
        student_vocab(marian, None, False, None)
    assert student_vocab(marian, None, True, None) is None  # its own, trained
    assert student_vocab(marian, tmp_path / "spm.model", False, None) == tmp_path / "spm.model"


runner = CliRunner()


def test_cli_reuses_translations_with_the_asked_shape(
    tmp_path: Path, translated: Path, tiny_corpus, monkeypatch
) -> None:
    def no_teacher(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("--distilled loaded a teacher")

    monkeypatch.setattr("nmt.train.teacher.load_translator", no_teacher)
    out = tmp_path / "student"
    args = [
        "distill", "--distilled", translated, "--valid", tiny_corpus[1], "-o", out,
        "--preset", "tiny", "--encoder-layers", "3", "--decoder-layers", "1",
        "--drop-worst-percent", "10", "--max-steps", "2", "--device", "cpu",
        "--batch-tokens", "500",
    ]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["n_encoder_layers"], model["n_decoder_layers"], model["d_model"]) == (3, 1, 64)
    assert "dropped 0 empty outputs and 6 by score" in " ".join(result.stderr.split())
    assert len((out / DISTILLED / "train.en").read_text().splitlines()) == LINES - 6
    # The same command again resumes the student (nothing left to do) on the same pairs...
    again = runner.invoke(app, [str(a) for a in args])
    assert again.exit_code == 0, again.output
    # ...and another drop setting is refused while the run holds the old pairs.
    args[args.index("10")] = "20"
    other = runner.invoke(app, [str(a) for a in args])
    assert other.exit_code == 1 and "--overwrite" in other.stderr


def test_cli_errors_name_the_flags_typed(tmp_path: Path) -> None:
    """nmt distill's options come from a built signature; its errors still name the flag
    (they said ``dropout=1.5``)."""
    args = ["distill", "--distilled", str(tmp_path), "-o", str(tmp_path / "s"), "--dropout", "1.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "--dropout 1.5 must be in [0, 1)" in " ".join(result.stderr.split())


def test_train_takes_the_layer_counts(tmp_path: Path, tiny_corpus, spm_model: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train", "--train", tiny_corpus[0], "--valid", tiny_corpus[1], "-o", out,
        "--spm", spm_model, "--preset", "tiny", "--encoder-layers", "4", "--decoder-layers",
        "1", "--max-steps", "1", "--device", "cpu", "--batch-tokens", "500",
    ]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["n_encoder_layers"], model["n_decoder_layers"]) == (4, 1)
    weights = Translator.load(out, device="cpu").model
    assert len(weights.encoder_layers) == 4 and len(weights.decoder_layers) == 1
