"""The configs of ``nmt train``'s and ``nmt distill``'s options: flags over the config file
over the preset over the defaults, a resumed run's recorded config and a fine-tuned model's
shape taken into account (:func:`resolve_options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmt.config import ModelConfig, TrainConfig
from nmt.config_file import resolve
from nmt.data.multilingual import parse_pairs
from nmt.data.store import read_meta
from nmt.data.vocab import check_vocab_layout, check_vocab_sizes, vocab_options
from nmt.errors import NMTError
from nmt.model.checkpoint import RESUME_FILE, read_config
from nmt.train.run_folder import check_init_folder


def resumed_config(out: Path) -> dict[str, Any] | None:
    """The recorded ``config.json`` of a run folder that ``nmt train`` would resume (it
    holds ``resume.pt``), or ``None`` (a new run, or no readable record: the library then
    says what is wrong with the folder)."""
    if not (out / RESUME_FILE).is_file():
        return None
    try:
        config = read_config(out)
    except NMTError:
        return None
    return config if isinstance(config.get("train"), dict) and "model" in config else None


def resolve_options(
    o: dict[str, Any],
    out: Path,
    vocab_folders: list[tuple[Path | None, str]],
    default_preset: str | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of ``nmt train``'s options ``o`` (by parameter name;
    a command that lacks one of them, e.g. ``nmt distill`` without ``--data``, leaves it out),
    for the run folder ``out``: flags over the config file over the preset over the defaults,
    a resumed run's recorded config in place of the preset and defaults, and the initial
    model's shape when fine-tuning.

    Args:
        vocab_folders: ``(folder, option)`` whose vocabulary the model takes (``None`` = not
            given): a ``--vocab-layout`` or size typed must agree with it.
        default_preset: the preset of a new run when neither a flag nor a config file names one
            (``None``: the config default, small).

    Raises:
        ConfigError: as :func:`nmt.config_file.resolve`, and vocabulary options that disagree
            with a folder. (``--src-lang``/``--tgt-lang`` beside ``--pairs`` is the command's
            usage error, checked before.)
    """
    src_lang, tgt_lang, pairs, data = o["src_lang"], o["tgt_lang"], o.get("pairs"), o.get("data")
    init_from = o.get("init_from")
    if data is not None and src_lang is None and tgt_lang is None:
        meta = read_meta(data)  # a data folder knows its languages
        src_lang, tgt_lang = meta["src_lang"], meta["tgt_lang"]
    # Resuming: the run's recorded config stands in for the preset's and the defaults (a
    # flag that disagrees with it is an error in nmt.train.run). Fine-tuning: the initial
    # model's config stands in for the preset's (a shape flag that disagrees with it too).
    recorded = resumed_config(out) if not o["overwrite"] else None
    if init_from is not None:
        check_init_folder(init_from)
    model_base = read_config(init_from)["model"] if init_from is not None else None
    if recorded is not None:
        model_base = recorded["model"]
    preset = o["preset"]
    if preset is None and o["config"] is None and model_base is None:
        preset = default_preset
    sizes = vocab_options(
        o["vocab_layout"], o["vocab_size"], o["src_vocab_size"], o["tgt_vocab_size"]
    )
    typed_size = any(o[k] is not None for k in ("vocab_size", "src_vocab_size", "tgt_vocab_size"))
    for folder, option in vocab_folders:
        if folder is not None:  # its vocabulary is the model's: a layout or size given must agree
            check_vocab_layout(folder, o["vocab_layout"], option)
            if typed_size:  # not the default sizes of --vocab-layout separate
                check_vocab_sizes(folder, sizes, option)
    pair_temperature = o.get("pair_sampling_temperature")
    return resolve(
        preset,
        o["config"],
        {
            **sizes,
            "dropout": o["dropout"],
            "n_encoder_layers": o["encoder_layers"],
            "n_decoder_layers": o["decoder_layers"],
        },
        {
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "pairs": parse_pairs(pairs) if pairs is not None else None,
            "pair_sampling_temperature": pair_temperature,
            **{name: o[name] for name in RECIPE_OPTIONS},
            "compile": o["compile_step"],
        },
        model_base,
        recorded["train"] if recorded is not None else None,
    )


# The options of nmt train that set the TrainConfig field of the same name.
RECIPE_OPTIONS = (
    "batch_tokens", "lr", "warmup_steps", "label_smoothing", "clip_norm", "max_len",
    "lr_schedule", "max_steps", "max_epochs", "max_minutes", "eval_every", "save_every",
    "patience", "patience_metric", "device", "dtype", "seed", "valid_autocast", "tf32",
    "accum", "update_tokens", "tensorboard", "dist_timeout",
)  # fmt: skip
