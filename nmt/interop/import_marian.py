"""Import a Hugging Face ``MarianMTModel`` folder (an OPUS-MT model) as an nmt model folder.

OPUS-MT's models (Tiedemann & Thottingal 2020) are Marian Transformers (Junczys-Dowmunt et al.
2018) that Hugging Face publishes as ``MarianMTModel`` folders. Their architecture is nmt's
with options: post-norm layers without a final LayerNorm (``pre_norm = false``), swish in the
feed-forward layers, a bias on the output logits (``final_logits_bias``), sinusoids laid out as
``[sin | cos]`` halves from position 0, embeddings scaled by ``sqrt(d_model)`` when
``scale_embedding`` is set, one embedding shared by encoder, decoder and output layer, and a
decoder that starts from ``<pad>``. The vocabulary is ``vocab.json`` over ``source.spm`` and
``target.spm`` (:mod:`nmt.data.marian_vocab`).

The folder read: ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``, loaded with
``weights_only=True``), ``vocab.json``, ``source.spm``, ``target.spm`` and, if present,
``tokenizer_config.json``; or a Hugging Face hub cache folder
(``models--Helsinki-NLP--opus-mt-de-en``, whose ``snapshots/<hash>/`` holds them). The folder
written: ``config.json`` (``model`` with the options above), ``model.safetensors`` and the
three tokenizer files; ``transformers`` is not needed to read or write it.

Weight names map one to one (fairseq's names, as nmt's): per layer, ``q_proj``/``k_proj``/
``v_proj`` are fused into ``qkv_proj`` (self-attention) or ``q_proj`` + ``kv_proj``
(cross-attention), ``self_attn_layer_norm``/``encoder_attn_layer_norm``/``final_layer_norm``
become the norms of the self-attention, cross-attention and feed-forward blocks.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from nmt.config import ModelConfig
from nmt.config_file import to_dict
from nmt.data.marian_vocab import (
    EOS_PIECE,
    MARIAN_FILES,
    PAD_PIECE,
    UNK_PIECE,
    VOCAB_FILE,
    MarianVocabulary,
    read_vocab,
)
from nmt.errors import CheckpointError, ConfigError
from nmt.fileio import check_output_folder
from nmt.interop.export import replace_dir
from nmt.model import checkpoint as ckpt
from nmt.model.transformer import Transformer

HF_CONFIG, TOKENIZER_CONFIG = "config.json", "tokenizer_config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu"}
# Fields of older (BART-derived) Marian configs, with the only value Marian models have.
FIXED_FIELDS = {
    "normalize_before": False,
    "normalize_embedding": False,
    "add_final_layer_norm": False,
    "static_position_embeddings": True,
    "share_encoder_decoder_embeddings": True,
    "tie_word_embeddings": True,
}


def resolve_hf_dir(path: str | Path) -> Path:
    """The folder holding the model files: ``path`` itself, or, for a hub cache folder
    (``models--ORG--NAME``), the snapshot ``refs/main`` names (or its only snapshot).

    Raises:
        CheckpointError: no such folder, or a cache folder with no snapshot or several and no
            ``refs/main``.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such folder")
    snapshots = path / "snapshots"
    if (path / HF_CONFIG).is_file() or not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text(encoding="utf-8").strip()
        if chosen.is_dir():
            return chosen
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise CheckpointError(
            f"{snapshots}: {len(found)} snapshots and no readable refs/main; pass the "
            "snapshot folder itself"
        )
    return found[0]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        CheckpointError: missing, not JSON, or not an object.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is this a Hugging Face MarianMTModel folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def model_config(hf: dict[str, Any], where: Path, vocab: list[str]) -> ModelConfig:
    """The :class:`ModelConfig` of a Marian ``config.json`` (read as ``hf``).

    Raises:
        ConfigError: another architecture, or a setting nmt cannot express (the field named).
    """
    if hf.get("model_type") != "marian":
        raise ConfigError(
            f"{where}: model_type={hf.get('model_type')!r}; only Marian models "
            "(model_type 'marian', MarianMTModel) can be imported"
        )

    def field(name: str, default: Any = None) -> Any:
        if name not in hf and default is None:
            raise ConfigError(f"{where}: no {name!r} field")
        return hf.get(name, default)

    for name, value in FIXED_FIELDS.items():
        if field(name, value) != value:
            raise ConfigError(f"{where}: {name}={hf[name]!r} is not supported (only {value!r})")
    for enc, dec in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if field(enc) != field(dec):
            raise ConfigError(f"{where}: {enc}={hf[enc]} and {dec}={hf[dec]} differ; not supported")
    activation = field("activation_function")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"{where}: activation_function={activation!r} is not supported; "
            f"choose one of {', '.join(ACTIVATIONS)}"
        )
    vocab_size = field("vocab_size")
    if field("decoder_vocab_size", vocab_size) != vocab_size or vocab_size != len(vocab):
        raise ConfigError(
            f"{where}: vocab_size={vocab_size}, decoder_vocab_size="
            f"{hf.get('decoder_vocab_size')} and the {len(vocab)} entries of {VOCAB_FILE} "
            "must all agree"
        )
    pad, eos = field("pad_token_id"), field("eos_token_id")
    if field("decoder_start_token_id", pad) != pad:
        raise ConfigError(
            f"{where}: decoder_start_token_id={hf['decoder_start_token_id']} is not "
            f"pad_token_id={pad}; only decoders that start from <pad> are supported"
        )
    for name, piece, value in (("pad_token_id", PAD_PIECE, pad), ("eos_token_id", EOS_PIECE, eos)):
        if not 0 <= value < len(vocab) or vocab[value] != piece:
            raise ConfigError(f"{where}: {name}={value} is not the id of {piece!r} in {VOCAB_FILE}")
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=field("d_model"),
        n_heads=field("encoder_attention_heads"),
        ffn_dim=field("encoder_ffn_dim"),
        n_encoder_layers=field("encoder_layers"),
        n_decoder_layers=field("decoder_layers"),
        dropout=float(field("dropout", 0.1)),
        attention_dropout=float(field("attention_dropout", 0.0)),
        activation_dropout=float(field("activation_dropout", 0.0)),
        pre_norm=False,
        max_positions=field("max_position_embeddings"),
        activation=ACTIVATIONS[activation],
        output_bias=True,
        position_layout="halves",
        scale_embeddings=bool(field("scale_embedding", False)),
        pad_id=pad,
        bos_id=pad,
        eos_id=eos,
    )


