"""Configs from dicts and TOML files, and the precedence when training: command-line flag >
config file > preset (its model shape and its training recipe,
:data:`nmt.config.PRESET_RECIPES`) > dataclass default. Loading rejects unknown keys and
values of the wrong type, naming them and the valid ones.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from nmt.config import PRESET_RECIPES, ModelConfig, TrainConfig, preset
from nmt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")


# The field types of the config dataclasses (annotations are strings under
# ``from __future__ import annotations``) and the JSON/TOML values each accepts.
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "tuple[float, float]": (list, tuple),
    "tuple[str, ...]": (list, tuple),
}


def _check_type(name: str, annotation: str, value: Any, where: str) -> None:
    """Raise a ConfigError naming the field if ``value`` is not of the field's type."""
    accepted = _ACCEPTS.get(annotation)
    if accepted is None:
        return
    wrong = not isinstance(value, accepted) or (annotation != "bool" and isinstance(value, bool))
    if annotation == "tuple[float, float]" and not wrong:
        wrong = len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value
        )
    if annotation == "tuple[str, ...]" and not wrong:
        wrong = not all(isinstance(v, str) for v in value)
    if wrong:
        expected = "a pair of numbers" if annotation.startswith("tuple") else f"a {annotation}"
        raise ConfigError(f"{where}: {name} = {value!r} must be {expected}")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass ``cls`` from ``values``, rejecting unknown keys and values of the
    wrong type (``"8"`` for an int, ``true`` for a number; an int is a valid float).

    Raises:
        ConfigError: a key is not a field of ``cls`` (the message lists the valid names), a
            value of the wrong type (the field named), or a value that fails validation.
    """
    types = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(types))}"
        )
    for name, value in values.items():
        _check_type(name, types[name], value, where)
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**clean)
    except TypeError as exc:  # wrong value type caught by a comparison in __post_init__
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a plain dict (JSON/TOML friendly)."""
    return dataclasses.asdict(config)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a run config file: optional ``preset = "..."``, ``[model]`` and ``[train]`` tables.

    Raises:
        ConfigError: the file is missing, is not valid TOML, or has unknown top-level keys.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is allowed
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"preset", "model", "train"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: model, preset, train"
        )
    for table in ("model", "train"):
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(f"{path}: {table} must be a table ([{table}] and its keys)")
    if not isinstance(data.get("preset", ""), str):
        raise ConfigError(f'{path}: preset must be a name, e.g. preset = "small"')
    return data


def resolve(
    preset_name: str | None,
    config_file: str | Path | None,
    model_overrides: dict[str, Any],
    train_overrides: dict[str, Any],
    model_base: dict[str, Any] | None = None,
    train_base: dict[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Merge preset, config file and flags (flags win) into validated configs.

    ``accum`` and ``update_tokens`` both set the size of an update: one given in a layer
    (flags over file over preset) replaces the other of the layers below.

    ``None`` values in the override dicts mean "not given" and are ignored. ``model_base``
    (fine-tuning: the initial model's config; resuming: the run's) replaces the preset's
    model values when no preset is named, by flag or by the file. ``train_base`` (resuming:
    the run's recorded recipe) replaces the preset's recipe and the defaults, so that a
    setting not given again keeps the run's value.

    Raises:
        ConfigError: unknown preset or key, an invalid value, or ``accum`` and
            ``update_tokens`` given together in one layer.
    """
    file_data = read_toml(config_file) if config_file else {}
    name = preset_name or file_data.get("preset") or "small"
    named = bool(preset_name or file_data.get("preset"))
    model_values = dict(model_base) if model_base is not None and not named else preset(name)
    model_values.update(file_data.get("model", {}))
    model_values.update({k: v for k, v in model_overrides.items() if v is not None})
    train_values = dict(PRESET_RECIPES[name]) if train_base is None else dict(train_base)
    for layer in (
        file_data.get("train", {}),
        {k: v for k, v in train_overrides.items() if v is not None},
    ):
        if layer.get("update_tokens") and "accum" in layer:
            raise ConfigError(
                f"accum={layer['accum']} and update_tokens={layer['update_tokens']} both set "
                "the size of an update: give one of them (--accum or --update-tokens)"
            )
        train_values.update(layer)
        # accum and update_tokens say one thing (the update's size): the higher layer's wins.
        if "accum" in layer and "update_tokens" not in layer:
            train_values.pop("update_tokens", None)
        if "update_tokens" in layer and "accum" not in layer:
            train_values.pop("accum", None)
    where = str(config_file) if config_file else "config"
    model_cfg = from_dict(ModelConfig, model_values, f"{where} [model]")
    train_cfg = from_dict(TrainConfig, train_values, f"{where} [train]")
    check_fits(model_cfg, train_cfg)
    return model_cfg, train_cfg


def check_fits(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Check the settings that involve both configs.

    Raises:
        ConfigError: ``max_len`` above ``max_positions - 1``: a sentence of ``max_len``
            tokens plus its BOS or EOS would not fit the position table (it used to crash
            in the middle of training); special ids other than nmt's SentencePiece ids
            (pad 0, BOS 2, EOS 3: training encodes with a joint SentencePiece model).
    """
    for name, nmt_id in (("pad_id", 0), ("bos_id", 2), ("eos_id", 3)):
        if getattr(model_cfg, name) != nmt_id:
            raise ConfigError(
                f"{name}={getattr(model_cfg, name)}: training uses nmt's SentencePiece ids "
                f"({name}={nmt_id}); leave {name} at its default"
            )
    if train_cfg.max_len > model_cfg.max_positions - 1:
        raise ConfigError(
            f"max_len={train_cfg.max_len} does not fit max_positions={model_cfg.max_positions}"
            f" (BOS/EOS take a position, so at most {model_cfg.max_positions - 1}): lower "
            "--max-len or raise max_positions"
        )
