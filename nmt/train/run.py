"""``train()``: check the input, prepare the run folder, join the process group, run the
:class:`~nmt.train.trainer.Trainer`.

Training always reads a prepared corpus (:mod:`nmt.data.store`), memory-mapped: either a data
folder written by ``nmt prepare`` or, given a corpus prefix, one prepared on the fly into
``DIR/data``. A folder that already holds ``resume.pt`` is continued from it (see
:mod:`nmt.train.trainer`).
Started by ``torchrun``, every process trains on its share of the batches (DDP).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nmt.config import ModelConfig, TrainConfig
from nmt.config_file import check_fits, from_dict
from nmt.data import store
from nmt.data.multilingual import (
    ValidText,
    corpus_files,
    open_pairs,
    parse_pairs,
    read_valid_sets,
)
from nmt.data.parallel import Corpus, encode_parallel, read_parallel
from nmt.data.textio import corpus_path
from nmt.data.vocab import JOINT_SPM, check_same_vocab, load_tokenizer
from nmt.device import resolve_device
from nmt.errors import ConfigError, InputError, NMTError, TrainingError
from nmt.model import checkpoint as ckpt
from nmt.train import malloc
from nmt.train.distributed import DistEnv, barrier, gather_objects, init_distributed, shutdown
from nmt.train.log import (  # re-exported: the training API lives under nmt.train.run
    RunStart,
    StepStats,
    TrainObserver,
    ValidResult,
    check_tensorboard,
)
from nmt.train.resume import check_same_recipe
from nmt.train.run_folder import (  # noqa: F401 - prepare_run and describe re-exported
    RUN_FILES,
    check_run_folder,
    check_shared_folder,
    clear_run,
    describe,
    init_model_config,
    prepare_run,
)
from nmt.train.schedule import inverse_sqrt_lr  # re-exported
from nmt.train.trainer import Trainer  # re-exported too

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


def read_valid(
    valid_prefix: str | Path | None, train_cfg: TrainConfig
) -> tuple[list[str], list[str]] | ValidText:
    """The validation source and reference lines (of each pair, for a multilingual run).

    Raises:
        InputError: missing or mismatched files; ConfigError: no validation set at all.
    """
    if valid_prefix is None:
        raise ConfigError(
            "no validation set: give --valid PREFIX (or prepare the data with --valid)"
        )
    if train_cfg.pairs:
        return read_valid_sets(valid_prefix, train_cfg.pairs)
    return read_parallel(valid_prefix, train_cfg.src_lang, train_cfg.tgt_lang)


def check_pairs(train_cfg: TrainConfig, model_cfg: ModelConfig, prefix: str | Path | None) -> None:
    """Check a multilingual run's options and that every pair's corpus files exist.

    Raises:
        ConfigError: a malformed pair, a data folder instead of a corpus prefix, separate
            vocabularies. InputError: a missing corpus file (named).
    """
    parse_pairs(train_cfg.pairs)
    if prefix is None:
        raise ConfigError(
            "--pairs prepares every pair from the corpus prefix --train (PREFIX.LANG or "
            "PREFIX.SRC-TGT.LANG); --data holds one pair"
        )
    if model_cfg.src_vocab_size:
        raise ConfigError(
            "a multilingual model has one joint vocabulary: drop --vocab-layout separate"
        )
    corpus_files(prefix, train_cfg.pairs)


def check_data_max_len(data_dir: str | Path, meta: dict[str, Any], max_len: int) -> None:
    """Refuse a training ``max_len`` above the one ``nmt prepare`` filtered the data folder
    at: the prepared store holds no longer pairs, so the larger value would be silently
    ignored.

    Raises:
        ConfigError: naming both values and the two ways out.
    """
    prepared = meta.get("filter", {}).get("max_len")
    if prepared is not None and max_len > prepared:
        raise ConfigError(
            f"max_len={max_len} is above the max_len={prepared} that {data_dir} was prepared "
            f"with (it holds no longer pairs): prepare the data again with `nmt prepare "
            f"--max-len {max_len}`, or train with max_len={prepared} (--max-len {prepared}, or "
            "max_len in the config file's [train] table)"
        )


def check_data_spm(spm_path: str | Path, data_dir: str | Path) -> None:
    """Accept ``--spm`` beside ``--data`` only when it is the data folder's own SentencePiece
    model(s) (a joint ``.model`` file, or a folder), byte for byte.

    Raises:
        ConfigError: another model: the data was encoded with the folder's, so the ids would
            not match it.
    """
    spm_path, data_dir = Path(spm_path), Path(data_dir)
    why = (
        f"--spm {spm_path} is not the SentencePiece model {data_dir} was encoded with: drop "
        "--spm (a data folder brings its own), or prepare the data with `nmt prepare --spm "
        f"{spm_path}`"
    )
    if spm_path.is_file():
        joint = data_dir / JOINT_SPM
        if not joint.is_file() or joint.read_bytes() != spm_path.read_bytes():
            raise ConfigError(why)
        return
    check_same_vocab([data_dir, spm_path], why)


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
            ``out_dir/data`` (encoded once, memory-mapped; see :mod:`nmt.data.store`).
        valid_prefix: validation corpus prefix; ``None`` takes the data folder's copy.
        out_dir: the run folder; it becomes a model folder ``nmt translate -m`` accepts.
        spm_path: an existing joint SentencePiece model to use instead of training one (or a
            folder whose SentencePiece model(s) to use, :mod:`nmt.data.vocab`).
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
    malloc.tune()  # keep freed step buffers in the process (nmt.train.malloc)
    observer = observer or TrainObserver()
    out_dir = Path(out_dir)
    init_weights: Path | None = None
    if init_from is not None:
        init_from = Path(init_from)
        model_cfg = init_model_config(init_from, model_cfg, spm_path)
        spm_path, init_weights = init_from, init_from / ckpt.WEIGHTS_FILE  # its SentencePiece
        ckpt.load_weights(init_weights)  # readable, before anything is written
    check_fits(model_cfg, train_cfg)
    if train_cfg.tensorboard:
        check_tensorboard()  # before anything is written, not when the run log opens
    if (train_prefix is None) == (data_dir is None):
        raise ConfigError("give either a corpus prefix (--train) or a data folder (--data)")
    if train_cfg.pairs:
        check_pairs(train_cfg, model_cfg, train_prefix)
    if data_dir is not None:
        meta = store.read_meta(data_dir)
        langs = (meta["src_lang"], meta["tgt_lang"])
        if langs != (train_cfg.src_lang, train_cfg.tgt_lang):
            raise ConfigError(
                f"{data_dir} holds {langs[0]}→{langs[1]} but training asks for "
                f"{train_cfg.src_lang}→{train_cfg.tgt_lang}; fix --src-lang/--tgt-lang"
            )
        check_data_max_len(data_dir, meta, train_cfg.max_len)
        if init_from is not None:
            check_same_vocab(
                [Path(init_from), Path(data_dir)],
                f"the data folder was encoded with another vocabulary than --init-from; "
                f"prepare the data with --spm {init_from}",
            )
        elif spm_path is not None:
            check_data_spm(spm_path, data_dir)
            spm_path = None  # the data folder's, the very same
        source = ("data", str(data_dir))
        if valid_prefix is None and meta["valid_pairs"]:
            valid_prefix = Path(data_dir) / "valid"  # the copy nmt prepare --valid made
    else:
        # Only that the files exist: rank 0 checks the lines (once) while it prepares them.
        for lang in (train_cfg.src_lang, train_cfg.tgt_lang):
            if not train_cfg.pairs:  # their files were checked above
                corpus_path(train_prefix, lang)  # type: ignore[arg-type]
        source = ("train", str(train_prefix))
    check_run_folder(out_dir, source, valid_prefix, init_from, overwrite)
    if not overwrite and (out_dir / ckpt.RESUME_FILE).is_file():
        check_same_recipe(out_dir, train_cfg)
    # Check the input that is read whole before anything is written into the run folder.
    valid_text = read_valid(valid_prefix, train_cfg)
    if spm_path is not None:  # checks the file(s) and special ids before the folder is made
        load_tokenizer(spm_path)
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
    valid_text: tuple[list[str], list[str]] | ValidText,
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
    if not env.is_main:  # rank 0 tells what the run does, once for the job
        observer = TrainObserver()
    # checked before rank 0 writes anything
    resume = not overwrite and (out_dir / ckpt.RESUME_FILE).is_file()
    error: NMTError | None = None
    if env.is_main:
        try:
            # Also a folder that lost its config.json but kept resume.pt (a crash while a
            # run started, a partial copy): --overwrite must not resume it.
            if overwrite and any((out_dir / name).is_file() for name in RUN_FILES):
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
    tokenizer = load_tokenizer(out_dir)
    data_dir = Path(folder_cfg["data"]["prepared"])
    valid_sets = None
    train_data: Corpus
    if isinstance(valid_text, dict):  # a multilingual run
        train_data, valid_sets = open_pairs(
            data_dir, train_cfg.pairs, tokenizer, valid_text, train_cfg, model_cfg.max_positions
        )
        valid_src, valid_tgt = valid_sets[0].src, valid_sets[0].refs
        valid_data = valid_sets[0].data
        shares = ", ".join(f"{p} {n:,}" for p, n in zip(train_cfg.pairs, train_data.counts))
        observer.on_message(
            f"{len(train_data):,} training pairs per epoch from {data_dir} ({shares}; "
            f"T={train_cfg.pair_sampling_temperature:g}), "
            f"{sum(len(v.src) for v in valid_sets):,} validation pairs"
        )
    else:
        pair_store = store.open_store(data_dir, train_cfg.max_len)
        train_data = pair_store
        valid_src, valid_tgt = valid_text
        valid_data = encode_parallel(tokenizer, valid_src, valid_tgt, model_cfg.max_positions - 1)
        if not valid_data.src:  # its loss would read 0.000, perplexity 1.00
            raise InputError(
                f"none of the {len(valid_src):,} validation pairs has both sides non-empty and "
                f"at most {model_cfg.max_positions - 1} tokens (max_positions): validate on "
                "sentence pairs"
            )
        left_out = f", {pair_store.dropped:,} longer than {train_cfg.max_len} left out"
        observer.on_message(
            f"{len(train_data):,} training pairs from {data_dir}"
            f"{left_out if pair_store.dropped else ''}, {len(valid_src):,} validation pairs"
        )
    trainer = Trainer(
        out_dir,
        model_cfg,
        train_cfg,
        tokenizer,
        train_data,
        valid_data,
        (valid_src, valid_tgt),
        observer,
        env,
        valid_sets,
    )
    if resume:
        trainer.load_resume(out_dir / ckpt.RESUME_FILE, reset_data_position)
    elif init_weights is not None:  # every rank loads the same weights
        trainer.model.load_state_dict(ckpt.load_weights(init_weights))
        observer.on_message(f"starting from the weights of {init_weights}")
    with stop_on_signals(trainer):
        reason = trainer.run()
    return trainer, reason
