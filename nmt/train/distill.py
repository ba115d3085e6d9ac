"""``nmt distill``: sequence-level knowledge distillation in one call (Kim & Rush 2016,
"Sequence-Level Knowledge Distillation").

1. The teacher (one model or an ensemble) translates the training sources with beam search
   into ``OUT/distilled`` (:mod:`nmt.train.teacher`: chunk by chunk, resumable).
2. The distilled corpus ``OUT/distilled/train.SRC`` / ``train.TGT`` is assembled from the
   chunks: empty outputs are always dropped, and optionally the worst share of the pairs by
   the teacher's length-normalised score (:func:`assemble`).
3. The student is trained on it by :func:`nmt.train.run.train` (what ``nmt train`` runs),
   validating on the original validation set, into ``OUT``: resume, time budget and step
   checkpoints for averaging work as in ``nmt train``; running the same call again after a
   stop continues whichever step it stopped in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nmt.config import ModelConfig, TrainConfig
from nmt.config_file import check_fits
from nmt.data import store
from nmt.data.marian_vocab import SOURCE_SPM, TARGET_SPM, VOCAB_FILE
from nmt.data.vocab import vocab_layout
from nmt.errors import ConfigError
from nmt.fileio import FORMAT_VERSION, atomic_write, write_json
from nmt.train.run import read_valid
from nmt.train.run import train as train_model
from nmt.train.run_folder import check_run_folder
from nmt.train.teacher import (
    MANIFEST,
    DistillObserver,
    TeacherSettings,
    check_same_translation,
    read_chunks,
    read_manifest,
    teacher_manifest,
    translate_corpus,
    translation_identity,
)
from nmt.train.trainer import Trainer

DISTILLED = "distilled"  # the distilled folder inside the student's run folder
ASSEMBLED = "assembled.json"  # how train.SRC/train.TGT were assembled, and what was dropped
CORPUS = "train"  # the distilled corpus prefix inside the distilled folder


@dataclass(frozen=True)
class AssembleSummary:
    """What assembling the distilled corpus kept and dropped (sentence pairs).

    Attributes:
        lines: source lines the teacher translated.
        kept: pairs written to the distilled corpus.
        dropped_empty: pairs whose translation is empty (an empty source, or a search that
            found no output ending in EOS).
        dropped_worst: pairs dropped by ``drop_worst_percent`` (of the non-empty ones).
        worst_kept_score: the lowest length-normalised teacher score kept (``None`` when no
            pair was dropped by score).
    """

    lines: int
    kept: int
    dropped_empty: int
    dropped_worst: int
    worst_kept_score: float | None = None


def check_drop_percent(percent: float) -> None:
    """Raises :class:`ConfigError` unless ``0 <= percent < 100``."""
    if not 0.0 <= percent < 100.0:  # NaN fails too
        raise ConfigError(
            f"--drop-worst-percent {percent} must be at least 0 and below 100 (a percentage of "
            "the pairs)"
        )


def dropped_by_score(scores: list[float | None], percent: float) -> set[int]:
    """The indices of the ``floor(percent / 100 × n)`` non-empty pairs with the lowest
    length-normalised teacher scores (ties broken by position), ``n`` the non-empty pairs
    (``None`` scores: empty outputs, dropped anyway)."""
    scored = sorted((s, i) for i, s in enumerate(scores) if s is not None)
    return {i for _, i in scored[: math.floor(len(scored) * percent / 100)]}


def assemble(
    source: Path, folder: Path, src_lang: str, tgt_lang: str, drop_worst_percent: float = 0.0
) -> AssembleSummary:
    """Write the distilled corpus ``folder/train.SRC`` and ``folder/train.TGT`` from the
    complete translations in the distilled folder ``source`` (``folder`` itself, or one
    given with ``--distilled``), and record how in ``folder/assembled.json``.

    Raises:
        ConfigError: ``source`` is incomplete or of other languages, a bad percentage, or no
            pair left.
        InputError: an unreadable chunk file.
    """
    check_drop_percent(drop_worst_percent)
    manifest = read_manifest(source)
    if (manifest["src_lang"], manifest["tgt_lang"]) != (src_lang, tgt_lang):
        raise ConfigError(
            f"{source} holds {manifest['src_lang']}→{manifest['tgt_lang']} translations, this "
            f"command asks for {src_lang}→{tgt_lang}; fix --src-lang/--tgt-lang"
        )
    scores = [r["score"] if r["tgt"] else None for r in read_chunks(source)]
    worst = dropped_by_score(scores, drop_worst_percent)
    empty = sum(s is None for s in scores)
    kept_scores = [s for i, s in enumerate(scores) if s is not None and i not in worst]
    if not kept_scores:
        raise ConfigError(f"{source}: no pair left (all {len(scores):,} outputs empty or dropped)")
    summary = AssembleSummary(
        len(scores), len(kept_scores), empty, len(worst), min(kept_scores) if worst else None
    )

    def side(key: str) -> Iterator[bytes]:
        for i, record in enumerate(read_chunks(source)):
            if scores[i] is not None and i not in worst:
                yield (record[key] + "\n").encode("utf-8")

    folder.mkdir(parents=True, exist_ok=True)
    for key, lang in (("src", src_lang), ("tgt", tgt_lang)):
        atomic_write(folder / f"{CORPUS}.{lang}", lambda f, k=key: f.writelines(side(k)))
    write_json(folder / ASSEMBLED, assembly_record(manifest, drop_worst_percent, summary))
    return summary


def assembly_record(
    manifest: dict[str, Any], percent: float, summary: AssembleSummary | None = None
) -> dict[str, Any]:
    """``assembled.json``: the translation it comes from, the drop setting and the counts."""
    record = {"format_version": FORMAT_VERSION, "translation": translation_identity(manifest),
              "drop_worst_percent": percent}  # fmt: skip
    return {**record, "summary": asdict(summary)} if summary else record


def reusable_assembly(
    source: Path, folder: Path, langs: tuple[str, str], percent: float, out_dir: Path,
    overwrite: bool,
) -> AssembleSummary | None:  # fmt: skip
    """The summary of the distilled corpus already in ``folder`` when it was assembled from
    the same translations with the same ``percent``, else ``None`` (assemble it again).

    Raises:
        ConfigError: it was assembled otherwise and the student's run already prepared it
            into ``OUT/data`` (without ``overwrite``): training would go on with the old pairs.
    """
    path = folder / ASSEMBLED
    if not path.is_file() or not all((folder / f"{CORPUS}.{lang}").is_file() for lang in langs):
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    wanted = assembly_record(read_manifest(source), percent)
    if {k: saved.get(k) for k in wanted} == wanted:
        return AssembleSummary(**saved["summary"])
    if not overwrite and (out_dir / "data" / store.META_FILE).is_file():
        raise ConfigError(
            f"{out_dir / 'data'} holds the student's corpus prepared from a distilled corpus "
            f"assembled otherwise (drop_worst_percent={saved.get('drop_worst_percent')}, or "
            "other translations): pass the same options as before to continue the run, or "
            "--overwrite to start the student again on the new pairs"
        )
    return None


def student_vocab(
    teacher: Path | None, spm_path: Path | None, own_vocab: bool, init_from: Path | None
) -> Path | None:
    """The SentencePiece model(s) the student trains with: ``spm_path`` if given, none
    (trained on the distilled corpus) with ``own_vocab`` (a vocabulary size was given),
    ``init_from``'s (``None`` here: training takes them), else the teacher's folder, its
    layout (joint or separate) included.

    Raises:
        ConfigError: the teacher is an imported Marian/OPUS-MT model, whose vocabulary and
            ids training cannot use, and neither ``--spm`` nor a size was given.
    """
    if spm_path is not None or own_vocab or init_from is not None:
        return spm_path
    if teacher is None:
        raise ConfigError(
            "the student takes the teacher's vocabulary by default: give the teacher with -m, "
            "or the student's own with --spm MODEL or --vocab-size N"
        )
    if vocab_layout(teacher) == "marian":
        raise ConfigError(
            f"-m {teacher} is an imported Marian/OPUS-MT model ({VOCAB_FILE} over {SOURCE_SPM} "
            f"and {TARGET_SPM}): training encodes with nmt's SentencePiece layouts and ids, not "
            "Marian's, so the student cannot reuse its vocabulary; give the student its own: "
            "--spm MODEL (a SentencePiece model or an nmt model folder) or --vocab-size N (one "
            "trained on the distilled corpus)"
        )
    return teacher


def distill(
    teacher: TeacherSettings | None,
    train_prefix: str | Path | None,
    valid_prefix: str | Path | None,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None = None,
    observer: DistillObserver | None = None,
    *,
    own_vocab: bool = False,
    drop_worst_percent: float = 0.0,
    distilled: str | Path | None = None,
    reset_data_position: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
) -> tuple[Trainer, str, AssembleSummary]:
    """Distil ``teacher`` into a student trained in ``out_dir`` (see the module docstring).

    Args:
        teacher: the teacher and its search; ``None`` with ``distilled``.
        train_prefix: the corpus whose sources the teacher translates (its targets are not
            read); may be ``None`` with ``distilled``.
        valid_prefix: the original validation set (references, not the teacher's).
        spm_path / own_vocab / init_from: the student's vocabulary (:func:`student_vocab`).
        drop_worst_percent: drop this share of the non-empty pairs with the lowest
            length-normalised teacher scores.
        distilled: a complete distilled folder of an earlier run (``OUT/distilled``), used
            instead of translating; a teacher given too must be the one it was made with.
        reset_data_position / overwrite: as :func:`nmt.train.run.train` (``overwrite``
            restarts the student; the teacher's translations stay).

    Returns:
        The student's trainer, why its training stopped, and the distilled corpus' summary.

    Raises:
        ConfigError: bad or inconsistent settings (checked before the teacher translates),
            a resume with another teacher or search. Others as :func:`nmt.train.run.train`
            and :func:`nmt.train.teacher.translate_corpus`.
    """
    observer = observer or DistillObserver()
    out_dir = Path(out_dir)
    folder = out_dir / DISTILLED
    if train_cfg.pairs:
        raise ConfigError("nmt distill trains one language pair: drop --pairs")
    if teacher is None and distilled is None:
        raise ConfigError("give the teacher (-m) or its translations (--distilled DIR)")
    if distilled is None and train_prefix is None:
        raise ConfigError("give the corpus to translate with --train PREFIX")
    check_drop_percent(drop_worst_percent)
    check_fits(model_cfg, train_cfg)
    # Everything the student's training checks up front, before hours of translation.
    init = Path(init_from) if init_from is not None else None
    check_run_folder(out_dir, ("train", str(folder / CORPUS)), valid_prefix, init, overwrite)
    read_valid(valid_prefix, train_cfg)
    langs = (train_cfg.src_lang, train_cfg.tgt_lang)
    if distilled is not None:
        source = Path(distilled)
        if teacher is not None:  # the translations must be that teacher's
            saved = read_manifest(source)
            check_same_translation(source, saved, {**saved, **teacher_manifest(teacher)})
    else:
        assert teacher is not None and train_prefix is not None
        source = folder
        translate_corpus(teacher, train_prefix, *langs, folder, observer)
    first_teacher = Path(read_manifest(source)["teachers"][0]["path"])
    if teacher is not None:
        first_teacher = Path(teacher.models[0])
    vocab = student_vocab(first_teacher, Path(spm_path) if spm_path else None, own_vocab, init)
    summary = reusable_assembly(source, folder, langs, drop_worst_percent, out_dir, overwrite)
    if summary is None:
        summary = assemble(source, folder, *langs, drop_worst_percent)
    observer.on_message(
        f"distilled corpus {folder / CORPUS}.{{{','.join(langs)}}}: {summary.kept:,} of "
        f"{summary.lines:,} pairs kept; dropped {summary.dropped_empty:,} empty outputs and "
        f"{summary.dropped_worst:,} by score (the worst {drop_worst_percent:g}%)"
    )
    trainer, reason = train_model(
        folder / CORPUS, valid_prefix, out_dir, model_cfg, train_cfg, vocab, observer,
        reset_data_position=reset_data_position, overwrite=overwrite, init_from=init_from,
    )  # fmt: skip
    return trainer, reason, summary


__all__ = ["MANIFEST", "AssembleSummary", "DistillObserver", "TeacherSettings", "distill"]
