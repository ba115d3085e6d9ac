"""nmt.config and nmt.config_file: presets, TOML files, precedence and validation messages."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from nmt.config import PRESETS, DecodeConfig, ModelConfig, TrainConfig, preset
from nmt.config_file import from_dict, read_toml, resolve, to_dict
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
        "student": (4, 1, 256, 4, 1024),
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
    # Shapes that once raised TypeError or ValueError from deep inside, and values torch
    # refused only at the first step or validation (after training).
    for text, message in [
        ("model = 5\n", "model must be a table"),
        ("train = [1, 2]\n", "train must be a table"),
        ("preset = 3\n", "preset must be a name"),
        ('[train]\npairs = "de-en"\n', "pairs"),
        ("[train]\nadam_betas = [1.5, 0.9]\n", "adam_betas=[1.5, 0.9] must be two numbers"),
        ("[train]\nweight_decay = -1.0\n", "weight_decay=-1.0 must be a number >= 0"),
        ("[train]\nvalid_beam_size = 0\n", "valid_beam_size=0 must be at least 1"),
        ("[train]\nmax_minutes = -1\n", "max_minutes=-1 must be a number >= 0"),
        ("[model]\nn_encoder_layers = -2\n", "n_encoder_layers=-2 must be positive"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve(None, write_toml(tmp_path, text), {}, {})
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeffpreset = 'tiny'\n".encode())
    assert read_toml(bom) == {"preset": "tiny"}


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
    # Values that once emptied every output, or crashed in CTranslate2, without an error.
    for bad, message in [
        ({"max_len_a": math.inf}, "max_len_a=inf must be in"),
        ({"max_len_a": 1e20}, "max_len_a=1e+20 must be in"),
        ({"max_len_a": math.nan}, "max_len_a=nan must be in"),
        ({"length_penalty": math.nan}, "length_penalty=nan must be a finite number"),
        ({"sampling_topk": 0, "sampling_temperature": math.inf}, "must be positive and finite"),
        ({"sampling_topk": 0, "sampling_temperature": math.nan}, "must be positive and finite"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            DecodeConfig(**bad)


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[model]\nd_model = "512"\n', r"run\.toml \[model\]: d_model = '512' must be a int"),
        ("[train]\nlr = true\n", r"run\.toml \[train\]: lr = True must be a float"),
        ("[train]\naccum = 2.5\n", r"accum = 2\.5 must be a int"),
        ("[model]\npre_norm = 1\n", r"pre_norm = 1 must be a bool"),
        ("[train]\nadam_betas = [0.9]\n", r"adam_betas = \[0\.9\] must be a pair of numbers"),
        ('[train]\nsrc_lang = 7\ntgt_lang = "en"\n', r"src_lang = 7 must be a str"),
    ],
)
def test_toml_values_are_type_checked_and_the_field_named(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve("tiny", write_toml(tmp_path, text), {}, {})


def test_an_int_is_a_valid_float() -> None:
    assert from_dict(TrainConfig, {"max_minutes": 30, "lr": 1}).max_minutes == 30.0


def test_settings_that_used_to_break_training_silently_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"clip_norm=-1.0 must not be negative \(0 = no"):
        TrainConfig(clip_norm=-1.0)
    with pytest.raises(ConfigError, match="keep_checkpoints=0: keep at least 1"):
        TrainConfig(keep_checkpoints=0)
    with pytest.raises(ConfigError, match=r"max_len=1024 does not fit max_positions=1024 .* 1023"):
        resolve("tiny", None, {}, {"max_len": 1024})
    assert resolve("tiny", None, {}, {"max_len": 1023})[1].max_len == 1023


def test_clip_norm_0_means_no_clipping(tiny_corpus, spm_model, tiny_model_config, tmp_path):
    """clip_norm = 0 used to scale every gradient to 0; now it is fairseq's "no clipping":
    one update equals an update with a bound no gradient reaches."""
    from nmt.data.parallel import encode_parallel, read_parallel
    from nmt.data.tokenizer import Tokenizer
    from nmt.train.trainer import Trainer

    tokenizer = Tokenizer(spm_model)
    data = encode_parallel(tokenizer, *read_parallel(tiny_corpus[0], "de", "en"), 200)
    model_cfg = tiny_model_config(dropout=0.0)
    results = []
    for clip in (0.0, 1e9):
        cfg = TrainConfig(clip_norm=clip, dtype="fp32", device="cpu", batch_tokens=1000, lr=1e-3)
        trainer = Trainer(tmp_path, model_cfg, cfg, tokenizer, data, data, ([], []))
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train_step(trainer.collate_step(trainer.epoch_steps(1)[0]))
        after = [p.detach() for p in trainer.model.parameters()]
        results.append(max(float((a - b).abs().max()) for a, b in zip(after, before)))
        if clip == 0.0:
            weights0 = [p.detach().clone() for p in after]
        elif clip == 1e9:
            for a, b in zip(after, weights0):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert results[0] > 1e-4  # the weights moved: the gradient was not zeroed (Adam's
    # step is 0 for a zero gradient)


def test_presets_carry_their_training_recipes_under_the_file_and_the_flags(
    tmp_path: Path,
) -> None:
    _, small = resolve("small", None, {}, {})
    assert small == TrainConfig()  # the Multi30k CPU recipe is the defaults
    _, base = resolve("base", None, {}, {})
    assert (base.lr, base.warmup_steps, base.batch_tokens) == (7e-4, 4000, 4096)
    assert [base.update_accum(n) for n in (1, 2, 4, 8)] == [6, 3, 2, 1]  # ~25k tokens
    assert base.clip_norm == 0.0 and base.lr_schedule == "inverse_sqrt"
    big_model, big = resolve("big", None, {}, {})
    assert (big.lr, big_model.dropout) == (5e-4, 0.3)
    path = write_toml(tmp_path, 'preset = "base"\n[train]\nwarmup_steps = 8000\n')
    _, mixed = resolve(None, path, {}, {"lr": 1e-3})
    assert (mixed.lr, mixed.warmup_steps, mixed.update_accum(1)) == (1e-3, 8000, 6)


def test_update_tokens_sets_accum_per_process_count_and_replaces_a_lower_layers_accum(
    tmp_path: Path,
) -> None:
    """--update-tokens N: max(1, round(N / (world_size × batch_tokens))) batches per process;
    accum and update_tokens given in a higher layer (flag > file > preset) replace the other
    one of the layers below, and both in one layer is an error."""
    cfg = TrainConfig(batch_tokens=4000, update_tokens=32000)
    assert [cfg.update_accum(n) for n in (1, 2, 3, 8, 16, 64)] == [8, 4, 3, 1, 1, 1]
    assert TrainConfig(accum=3).update_accum(8) == 3  # without update_tokens: accum as given
    _, flagged = resolve("base", None, {}, {"accum": 2})
    assert (flagged.update_tokens, flagged.update_accum(4)) == (0, 2)
    path = write_toml(tmp_path, 'preset = "tiny"\n[train]\naccum = 4\n')
    _, by_flag = resolve(None, path, {}, {"update_tokens": 8192})
    assert (by_flag.accum, by_flag.update_accum(2)) == (1, 2)  # the file's accum replaced
    with pytest.raises(ConfigError, match="accum=2 and update_tokens=8192 both set"):
        resolve(None, None, {}, {"accum": 2, "update_tokens": 8192})
    with pytest.raises(ConfigError, match="update_tokens=-1 must not be negative"):
        TrainConfig(update_tokens=-1)
