"""``train()``: check the input, prepare the run folder, join the process group, run the
:class:`~nmt.trainer.Trainer`.

Training always reads a prepared corpus (:mod:`nmt.store`), memory-mapped: either a data
folder written by ``nmt prepare`` or, given a corpus prefix, one prepared on the fly into
``DIR/data``. A folder that already holds ``resume.pt`` is continued from it (see
:mod:`nmt.trainer`).
Started by ``torchrun``, every process trains on its share of the batches (DDP).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, cast

import torch

from nmt import checkpoint as ckpt
from nmt import store
from nmt.config import ModelConfig, TrainConfig, check_fits, from_dict, to_dict
from nmt.data import encode_parallel, read_parallel
from nmt.device import resolve_device
from nmt.distributed import DistEnv, barrier, gather_objects, init_distributed, shutdown
from nmt.errors import ConfigError, NMTError, TrainingError
from nmt.marian_vocab import SOURCE_SPM, TARGET_SPM, VOCAB_FILE
from nmt.schedule import inverse_sqrt_lr  # re-exported
from nmt.textio import corpus_path
from nmt.tokenizer import Tokenizer
from nmt.train_log import (  # re-exported: the training API lives under nmt.train
    RunStart,
    StepStats,
    TrainObserver,
    ValidResult,
)
from nmt.trainer import Trainer  # re-exported too

__all__ = [
    "RunStart",
    "StepStats",
    "Trainer",
    "TrainObserver",
    "ValidResult",
    "inverse_sqrt_lr",
    "train",
    "prepare_run",
    "stop_on_signals",
]


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM finish the current step, then the loop saves and stops."""

    def handler(signum: int, frame: Any) -> None:
        trainer.stop_signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def prepare_run(
    out_dir: Path,
    source: tuple[str, str],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None,
    observer: TrainObserver,
    init_from: Path | None = None,
) -> None:
    """Create or reopen the run folder: ``spm.model``, ``config.json`` and, when training
    from a corpus prefix, the prepared corpus in ``DIR/data`` (:func:`nmt.store.prepare`).

    Args:
        source: ``(kind, path)``: ``("train", PREFIX)`` or ``("data", DATA_DIR)``.

    A folder with ``resume.pt`` keeps its model shape (from its ``config.json``) and its
    SentencePiece model; the training recipe given now applies to the rest of the run.
    ``config.json`` records the data folder to train from (``data.prepared``).
    """
    with ckpt.removed_on_error(out_dir):  # a run that could not start leaves no folder
        out_dir.mkdir(parents=True, exist_ok=True)
        resume = (out_dir / ckpt.RESUME_FILE).is_file()
        spm_file = out_dir / ckpt.SPM_FILE
        if resume:
            saved = ckpt.read_config(out_dir)
            saved_cfg = from_dict(ModelConfig, saved["model"], str(out_dir / ckpt.CONFIG_FILE))
            check_same_model(saved_cfg, model_cfg, out_dir)
            model_cfg = saved_cfg
            observer.on_message(f"resuming from {out_dir / ckpt.RESUME_FILE}")
            spm_path = spm_file
        kind, path = source
        data_dir = Path(path) if kind == "data" else out_dir / "data"
        if kind == "train" and not (data_dir / store.META_FILE).is_file():
            summary = store.prepare(
                path,
                data_dir,
                train_cfg.src_lang,
                train_cfg.tgt_lang,
                spm_path=spm_path,
                vocab_size=model_cfg.vocab_size,
                max_len=train_cfg.max_len,
                overwrite=True,  # an incomplete one, from an interrupted start
                on_message=observer.on_message,
            )
            observer.on_message(describe(summary))
        if not resume:
            ckpt.atomic_write(spm_file, lambda f: f.write((data_dir / store.SPM_FILE).read_bytes()))
        elif (data_dir / store.SPM_FILE).read_bytes() != spm_file.read_bytes():
            raise ConfigError(
                f"{data_dir / store.SPM_FILE} differs from the run's {spm_file}: the prepared ids "
                "would not match the model; resume with the data the run started with"
            )
        model_cfg = replace(model_cfg, vocab_size=Tokenizer(spm_file).vocab_size)
        ckpt.write_json(
            out_dir / ckpt.CONFIG_FILE,
            {
                "format_version": ckpt.FORMAT_VERSION,
                "src_lang": train_cfg.src_lang,
                "tgt_lang": train_cfg.tgt_lang,
                "model": to_dict(model_cfg),
                "train": to_dict(train_cfg),
                "data": {kind: str(path), "prepared": str(data_dir)},
                **({"init_from": str(init_from)} if init_from else {}),
            },
        )


