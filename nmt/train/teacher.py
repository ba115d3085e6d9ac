"""The teacher's translations of a training corpus, the first step of sequence-level knowledge
distillation (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", §3.2: the student is
trained on the teacher's beam-search outputs instead of the references).

The sources are translated chunk by chunk into a distilled folder (``OUT/distilled``)::

    manifest.json           what is being translated and how (teachers, search, engine,
                            source digest), the chunk size, whether it is complete
    chunks/chunk-000000.jsonl
                            one JSON object per source line, in order: {"src", "tgt",
                            "score"} (score: the teacher's length-normalised log-probability,
                            null for an empty output)

Each chunk file is written atomically (:func:`nmt.fileio.atomic_write`) once all of its lines
are translated, so a stopped or crashed run continues from the first missing chunk and never
translates a chunk twice; the manifest makes a resume with other settings an error instead of
a corpus of two teachers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.config import DecodeConfig
from nmt.data.textio import corpus_path, iter_lines
from nmt.decode.ct2_folder import CT2_WEIGHTS, is_ctranslate2_dir
from nmt.decode.loading import ENGINES, load_translator
from nmt.errors import ConfigError, InputError
from nmt.fileio import FORMAT_VERSION, atomic_write, read_versioned_json, write_json
from nmt.model.checkpoint import WEIGHTS_FILE
from nmt.train.log import TrainObserver

MANIFEST = "manifest.json"
CHUNKS = "chunks"
CHUNK_LINES = 2000  # source lines per chunk file: what a resume may lose
PROGRESS_LINES = 500  # lines translated between two progress reports within a chunk


@dataclass(frozen=True)
class TeacherSettings:
    """How the teacher translates the training sources.

    Attributes:
        models: the teacher's model folder, or several for an ensemble (torch engine,
            :mod:`nmt.decode.ensemble`).
        beam_size: beam of the teacher's search (Kim & Rush 2016 use the beam's best output).
        length_penalty: alpha of the GNMT length penalty that ranks the beam and normalises
            the recorded scores (Wu et al. 2016).
        engine: ``auto``, ``torch`` or ``ctranslate2`` (:func:`nmt.decode.loading.load_translator`).
        device: where the teacher runs (``auto``, ``cpu``, ``cuda[:N]``).
        chunk_lines: source lines per chunk file.
    """

    models: tuple[Path, ...]
    beam_size: int = 5
    length_penalty: float = 1.0
    engine: str = "auto"
    device: str = "auto"
    chunk_lines: int = CHUNK_LINES

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError(
                "no teacher: give its model folder with -m (repeat it for an ensemble)"
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.chunk_lines < 1:
            raise ConfigError(f"--chunk-lines {self.chunk_lines} must be at least 1")
        DecodeConfig(beam_size=self.beam_size, length_penalty=self.length_penalty)  # checks

    @property
    def resolved_engine(self) -> str:
        """The engine that runs: ``auto`` is ctranslate2 for a folder written by ``nmt export``."""
        if self.engine != "auto":
            return self.engine
        return "ctranslate2" if is_ctranslate2_dir(self.models[0]) else "torch"


class DistillObserver(TrainObserver):
    """A :class:`TrainObserver` that also hears about the teacher's translation step."""

    def on_translate_start(self, total_lines: int, done_lines: int) -> None:
        """The translation step starts (``done_lines``: finished by an earlier run)."""

    def on_translated(self, lines: int) -> None:
        """``lines`` more source lines were translated."""


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_digest(path: Path) -> tuple[str, int]:
    """``(SHA-256 of the decoded lines, line count)`` of a text file (plain or ``.gz``: the
    same text has the same digest either way).

    Raises:
        InputError: unreadable, or a line that is not UTF-8 (file and line named).
    """
    digest, n = hashlib.sha256(), 0
    for line in iter_lines(path):
        digest.update(line.encode("utf-8") + b"\n")
        n += 1
    return digest.hexdigest(), n


