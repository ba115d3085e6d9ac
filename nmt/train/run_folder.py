"""The run folder: creating or reopening it (:func:`prepare_run`), the checks that keep a
resumed or fine-tuned run consistent with it (:func:`check_same_model`,
:func:`init_model_config`), refusing one that training would destroy
(:func:`check_run_folder`), clearing it for ``--overwrite`` (:func:`clear_run`), and
checking that every process of a multi-node job sees it (:func:`check_shared_folder`).
"""

from __future__ import annotations

import secrets
import shutil
import socket
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, cast

from nmt.config import ModelConfig, TrainConfig
from nmt.config_file import from_dict, to_dict
from nmt.data import store
from nmt.data.marian_vocab import SOURCE_SPM, TARGET_SPM, VOCAB_FILE
from nmt.data.multilingual import prepare_pairs, split_pair, target_langs
from nmt.data.vocab import (
    SRC_SPM,
    TGT_SPM,
    check_same_vocab,
    copy_vocab,
    load_tokenizer,
    tokenizer_files,
    vocab_layout,
)
from nmt.errors import ConfigError, TrainingError
from nmt.model import checkpoint as ckpt
from nmt.train.distributed import DistEnv, gather_objects
from nmt.train.log import TrainObserver


def prepare_run(
    out_dir: Path,
    source: tuple[str, str],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None,
    observer: TrainObserver,
    init_from: Path | None = None,
) -> None:
    """Create or reopen the run folder: its SentencePiece model(s) (:mod:`nmt.data.vocab`),
    ``config.json`` and, when training from a corpus prefix, the prepared corpus in
    ``DIR/data`` (:func:`nmt.data.store.prepare`).

    Args:
        source: ``(kind, path)``: ``("train", PREFIX)`` or ``("data", DATA_DIR)``.
        spm_path: a joint SentencePiece model file, or a folder whose model(s) to use.

    A folder with ``resume.pt`` keeps its model shape (from its ``config.json``) and its
    SentencePiece model(s); the training recipe given now applies to the rest of the run.
    The model's vocabulary sizes and layout are those of the SentencePiece model(s).
    ``config.json`` records the data folder to train from (``data.prepared``).

    Raises:
        ConfigError: the data folder's vocabulary differs from a resumed run's, or is joint
            where ``model_cfg`` asks for separate vocabularies.
    """
    with ckpt.removed_on_error(out_dir):  # a run that could not start leaves no folder
        out_dir.mkdir(parents=True, exist_ok=True)
        resume = (out_dir / ckpt.RESUME_FILE).is_file()
        if resume:
            saved = ckpt.read_config(out_dir)
            saved_cfg = from_dict(ModelConfig, saved["model"], str(out_dir / ckpt.CONFIG_FILE))
            check_same_model(saved_cfg, model_cfg, out_dir)
            model_cfg = saved_cfg
            observer.on_message(f"resuming from {out_dir / ckpt.RESUME_FILE}")
            spm_path = out_dir
        kind, path = source
        data_dir = vocab_dir = Path(path) if kind == "data" else out_dir / "data"
        if train_cfg.pairs:  # one data folder per pair, in data_dir (nmt.data.multilingual)
            vocab_dir = data_dir / train_cfg.pairs[0]
            summaries = prepare_pairs(
                path, data_dir, train_cfg.pairs, spm_path, model_cfg.vocab_size,
                train_cfg.max_len, observer.on_message,
            )  # fmt: skip
            for pair, summary in summaries.items():
                observer.on_message(f"{pair}: {describe(summary)}")
        elif kind == "train" and (data_dir / store.META_FILE).is_file():
            check_reused_data(data_dir, path, train_cfg)
        elif kind == "train":
            summary = store.prepare(
                path,
                data_dir,
                train_cfg.src_lang,
                train_cfg.tgt_lang,
                spm_path=spm_path,
                vocab_size=model_cfg.vocab_size,
                src_vocab_size=model_cfg.src_vocab_size,
                max_len=train_cfg.max_len,
                overwrite=True,  # an incomplete one, from an interrupted start
                on_message=observer.on_message,
            )
            observer.on_message(describe(summary))
        if not resume:
            if model_cfg.src_vocab_size and vocab_layout(vocab_dir) != "separate":
                raise ConfigError(
                    f"{vocab_dir} holds a {vocab_layout(vocab_dir)} vocabulary, but separate "
                    "vocabularies were asked for: prepare the data with --vocab-layout separate, "
                    "or drop --vocab-layout"
                )
            copy_vocab(vocab_dir, out_dir)
        else:
            check_same_vocab(
                [out_dir, vocab_dir],
                "the prepared ids would not match the model; resume with the data the run "
                "started with",
            )
        tokenizer = load_tokenizer(out_dir)
        separate = vocab_layout(out_dir) == "separate"
        model_cfg = replace(
            model_cfg,
            vocab_size=tokenizer.vocab_size,
            src_vocab_size=tokenizer.src_vocab_size if separate else 0,
        )
        ckpt.write_json(
            out_dir / ckpt.CONFIG_FILE,
            {
                "format_version": ckpt.FORMAT_VERSION,
                **languages(train_cfg),
                "model": to_dict(model_cfg),
                "train": to_dict(train_cfg),
                "data": {kind: str(path), "prepared": str(data_dir)},
                **({"init_from": str(init_from)} if init_from else {}),
            },
        )


