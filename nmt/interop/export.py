"""Export a model folder to other inference engines: CTranslate2 (Klein et al. 2020).

The export follows CTranslate2's documented route for custom models: fill a
``ctranslate2.specs.TransformerSpec`` with our weights, register the vocabulary, then
``validate()``, ``optimize(quantization=...)`` and ``save()``. Our layout maps one to one:

- fused self-attention ``qkv_proj`` (rows ``[q; k; v]``) → ``self_attention.linear[0]``;
  cross-attention ``q_proj`` → ``attention.linear[0]`` and fused ``kv_proj`` (rows ``[k; v]``)
  → ``attention.linear[1]``; ``out_proj`` → ``linear[-1]``;
- each sub-layer's LayerNorm → that sub-layer's ``layer_norm`` (CTranslate2 applies it before
  the sub-layer when ``pre_norm``, after the residual sum otherwise), the final
  ``encoder_norm``/``decoder_norm`` → ``encoder.layer_norm``/``decoder.layer_norm``;
- the embedding (scaled by ``sqrt(d_model)`` unless ``scale_embeddings`` is off) → both
  embeddings and the output projection (CTranslate2 stores tied copies once, as aliases),
  except that a separate source embedding ``src_embed`` goes to the encoder's,
  whose bias is ``output_bias`` when the model has one (Marian's); ``swish`` → CTranslate2's
  ``Activation.SWISH``;
- positions: CTranslate2's built-in sinusoids start at position 1 and put sin and cos in two
  halves; ours start at 0 with sin on even and cos on odd channels, so our table is written
  into ``position_encodings.encodings`` (either layout,
  :func:`nmt.model.transformer.sinusoidal_positions`);
- the vocabulary is the SentencePiece pieces, by id (an imported Marian model's: ``vocab.json``),
  shared by source and target, or the source's and the target's pieces for a separate
  layout (:mod:`nmt.data.vocab`); the config says: append EOS to the source, start the target
  from the model's ``bos_id`` (``<s>``; ``<pad>`` for Marian models).

The output folder holds CTranslate2's ``model.bin``, ``config.json`` and
``shared_vocabulary.json`` (``source_vocabulary.json`` and ``target_vocabulary.json`` for
separate vocabularies), plus the tokenizer files (``spm.model``; ``spm.src.model`` and
``spm.tgt.model``; or an imported Marian model's ``vocab.json``, ``source.spm`` and
``target.spm``) and ``nmt.json`` (languages, model shape,
quantization) so that ``nmt translate -m OUT`` needs nothing else; and, when the model folder
has a vocabulary shortlist (``nmt shortlist``), CTranslate2's vocabulary map ``vmap.txt``
(:func:`nmt.decode.shortlist.write_vmap`), which ``nmt translate --shortlist`` uses.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, cast

from torch import nn

from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import load_tokenizer, tokenizer_files
from nmt.decode.ct2_folder import EXPORT_INFO, import_ctranslate2
from nmt.decode.shortlist import VMAP_FILE, load_shortlist, shortlist_path, write_vmap
from nmt.errors import CheckpointError, ConfigError
from nmt.fileio import check_output_folder
from nmt.model.checkpoint import FORMAT_VERSION, load_model, write_json
from nmt.model.layers import DecoderLayer, EncoderLayer, FeedForward, MultiHeadAttention
from nmt.model.transformer import Transformer

EXPORT_FORMATS = ("ctranslate2",)
# CTranslate2's weight types (ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES), listed here
# so that the CLI can offer them without importing ctranslate2.
QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


def export_ctranslate2(
    model_dir: str | Path,
    out_dir: str | Path,
    quantization: str | None = None,
    weights: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Convert a model folder into a CTranslate2 model folder.

    The folder is written beside ``out_dir`` under a temporary name and renamed into place
    when complete, so a failed export leaves nothing half-written.

    Args:
        model_dir: a model or run folder (``config.json``, SentencePiece model(s), weights).
        out_dir: the CTranslate2 folder to create.
        quantization: CTranslate2 weight type (one of :data:`QUANTIZATIONS`); ``None`` keeps
            float32.
        weights: a weights file to export instead of ``model.safetensors``.
        force: replace ``out_dir`` if it exists.

    Returns:
        ``out_dir``.

    Raises:
        MissingDependencyError: ctranslate2 is not installed.
        ConfigError: unknown quantization. CheckpointError: unreadable model folder, or
            ``out_dir`` exists and ``force`` is not set.
    """
    ct2 = import_ctranslate2()
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"quantization={quantization!r}: choose one of {', '.join(QUANTIZATIONS)}"
        )
    model_dir, out = Path(model_dir), Path(out_dir)
    check_output_folder(out, model_dir, force)
    model, config = load_model(model_dir, weights=weights)
    tokenizer = load_tokenizer(model_dir)
    spec = build_spec(ct2, model, tokenizer)
    for name in tokenizer_files(model_dir):
        spec.register_file(str(model_dir / name), name)
    spec.validate()
    spec.optimize(quantization=quantization)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"  # mkdir honours the umask
    tmp.mkdir(parents=True)
    try:
        spec.save(str(tmp))
        if shortlist_path(model_dir).is_file():  # CTranslate2 reads it with use_vmap=True
            write_vmap(load_shortlist(model_dir, model.cfg), tokenizer, tmp / VMAP_FILE)
        write_json(tmp / EXPORT_INFO, export_info(ct2, model_dir, config, quantization))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_info(
    ct2: Any, model_dir: Path, config: dict[str, Any], quantization: str | None
) -> dict[str, Any]:
    """What ``nmt.json`` records: format, source folder, languages, model shape, weight type."""
    return {
        "format_version": FORMAT_VERSION,
        "engine": "ctranslate2",
        "ctranslate2_version": ct2.__version__,
        "quantization": quantization or "float32",
        "exported_from": str(model_dir.resolve()),
        "src_lang": config.get("src_lang"),
        "tgt_lang": config.get("tgt_lang"),
        **({"pairs": config["pairs"]} if config.get("pairs") else {}),
        "model": config["model"],
    }