def teacher_record(folder: Path) -> dict[str, str]:
    """A teacher's identity: its folder and the digest of the weights its engine loads.

    Raises:
        InputError: the folder holds neither ``model.safetensors`` nor ``model.bin``.
    """
    for name in (WEIGHTS_FILE, CT2_WEIGHTS):
        if (folder / name).is_file():
            return {"path": str(folder.resolve()), "weights_sha256": file_digest(folder / name)}
    raise InputError(
        f"no {WEIGHTS_FILE} (nor a CTranslate2 {CT2_WEIGHTS}): -m takes a trained model folder",
        folder,
    )


def manifest_for(
    settings: TeacherSettings, train_prefix: str | Path, src_lang: str, tgt_lang: str
) -> dict[str, Any]:
    """What a translation step records in ``manifest.json``, ``complete`` false.

    Raises:
        InputError: a missing source file or teacher weights.
    """
    src_path = corpus_path(train_prefix, src_lang)
    digest, lines = text_digest(src_path)
    return {
        "format_version": FORMAT_VERSION,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "source": {"path": str(src_path.resolve()), "sha256": digest, "lines": lines},
        **teacher_manifest(settings),
        "complete": False,
        "seconds": 0.0,
    }


def teacher_manifest(settings: TeacherSettings) -> dict[str, Any]:
    """The teacher's part of ``manifest.json``: who translates, and how.

    Raises:
        InputError: a teacher folder without weights.
    """
    return {
        "teachers": [teacher_record(Path(m)) for m in settings.models],
        "beam_size": settings.beam_size,
        "length_penalty": settings.length_penalty,
        "engine": settings.resolved_engine,
        "chunk_lines": settings.chunk_lines,
    }


def translation_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a resume must share with the translations it continues, by name: paths may
    move, the digests of the source text and the teachers' weights may not."""
    return {
        "languages": f"{manifest['src_lang']}→{manifest['tgt_lang']}",
        "source corpus (its SHA-256)": manifest["source"]["sha256"],
        "teachers (their weights' SHA-256)": [t["weights_sha256"] for t in manifest["teachers"]],
        "beam_size": manifest["beam_size"],
        "length_penalty": manifest["length_penalty"],
        "engine": manifest["engine"],
        "chunk_lines": manifest["chunk_lines"],
    }