def check_reused_data(data_dir: Path, prefix: str, train_cfg: TrainConfig) -> None:
    """Check that the corpus an earlier start of this run prepared into ``data_dir`` is the
    one asked for now (the same prefix and languages), since it is reused as it is.

    Raises:
        ConfigError: another corpus prefix or other languages (both named).
    """
    meta = store.read_meta(data_dir)
    langs, asked = (meta["src_lang"], meta["tgt_lang"]), (train_cfg.src_lang, train_cfg.tgt_lang)
    was = meta.get("source", {}).get("train")
    if langs != asked:
        problem = f"holds {langs[0]}→{langs[1]}, not {asked[0]}→{asked[1]}"
    elif was is not None and Path(was).resolve() != Path(prefix).resolve():
        problem = f"was prepared from {was}, not {prefix}"
    else:
        return
    raise ConfigError(
        f"{data_dir} {problem}: continue the run with the corpus and languages it started "
        "with, or pass --overwrite to start again"
    )


def languages(train_cfg: TrainConfig) -> dict[str, Any]:
    """``config.json``'s languages: ``src_lang`` and ``tgt_lang``; for a multilingual run
    each side's languages joined by commas, and its ``pairs``."""
    if not train_cfg.pairs:
        return {"src_lang": train_cfg.src_lang, "tgt_lang": train_cfg.tgt_lang}
    sides = [split_pair(pair) for pair in train_cfg.pairs]
    src = ",".join(dict.fromkeys(s for s, _ in sides))
    return {"src_lang": src, "tgt_lang": ",".join(target_langs(train_cfg.pairs)),
            "pairs": list(train_cfg.pairs)}  # fmt: skip


def check_same_model(saved: ModelConfig, given: ModelConfig, out_dir: Path) -> None:
    """Refuse to resume with a model config other than the run's (its vocabulary sizes are
    the SentencePiece models', checked apart; separate vocabularies asked of a joint run are
    refused).

    Raises:
        ConfigError: the first differing field, both values and the ways out.
    """
    check_layout(saved, given, f"{out_dir / ckpt.CONFIG_FILE}: the run")
    name = first_difference(saved, given, skip=VOCAB_SIZES)
    if name is not None:
        raise ConfigError(
            f"{out_dir / ckpt.CONFIG_FILE}: the run was trained with {name}="
            f"{getattr(saved, name)!r}, this command gives {getattr(given, name)!r}; "
            "resume with the run's model options (its --preset and flags), or start a new "
            "run folder (--overwrite replaces this one)"
        )


VOCAB_SIZES = ("vocab_size", "src_vocab_size")  # the SentencePiece models' (nmt.data.vocab)


def check_layout(saved: ModelConfig, given: ModelConfig, what: str) -> None:
    """Refuse separate vocabularies (``--vocab-layout separate``) for a joint model ``what``
    (joint, the default, takes the model's layout).

    Raises:
        ConfigError: naming ``what`` and the way out.
    """
    if given.vocab_layout == "separate" and saved.vocab_layout != "separate":
        raise ConfigError(
            f"{what} has a joint vocabulary, and a model's vocabulary layout cannot change; "
            "drop --vocab-layout separate"
        )


def first_difference(a: ModelConfig, b: ModelConfig, skip: tuple[str, ...]) -> str | None:
    """The first field (in declaration order) outside ``skip`` where ``a`` and ``b`` differ."""
    names = (f.name for f in fields(ModelConfig) if f.name not in skip)
    return next((n for n in names if getattr(a, n) != getattr(b, n)), None)


# What fine-tuning may change about the initial model: its regularisation, not its shape.
TUNABLE = ("dropout", "attention_dropout", "activation_dropout")