def check_same_model(saved: ModelConfig, given: ModelConfig, out_dir: Path) -> None:
    """Refuse to resume with a model config other than the run's (its vocabulary size is
    the SentencePiece model's, checked apart).

    Raises:
        ConfigError: the first differing field, both values and the ways out.
    """
    for name in (f.name for f in fields(ModelConfig)):
        if name != "vocab_size" and getattr(saved, name) != getattr(given, name):
            raise ConfigError(
                f"{out_dir / ckpt.CONFIG_FILE}: the run was trained with {name}="
                f"{getattr(saved, name)!r}, this command gives {getattr(given, name)!r}; "
                "resume with the run's model options (its --preset and flags), or start a new "
                "run folder (--overwrite replaces this one)"
            )


# What fine-tuning may change about the initial model: its regularisation, not its shape.
TUNABLE = ("dropout", "attention_dropout", "activation_dropout")


def init_model_config(
    init_from: Path, given: ModelConfig, spm_path: str | Path | None
) -> ModelConfig:
    """The model config of a run that starts from the weights of the model folder
    ``init_from``: its shape and vocabulary (that of its SentencePiece model), with the
    dropout rates of ``given``.

    Raises:
        ConfigError: a shape field of ``given`` or the SentencePiece model ``spm_path``
            differs from the folder's (both named).
        CheckpointError: not a model folder.
    """
    saved_cfg = from_dict(
        ModelConfig, ckpt.read_config(init_from)["model"], str(init_from / ckpt.CONFIG_FILE)
    )
    for name in (f.name for f in fields(ModelConfig)):
        if name in TUNABLE or name == "vocab_size":  # the vocabulary: the spm, checked below
            continue
        if getattr(saved_cfg, name) != getattr(given, name):
            raise ConfigError(
                f"--init-from {init_from} has {name}={getattr(saved_cfg, name)!r} but this "
                f"command gives {name}={getattr(given, name)!r}: a model's shape cannot change "
                "when training continues from its weights; drop the model option or --preset"
            )
    init_spm = init_from / ckpt.SPM_FILE
    if not init_spm.is_file() and (init_from / VOCAB_FILE).is_file():
        raise ConfigError(
            f"--init-from {init_from} is an imported Marian model ({VOCAB_FILE} over "
            f"{SOURCE_SPM} and {TARGET_SPM}); training from it is not supported yet (issue 14): "
            "the training data is encoded with one joint SentencePiece model"
        )
    if spm_path is not None and Path(spm_path).read_bytes() != init_spm.read_bytes():
        raise ConfigError(
            f"--spm {spm_path} differs from {init_spm}, the SentencePiece model the weights "
            "of --init-from were trained with; drop --spm"
        )
    return replace(saved_cfg, **{name: getattr(given, name) for name in TUNABLE})


# What a run writes into its folder; --overwrite removes these (and DIR/data when training
# from a corpus prefix) and nothing else.
RUN_FILES = (
    ckpt.RESUME_FILE,
    "last.safetensors",
    ckpt.WEIGHTS_FILE,
    "metrics.jsonl",
    ckpt.CONFIG_FILE,
    ckpt.SPM_FILE,
)
RUN_FOLDERS = ("checkpoints", "tensorboard")