def check_same_translation(folder: Path, saved: dict[str, Any], asked: dict[str, Any]) -> None:
    """Refuse to continue (or reuse) the translations in ``folder`` with other settings.

    Raises:
        ConfigError: the first setting that differs, both values, and the ways out.
    """
    was, now = translation_identity(saved), translation_identity(asked)
    for name, value in was.items():
        if now[name] != value:
            raise ConfigError(
                f"{folder / MANIFEST}: the teacher's translations there were made with {name} "
                f"= {value}, this command gives {now[name]}; run it with the settings they were "
                f"made with (teachers {', '.join(t['path'] for t in saved['teachers'])}), or "
                f"remove {folder} (or choose another -o) to translate again"
            )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a distilled folder.

    Raises:
        CheckpointError: missing, not JSON, or of another format version.
    """
    return read_versioned_json(
        folder / MANIFEST,
        "not a distilled folder written by nmt distill",
        "translate the corpus again with this nmt",
    )


def chunk_path(folder: Path, index: int) -> Path:
    """The file of chunk ``index`` (0-based)."""
    return folder / CHUNKS / f"chunk-{index:06d}.jsonl"


def finished_chunks(folder: Path, n_chunks: int) -> int:
    """How many chunks, from the first, are written (each write is atomic: a chunk file is
    whole or absent)."""
    return next((i for i in range(n_chunks) if not chunk_path(folder, i).is_file()), n_chunks)


def translate_corpus(
    settings: TeacherSettings,
    train_prefix: str | Path,
    src_lang: str,
    tgt_lang: str,
    folder: Path,
    observer: DistillObserver | None = None,
) -> int:
    """Translate the sources ``PREFIX.SRC[.gz]`` with the teacher into the distilled folder
    ``folder``, continuing from its first missing chunk.

    Returns:
        The number of chunks translated by this call (0 when the folder was complete).

    Raises:
        ConfigError: the folder holds translations made with other settings (:func:`
            check_same_translation`), settings the engine cannot apply, or a teacher that
            does not translate from ``src_lang`` into ``tgt_lang``.
        InputError: missing or unreadable files.
        CheckpointError: a teacher folder nmt cannot load.
    """
    observer = observer or DistillObserver()
    asked = manifest_for(settings, train_prefix, src_lang, tgt_lang)
    manifest = asked
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        check_same_translation(folder, manifest, asked)
    total = asked["source"]["lines"]
    n_chunks = math.ceil(total / settings.chunk_lines)
    done = finished_chunks(folder, n_chunks)
    if done == n_chunks:  # also a run killed between its last chunk and the manifest
        if not manifest["complete"]:
            write_json(folder / MANIFEST, {**manifest, "complete": True})
        return 0
    decode = DecodeConfig(beam_size=settings.beam_size, length_penalty=settings.length_penalty)
    models = [str(m) for m in settings.models]
    teacher = load_translator(
        models[0] if len(models) == 1 else models,
        decode,
        settings.resolved_engine,
        settings.device,
        chunk_lines=PROGRESS_LINES,
        tgt_lang=tgt_lang,  # a teacher of several targets translates into the student's
    )
    sources = {src for src, _ in teacher.targets.directions} - {"und"}
    if sources and src_lang not in sources:
        raise ConfigError(
            f"--src-lang {src_lang}: the teacher {models[0]} translates from "
            f"{', '.join(sorted(sources))}; give the student's direction with --src-lang and "
            "--tgt-lang"
        )
    folder.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves nothing
    write_json(folder / MANIFEST, manifest)
    start_line = done * settings.chunk_lines
    what = "an ensemble of " + str(len(models)) if len(models) > 1 else models[0]
    observer.on_message(
        f"translating {total - start_line:,} of {total:,} source lines with {what} "
        f"(beam {settings.beam_size}, {settings.resolved_engine} engine) into {folder}"
        + (f", from chunk {done + 1} of {n_chunks}" if done else "")
    )
    observer.on_translate_start(total, start_line)
    lines = iter_lines(corpus_path(train_prefix, src_lang))
    lines = itertools.islice(lines, start_line, None)
    seconds = float(manifest.get("seconds", 0.0))
    for index in range(done, n_chunks):
        started = time.monotonic()
        chunk = list(itertools.islice(lines, settings.chunk_lines))
        first = index * settings.chunk_lines + 1
        records = []
        for offset in range(0, len(chunk), PROGRESS_LINES):
            part = chunk[offset : offset + PROGRESS_LINES]
            for src, t in zip(part, teacher.translate_chunk(part, first + offset, decode)):
                score = t.nbest_normalized[0] if t.nbest_normalized else None
                good = t.text and score is not None and math.isfinite(score)
                records.append({"src": src, "tgt": t.text, "score": score if good else None})
            observer.on_translated(len(part))
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write(chunk_path(folder, index), lambda f, b=text.encode("utf-8"): f.write(b))
        seconds += time.monotonic() - started
        last = index == n_chunks - 1
        write_json(folder / MANIFEST, {**manifest, "seconds": seconds, "complete": last})
    return n_chunks - done


def read_chunks(folder: Path) -> Iterator[dict[str, Any]]:
    """The records of a complete distilled folder, in source order.

    Raises:
        ConfigError: the folder's translation step did not finish.
        InputError: a chunk file that is not nmt's JSON lines (file and line named).
    """
    manifest = read_manifest(folder)
    if not manifest["complete"]:
        raise ConfigError(
            f"{folder}: the teacher's translation there did not finish; finish it by running "
            "nmt distill with it as -o/distilled (the same command that started it)"
        )
    n_chunks = math.ceil(manifest["source"]["lines"] / manifest["chunk_lines"])
    for index in range(n_chunks):
        path = chunk_path(folder, index)
        for number, line in enumerate(iter_lines(path), start=1):
            try:
                record = json.loads(line)
                yield {"src": record["src"], "tgt": record["tgt"], "score": record["score"]}
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError("not a record of nmt distill's chunks", path, number) from None