def replace_dir(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``, replacing an existing ``target`` (moved aside
    first, removed last, so a crash leaves one of the two complete)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        target.rename(old / target.name)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_spec(ct2: Any, model: Transformer, tokenizer: Tokenizer) -> Any:
    """A filled ``ctranslate2.specs.TransformerSpec`` for ``model``.

    Raises:
        CheckpointError: the tokenizer's vocabulary does not match the model's.
    """
    cfg = model.cfg
    sizes = (tokenizer.src_vocab_size, tokenizer.vocab_size)
    if sizes != (cfg.src_vocab_size or cfg.vocab_size, cfg.vocab_size):
        raise CheckpointError(
            f"{tokenizer.path}: {sizes[0]} source and {sizes[1]} target pieces, but the model "
            f"has src_vocab_size={cfg.src_vocab_size} (0 = joint), vocab_size={cfg.vocab_size}"
        )
    spec = ct2.specs.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers),
        cfg.n_heads,
        pre_norm=cfg.pre_norm,
        activation=getattr(ct2.specs.Activation, cfg.activation.upper()),  # RELU or SWISH
    )
    set_stack(spec.encoder, model, model.src_embed or model.embed, model.encoder_norm)
    set_stack(spec.decoder, model, model.embed, model.decoder_norm)
    spec.decoder.projection.weight = _array(model.embed.weight)  # tied
    if model.output_bias is not None:
        spec.decoder.projection.bias = _array(model.output_bias)
    for layer_spec, module in zip(spec.encoder.layer, model.encoder_layers):
        enc = cast(EncoderLayer, module)
        set_attention(layer_spec.self_attention, enc.self_attn, enc.attn_block.norm)
        set_ffn(layer_spec.ffn, enc.ffn, enc.ffn_block.norm)
    for layer_spec, module in zip(spec.decoder.layer, model.decoder_layers):
        dec = cast(DecoderLayer, module)
        set_attention(layer_spec.self_attention, dec.self_attn, dec.self_block.norm)
        set_attention(layer_spec.attention, dec.cross_attn, dec.cross_block.norm)
        set_ffn(layer_spec.ffn, dec.ffn, dec.ffn_block.norm)
    vocabulary = tokenizer.vocabulary()  # the target's; saved once when the source's is equal
    spec.register_source_vocabulary(tokenizer.source_vocabulary())
    spec.register_target_vocabulary(vocabulary)
    config = spec.config
    config.unk_token = vocabulary[tokenizer.unk_id]
    config.bos_token = config.decoder_start_token = vocabulary[cfg.bos_id]
    config.eos_token = vocabulary[cfg.eos_id]
    config.add_source_bos, config.add_source_eos = False, True
    config.layer_norm_epsilon = cast(EncoderLayer, model.encoder_layers[0]).attn_block.norm.eps
    return spec


def set_stack(spec: Any, model: Transformer, embed: nn.Embedding, final_norm: nn.Module) -> None:
    """Embedding, scale, position table and final LayerNorm of an encoder or decoder spec."""
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = _array(embed.weight)
    spec.scale_embeddings = model.cfg.scale_embeddings  # by sqrt(d_model), as embed_tokens
    spec.position_encodings.encodings = _array(model.positions)  # (max_positions, d_model)
    if isinstance(final_norm, nn.LayerNorm):  # pre-norm only
        set_layer_norm(spec.layer_norm, final_norm)


def set_attention(spec: Any, attn: MultiHeadAttention, norm: nn.LayerNorm) -> None:
    """One attention sub-layer: fused projections as they are, then ``out_proj``."""
    set_layer_norm(spec.layer_norm, norm)
    projections = [attn.q_proj, attn.kv_proj] if attn.cross else [attn.qkv_proj]
    for linear_spec, linear in zip(spec.linear, [*projections, attn.out_proj]):
        set_linear(linear_spec, linear)


def set_ffn(spec: Any, ffn: FeedForward, norm: nn.LayerNorm) -> None:
    """The feed-forward sub-layer ``fc2(relu(fc1(x)))``."""
    set_layer_norm(spec.layer_norm, norm)
    set_linear(spec.linear_0, ffn.fc1)
    set_linear(spec.linear_1, ffn.fc2)


def set_linear(spec: Any, linear: nn.Linear) -> None:
    """``weight`` ``(out, in)`` and ``bias`` ``(out,)``, as torch stores them."""
    spec.weight = _array(linear.weight)
    if linear.bias is not None:
        spec.bias = _array(linear.bias)


def set_layer_norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _array(tensor: Any) -> Any:
    """A float32 numpy copy of a parameter or buffer."""
    return tensor.detach().float().cpu().numpy().copy()
