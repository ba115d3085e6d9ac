"""nmt.config: presets, TOML files, precedence and validation messages."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from nmt.config import (
    PRESETS,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    preset,
    read_toml,
    resolve,
    to_dict,
)
from nmt.errors import ConfigError


def names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        preset("huge")
    message = str(info.value)
    assert "'huge'" in message
    for name in ("tiny", "small", "base", "big"):
        assert name in message
    with pytest.raises(ConfigError, match="tiny, small, base, big"):
        resolve("huge", None, {}, {})


def test_presets_have_the_documented_shapes() -> None:
    """The shapes the README lists, each a valid ModelConfig (construction validates)."""
    documented = {  # (n_encoder_layers, n_decoder_layers, d_model, n_heads, ffn_dim)
        "tiny": (2, 2, 64, 4, 256),
        "small": (3, 3, 256, 4, 1024),
        "base": (6, 6, 512, 8, 2048),
        "big": (6, 6, 1024, 16, 4096),
    }
    assert list(PRESETS) == list(documented)
    for name, shape in documented.items():
        c = ModelConfig(**preset(name))
        assert (c.n_encoder_layers, c.n_decoder_layers, c.d_model, c.n_heads, c.ffn_dim) == shape
    copy = preset("tiny")
    copy["d_model"] = 8  # a copy: callers may update it
    assert PRESETS["tiny"]["d_model"] == 64


@pytest.mark.parametrize(
    ("table", "cls"), [("model", ModelConfig), ("train", TrainConfig)], ids=["model", "train"]
)
def test_unknown_key_in_a_table_lists_the_valid_keys(tmp_path: Path, table: str, cls: type) -> None:
    path = write_toml(tmp_path, f"[{table}]\nd_modle = 64\nwarmup = 10\n")
    with pytest.raises(ConfigError) as info:
        resolve(None, path, {}, {})
    message = str(info.value)
    assert str(path) in message and f"[{table}]" in message
    assert "unknown key(s) d_modle, warmup" in message
    valid = message.split("valid keys:")[1]
    assert [name.strip() for name in valid.split(",")] == sorted(names(cls))


def test_unknown_top_level_key_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "tiny"\n[modle]\nd_model = 64\n')
    with pytest.raises(ConfigError) as info:
        read_toml(path)
    message = str(info.value)
    assert str(path) in message and "modle" in message
    assert "valid keys: model, preset, train" in message


def test_unknown_flag_key_is_rejected_too() -> None:
    with pytest.raises(ConfigError, match="unknown key.*nope.*valid keys: .*batch_tokens"):
        resolve("tiny", None, {}, {"nope": 1})


def test_missing_or_malformed_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(write_toml(tmp_path, "[model\nd_model = 64\n"))


def test_precedence_flag_over_file_over_preset_over_default(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'preset = "base"\n'
        "[model]\nd_model = 128\nffn_dim = 300\n"
        "[train]\nlr = 1e-3\nwarmup_steps = 10\n",
    )
    model, train = resolve(
        "tiny", path, {"ffn_dim": 200, "dropout": None}, {"lr": 5e-4, "seed": None}
    )
    assert model.ffn_dim == 200  # flag beats file
    assert model.d_model == 128  # file beats preset
    assert model.n_encoder_layers == PRESETS["tiny"]["n_encoder_layers"]  # preset flag beats file
    assert model.dropout == ModelConfig.dropout  # None = not given: default
    assert train.lr == 5e-4 and train.warmup_steps == 10
    assert train.seed == TrainConfig.seed

    model, _ = resolve(None, path, {}, {})  # the file's preset applies when no flag names one
    assert model.n_encoder_layers == PRESETS["base"]["n_encoder_layers"]
    assert model.d_model == 128
    model, train = resolve(None, None, {}, {})
    assert model == ModelConfig(**PRESETS["small"])  # the default preset
    assert train == TrainConfig()


def test_validation_names_the_fields_and_values() -> None:
    with pytest.raises(ConfigError, match=r"d_model=500 must be divisible by n_heads=8"):
        ModelConfig(d_model=500, n_heads=8)
    with pytest.raises(ConfigError, match=r"dropout=1\.5 must be in \[0, 1\)"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="dtype='fp8': choose one of auto, fp32, bf16, fp16"):
        TrainConfig(dtype="fp8")
    with pytest.raises(ConfigError, match="device='tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="src_lang and tgt_lang are both 'de'"):
        TrainConfig(tgt_lang="de")
    with pytest.raises(ConfigError, match="nbest=3 must be between 1 and beam_size=2"):
        DecodeConfig(beam_size=2, nbest=3)


def test_validation_through_a_file_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[model]\nd_model = 100\nn_heads = 3\n")
    with pytest.raises(ConfigError, match="d_model=100 must be divisible by n_heads=3"):
        resolve("tiny", path, {}, {})


def test_from_dict_round_trip_and_types() -> None:
    train = TrainConfig(adam_betas=(0.9, 0.99), lr=1e-4)
    # JSON/TOML turn tuples into lists: from_dict turns them back.
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(train).items()}
    assert from_dict(TrainConfig, values) == train
    with pytest.raises(ConfigError, match="where"):
        from_dict(ModelConfig, {"d_model": "64"}, "where")  # a string where a number belongs