def check_init_folder(init_from: Path) -> None:
    """Refuse an ``--init-from`` folder nmt cannot train from, before its config is read
    (an imported Marian model's special ids would otherwise be reported as settings the
    user never touched).

    Raises:
        ConfigError: an imported Marian/OPUS-MT model (``nmt import marian``), named, with
            why and what to do instead.
    """
    if vocab_layout(init_from) == "marian":
        raise ConfigError(
            f"--init-from {init_from} is an imported Marian/OPUS-MT model ({VOCAB_FILE} over "
            f"{SOURCE_SPM} and {TARGET_SPM}): nmt cannot fine-tune it yet. Training encodes "
            "with nmt's SentencePiece layouts and special ids (pad 0, BOS 2, EOS 3), not "
            "Marian's vocabulary and ids; fine-tune it with Marian or Hugging Face "
            "transformers and import the result with nmt import marian, or translate with it "
            "as it is"
        )


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
    check_init_folder(init_from)
    saved_cfg = from_dict(
        ModelConfig, ckpt.read_config(init_from)["model"], str(init_from / ckpt.CONFIG_FILE)
    )
    # The vocabulary is the SentencePiece model's, checked below.
    check_layout(saved_cfg, given, f"--init-from {init_from}")
    name = first_difference(saved_cfg, given, skip=(*TUNABLE, *VOCAB_SIZES))
    if name is not None:
        raise ConfigError(
            f"--init-from {init_from} has {name}={getattr(saved_cfg, name)!r} but this "
            f"command gives {name}={getattr(given, name)!r}: a model's shape cannot change "
            "when training continues from its weights; drop the model option or --preset"
        )
    init_spm = init_from / ckpt.SPM_FILE
    if spm_path is not None and (
        not init_spm.is_file() or Path(spm_path).read_bytes() != init_spm.read_bytes()
    ):
        raise ConfigError(
            f"--spm {spm_path} differs from the SentencePiece model(s) the weights of "
            f"--init-from {init_from} were trained with ({', '.join(tokenizer_files(init_from))}); "
            "drop --spm"
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
    SRC_SPM,
    TGT_SPM,
)
RUN_FOLDERS = ("checkpoints", "tensorboard")


def check_run_folder(
    out_dir: Path,
    source: tuple[str, str],
    valid_prefix: str | Path | None,
    init_from: Path | None,
    overwrite: bool,
) -> None:
    """Refuse a run folder whose training would destroy what is already there, before
    anything is written.

    Raises:
        ConfigError: ``out_dir`` is the ``--init-from`` or ``--data`` folder; a corpus to read
            (training or validation prefix) lies in ``out_dir/data``, where the prepared
            corpus is written; ``out_dir/config.json`` is not an nmt run's (e.g. a
            CTranslate2 export's, or the user's own file); or, without ``overwrite``, the
            folder holds weights (a model, step checkpoints) but no ``resume.pt`` to continue
            them. A folder that a start left without weights (stopped before its first
            update) is reopened.
    """
    out = out_dir.resolve()
    kind, path = source
    if init_from is not None and init_from.resolve() == out:
        raise ConfigError(
            f"-o {out_dir} is the --init-from folder: write the new run to another folder "
            "(training would overwrite the model it starts from)"
        )
    if kind == "data" and Path(path).resolve() == out:
        raise ConfigError(f"-o {out_dir} is the --data folder: write the run to another folder")
    if kind == "train":
        for prefix in (path, valid_prefix):
            if prefix is not None and Path(prefix).resolve().is_relative_to(out / "data"):
                raise ConfigError(
                    f"the corpus {prefix} is inside {out_dir / 'data'}, where nmt writes the "
                    "prepared corpus: move the corpus, or choose another -o"
                )
    config = out / ckpt.CONFIG_FILE
    if config.is_file():
        try:
            ours = "model" in ckpt.read_config(out)
        except ckpt.CheckpointError:  # not JSON, or no nmt format version
            ours = False
        if not ours:
            raise ConfigError(
                f"{config} is not an nmt run's config (nmt would replace it): choose another -o"
            )
    if overwrite or (out / ckpt.RESUME_FILE).is_file():
        return
    found = [name for name in (ckpt.WEIGHTS_FILE, "last.safetensors") if (out / name).is_file()]
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        found.append("checkpoints/")
    if found:
        raise ConfigError(
            f"{out_dir} holds {', '.join(found)} but no {ckpt.RESUME_FILE} to continue from: "
            "pass --overwrite to replace them, or choose another -o"
        )


def clear_run(out_dir: Path, with_data: bool) -> None:
    """Remove a run's files from ``out_dir`` (``--overwrite``): the files and folders nmt
    wrote (:data:`RUN_FILES`, :data:`RUN_FOLDERS`, and ``data/`` when ``with_data``); other
    files in the folder are left alone."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS + (("data",) if with_data else ()):
        shutil.rmtree(out_dir / name, ignore_errors=True)


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