def clear_run(out_dir: Path, with_data: bool) -> None:
    """Remove a run's files from ``out_dir`` (``--overwrite``): the files and folders nmt
    wrote (:data:`RUN_FILES`, :data:`RUN_FOLDERS`, and ``data/`` when ``with_data``); other
    files in the folder are left alone."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS + (("data",) if with_data else ()):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def lost_contact(exc: RuntimeError, env: DistEnv) -> bool:
    """Whether ``exc`` says that another process of the job is gone: a torch.distributed
    network error, or gloo's/NCCL's RuntimeError from a collective (also the gradient
    all-reduce inside DDP's backward) whose peer closed or reset the connection."""
    if not env.enabled:
        return False
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc)
    return any(mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed"))


SHARED_CHECK = ".shared-folder-check"


def check_shared_folder(out_dir: Path, env: DistEnv) -> None:
    """Check that every process sees the run folder rank 0 prepared: rank 0 writes a random
    token into it and every process reads it back (all must call this; no-op without DDP).

    Raises:
        TrainingError: on every process, when one of them (its rank and host named) does
            not see the token: the folder is not on a filesystem all nodes share.
    """
    if not env.enabled:
        return
    token = secrets.token_hex(8) if env.is_main else None
    if env.is_main:
        (out_dir / SHARED_CHECK).write_text(str(token), encoding="utf-8")
    token = str(gather_objects(token, env)[0])
    try:
        seen = (out_dir / SHARED_CHECK).read_text(encoding="utf-8") == token
    except OSError:
        seen = False
    views = cast(
        "list[tuple[bool, str]]", gather_objects((seen, socket.gethostname()), env)
    )  # also a barrier: every process has read the token before it is removed
    if env.is_main:
        (out_dir / SHARED_CHECK).unlink(missing_ok=True)
    blind = [f"rank {rank} on {host}" for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        raise TrainingError(
            f"{', '.join(blind)} cannot see the run folder {out_dir} that rank 0 on "
            f"{views[0][1]} prepared: put the run folder on a filesystem every node mounts at "
            "the same path (NFS, Lustre, ...), given as an absolute path"
        )


def describe(summary: store.PrepareSummary) -> str:
    """One line about a prepared corpus: pairs kept and dropped, by reason."""
    dropped = ", ".join(f"{n:,} {why}" for why, n in summary.dropped.items() if n) or "none"
    return (
        f"prepared {summary.kept:,} of {summary.lines:,} pairs in {summary.out_dir} "
        f"(dropped: {dropped}) in {summary.seconds:.1f}s"
    )


def read_valid(
    valid_prefix: str | Path | None, train_cfg: TrainConfig
) -> tuple[list[str], list[str]]:
    """The validation source and reference lines.

    Raises:
        InputError: missing or mismatched files; ConfigError: no validation set at all.
    """
    if valid_prefix is None:
        raise ConfigError(
            "no validation set: give --valid PREFIX (or prepare the data with --valid)"
        )
    return read_parallel(valid_prefix, train_cfg.src_lang, train_cfg.tgt_lang)


def train(
    train_prefix: str | Path | None,
    valid_prefix: str | Path | None,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None = None,
    observer: TrainObserver | None = None,
    data_dir: str | Path | None = None,
    reset_data_position: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
) -> tuple[Trainer, str]:
    """Train a model into ``out_dir`` (continuing it if it holds a resume checkpoint).

    Args:
        train_prefix: corpus prefix (``PREFIX.LANG[.gz]``), prepared on the fly into
            ``out_dir/data`` (encoded once, memory-mapped; see :mod:`nmt.store`).
        valid_prefix: validation corpus prefix; ``None`` takes the data folder's copy.
        out_dir: the run folder; it becomes a model folder ``nmt translate -m`` accepts.
        spm_path: an existing SentencePiece model to use instead of training one.
        data_dir: a data folder written by ``nmt prepare``, instead of ``train_prefix``.
        reset_data_position: on resume with another batch size, seed, accumulation,
            process count or corpus, continue from the start of a new epoch instead of
            refusing (see :meth:`Trainer.load_resume`).
        overwrite: start afresh in a folder that holds a run: its files are removed first
            (:func:`clear_run`) instead of being resumed.
        init_from: a model folder whose weights, shape and SentencePiece model a new run
            starts from (fine-tuning), with a fresh optimizer and schedule; ignored when
            ``out_dir`` already holds a run to resume (see :func:`init_model_config`).

    Started by ``torchrun``, each process trains on its share of every epoch's batches
    (DDP); only rank 0 writes files, logs and validates.

    Returns:
        The trainer (its ``state`` holds the final counters) and why training stopped.

    Raises:
        InputError: missing, non-UTF-8 or mismatched corpus files, an empty corpus, or an
            incomplete data folder. ConfigError: both or neither of ``train_prefix`` and
            ``data_dir``, a data folder of other languages, or a resume with another model
            config or batch order. CheckpointError: an
            unreadable resume checkpoint. TrainingError: diverged training.
    """
    observer = observer or TrainObserver()
    out_dir = Path(out_dir)
    init_weights: Path | None = None
    if init_from is not None:
        init_from = Path(init_from)
        model_cfg = init_model_config(init_from, model_cfg, spm_path)
        spm_path, init_weights = init_from / ckpt.SPM_FILE, init_from / ckpt.WEIGHTS_FILE
        ckpt.load_weights(init_weights)  # readable, before anything is written
    check_fits(model_cfg, train_cfg)
    if (train_prefix is None) == (data_dir is None):
        raise ConfigError("give either a corpus prefix (--train) or a data folder (--data)")
    if data_dir is not None:
        meta = store.read_meta(data_dir)
        langs = (meta["src_lang"], meta["tgt_lang"])
        if langs != (train_cfg.src_lang, train_cfg.tgt_lang):
            raise ConfigError(
                f"{data_dir} holds {langs[0]}→{langs[1]} but training asks for "
                f"{train_cfg.src_lang}→{train_cfg.tgt_lang}; fix --src-lang/--tgt-lang"
            )
        if init_from is not None:
            data_spm = Path(data_dir) / store.SPM_FILE
            if data_spm.read_bytes() != Path(spm_path).read_bytes():  # type: ignore[arg-type]
                raise ConfigError(
                    f"{data_dir} was encoded with another SentencePiece model than --init-from "
                    f"{init_from}; prepare the data with --spm {spm_path}"
                )
        elif spm_path is not None:
            raise ConfigError(
                f"--spm cannot be combined with --data: {data_dir} was encoded with its own "
                "spm.model"
            )
        source = ("data", str(data_dir))
        if valid_prefix is None and meta["valid_pairs"]:
            valid_prefix = Path(data_dir) / "valid"  # the copy nmt prepare --valid made
    else:
        # Only that the files exist: rank 0 checks the lines (once) while it prepares them.
        for lang in (train_cfg.src_lang, train_cfg.tgt_lang):
            corpus_path(train_prefix, lang)  # type: ignore[arg-type]
        source = ("train", str(train_prefix))
    # Check the input that is read whole before anything is written into the run folder.
    valid_text = read_valid(valid_prefix, train_cfg)
    if spm_path is not None:
        Tokenizer(spm_path)  # checks the file and its special ids before the folder is made
    env = init_distributed(resolve_device(train_cfg.device), train_cfg.dist_timeout)
    try:
        result = _train(
            out_dir, source, valid_text, model_cfg, train_cfg, spm_path, observer, env,
            reset_data_position, overwrite, init_weights,
        )  # fmt: skip
        # Leave the process group together: a rank that tore it down while rank 0 was still
        # writing its files was seen to abort (gloo, "terminate called without an active
        # exception"). Only on success: after an error the other ranks may be gone.
        barrier(env)
        return result
    except RuntimeError as exc:
        if not lost_contact(exc, env):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"process {env.rank} of {env.world_size} lost contact with the others ({first}); "
            f"the last resume checkpoint is in {out_dir}: relaunch every node with the same "
            "command to continue from it"
        ) from None
    finally:
        shutdown(env)


def _train(
    out_dir: Path,
    source: tuple[str, str],
    valid_text: tuple[list[str], list[str]],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None,
    observer: TrainObserver,
    env: DistEnv,
    reset_data_position: bool = False,
    overwrite: bool = False,
    init_weights: Path | None = None,
) -> tuple[Trainer, str]:
    """:func:`train` once the input is checked and the process group (if any) is joined."""
    # checked before rank 0 writes anything
    resume = not overwrite and (out_dir / ckpt.RESUME_FILE).is_file()
    error: NMTError | None = None
    if env.is_main:
        try:
            if overwrite and (out_dir / ckpt.CONFIG_FILE).is_file():
                clear_run(out_dir, with_data=source[0] == "train")
                observer.on_message(f"--overwrite: removed the run in {out_dir}")
            init_from = init_weights.parent if init_weights else None
            prepare_run(out_dir, source, model_cfg, train_cfg, spm_path, observer, init_from)
        except NMTError as exc:  # e.g. a bad line found while encoding: tell the other ranks
            error = exc
    reports = gather_objects(None if error is None else str(error), env)  # also a barrier
    if error is not None:
        raise error
    if reports[0] is not None:
        raise TrainingError(f"rank 0 could not prepare the run: {reports[0]}")
    check_shared_folder(out_dir, env)
    folder_cfg = ckpt.read_config(out_dir)
    model_cfg = from_dict(ModelConfig, folder_cfg["model"], str(out_dir / ckpt.CONFIG_FILE))
    tokenizer = Tokenizer(out_dir / ckpt.SPM_FILE)
    data_dir = Path(folder_cfg["data"]["prepared"])
    train_data = store.open_store(data_dir, train_cfg.max_len)
    valid_src, valid_tgt = valid_text
    valid_data = encode_parallel(tokenizer, valid_src, valid_tgt, model_cfg.max_positions - 1)
    left_out = f", {train_data.dropped:,} longer than {train_cfg.max_len} left out"
    observer.on_message(
        f"{len(train_data):,} training pairs from {data_dir}"
        f"{left_out if train_data.dropped else ''}, {len(valid_src):,} validation pairs"
    )
    trainer = Trainer(
        out_dir,
        model_cfg,
        train_cfg,
        tokenizer,
        train_data,
        valid_data,
        valid_text,
        observer,
        env,
    )
    if resume:
        trainer.load_resume(out_dir / ckpt.RESUME_FILE, reset_data_position)
    elif init_weights is not None:  # every rank loads the same weights
        trainer.model.load_state_dict(ckpt.load_weights(init_weights))
        observer.on_message(f"starting from the weights of {init_weights}")
    with stop_on_signals(trainer):
        reason = trainer.run()
    return trainer, reason