def check_tokenizer_config(path: Path) -> dict[str, Any]:
    """The optional ``tokenizer_config.json``: one joint vocabulary, Marian's special pieces.

    Raises:
        ConfigError: ``separate_vocabs`` is true, or a special token other than Marian's.
    """
    if not path.is_file():
        return {}
    config = read_json(path)
    if config.get("separate_vocabs"):
        raise ConfigError(f"{path}: separate_vocabs=true (two vocab files) is not supported")
    specials = (("eos_token", EOS_PIECE), ("unk_token", UNK_PIECE), ("pad_token", PAD_PIECE))
    for name, piece in specials:
        value = config.get(name, piece)
        value = value.get("content", piece) if isinstance(value, dict) else value
        if value != piece:
            raise ConfigError(f"{path}: {name}={value!r}; only {piece!r} is supported")
    return config


LANG = r"([A-Za-z]+(?:_[A-Za-z]+)?)"  # de, ROMANCE, zh_CN
OPUS_MT_NAME = re.compile(rf"opus-mt-(?:tc-[a-z]+-)?{LANG}-{LANG}$")


def model_langs(tok_config: dict[str, Any], *names: str | None) -> tuple[str | None, str | None]:
    """The source and target language of an imported model: ``tokenizer_config.json``'s
    ``source_lang`` / ``target_lang``, else those of an OPUS-MT name among ``names``
    (``Helsinki-NLP/opus-mt-de-en``, a hub cache folder ``models--Helsinki-NLP--opus-mt-de-en``);
    ``None`` when neither says."""
    found = [OPUS_MT_NAME.search(n) for n in names if n]
    match = next((m for m in found if m is not None), None)
    src, tgt = tok_config.get("source_lang"), tok_config.get("target_lang")
    return src or (match and match.group(1)), tgt or (match and match.group(2))


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, else of ``pytorch_model.bin`` (loaded with
    ``weights_only=True``: no code runs), with a ``model.`` prefix removed.

    Raises:
        CheckpointError: neither file, or an unreadable one.
    """
    path = next((folder / n for n in HF_WEIGHTS if (folder / n).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder}: neither {' nor '.join(HF_WEIGHTS)} found")
    if path.suffix == ".safetensors":
        state = ckpt.load_weights(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise CheckpointError(f"{path}: cannot load ({exc})") from None
    return {k.removeprefix("model."): v.float() for k, v in state.items()}


def convert_weights(
    hf: dict[str, torch.Tensor], cfg: ModelConfig, where: Path
) -> dict[str, torch.Tensor]:
    """nmt's state dict from Hugging Face Marian tensor names (without ``model.``).

    Raises:
        CheckpointError: a tensor is missing, an embedding copy is not tied to the shared one,
            or a tensor is left over (an architecture nmt does not have).
    """
    left = dict(hf)

    def take(name: str) -> torch.Tensor:
        if name not in left:
            raise CheckpointError(f"{where}: tensor {name!r} not found")
        return left.pop(name)

    embed = left.pop("shared.weight", None)
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        copy = left.pop(name, None)
        if embed is None:
            embed = copy
        elif copy is not None and not torch.equal(copy, embed):
            raise CheckpointError(f"{where}: {name} differs from the shared embedding (untied)")
    if embed is None:
        raise CheckpointError(f"{where}: no embedding (shared.weight) found")
    bias = left.pop("final_logits_bias", torch.zeros(1, cfg.vocab_size))
    state = {"embed.weight": embed, "output_bias": bias.reshape(-1)}
    for stack, n_layers in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        left.pop(f"{stack}.embed_positions.weight", None)  # the sinusoids, rebuilt by nmt
        for i in range(n_layers):
            hf_layer, layer = f"{stack}.layers.{i}", f"{stack}_layers.{i}"
            attentions = [("self_attn", "self_attn", False)]
            if stack == "decoder":
                attentions.append(("encoder_attn", "cross_attn", True))
            for hf_name, name, cross in attentions:
                q, k, v = (f"{hf_layer}.{hf_name}.{p}_proj" for p in "qkv")
                for kind in ("weight", "bias"):
                    parts = [take(f"{p}.{kind}") for p in (q, k, v)]
                    if cross:
                        state[f"{layer}.{name}.q_proj.{kind}"] = parts[0]
                        state[f"{layer}.{name}.kv_proj.{kind}"] = torch.cat(parts[1:])
                    else:
                        state[f"{layer}.{name}.qkv_proj.{kind}"] = torch.cat(parts)
                    state[f"{layer}.{name}.out_proj.{kind}"] = take(
                        f"{hf_layer}.{hf_name}.out_proj.{kind}"
                    )
            norms = {"self_attn_layer_norm": "attn_block", "final_layer_norm": "ffn_block"}
            if stack == "decoder":
                norms = {
                    "self_attn_layer_norm": "self_block",
                    "encoder_attn_layer_norm": "cross_block",
                    "final_layer_norm": "ffn_block",
                }
            for kind in ("weight", "bias"):
                for hf_name, block in norms.items():
                    state[f"{layer}.{block}.norm.{kind}"] = take(f"{hf_layer}.{hf_name}.{kind}")
                for fc in ("fc1", "fc2"):
                    state[f"{layer}.ffn.{fc}.{kind}"] = take(f"{hf_layer}.{fc}.{kind}")
    if left:
        raise CheckpointError(
            f"{where}: tensors nmt's Marian model has no place for: {', '.join(sorted(left)[:5])}"
        )
    return state


def import_marian(hf_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Convert a Hugging Face ``MarianMTModel`` folder into an nmt model folder.

    The folder is written under a temporary name beside ``out_dir`` and renamed into place
    when complete (and loaded once, to check it), so a failed import leaves nothing behind.

    Args:
        hf_dir: the Hugging Face folder, or a hub cache folder ``models--ORG--NAME``.
        out_dir: the nmt model folder to create.
        force: replace ``out_dir`` if it exists.

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: a file is missing or unreadable (named), or ``out_dir`` exists and
            ``force`` is not set. ConfigError: an architecture or setting nmt does not
            support (the file and field named).
    """
    src, out = resolve_hf_dir(hf_dir), Path(out_dir)
    check_output_folder(out, src, force)
    for name in MARIAN_FILES:
        if not (src / name).is_file():
            raise CheckpointError(f"{src / name}: not found (a Marian model needs {name})")
    vocab = read_vocab(src / VOCAB_FILE)
    hf_config = read_json(src / HF_CONFIG)
    tok_config = check_tokenizer_config(src / TOKENIZER_CONFIG)
    cfg = model_config(hf_config, src / HF_CONFIG, vocab)
    state = convert_weights(read_hf_weights(src), cfg, src)
    model = Transformer(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k, v in state.items() if tuple(v.shape) != shapes.get(k))
    if wrong:
        raise CheckpointError(f"{src}: tensors of other shapes than config.json says: {wrong[:5]}")
    model.load_state_dict(state)
    name = hf_config.get("_name_or_path")
    langs = model_langs(tok_config, name if isinstance(name, str) else None, Path(hf_dir).name)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        for name in MARIAN_FILES:
            shutil.copyfile(src / name, tmp / name)
        ckpt.save_weights(tmp / ckpt.WEIGHTS_FILE, model)
        ckpt.write_json(
            tmp / ckpt.CONFIG_FILE,
            {
                "format_version": ckpt.FORMAT_VERSION,
                "src_lang": langs[0],
                "tgt_lang": langs[1],
                "model": to_dict(cfg),
                "imported_from": {
                    "format": "marian",
                    "path": str(src.resolve()),
                    "name": hf_config.get("_name_or_path"),
                },
            },
        )
        ckpt.load_model(tmp)
        MarianVocabulary(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
