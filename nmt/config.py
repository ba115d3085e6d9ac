"""Typed, frozen configuration: the model's shape, the training recipe, the decoding settings.

Defaults live here and nowhere else. Values are validated when a config is built; building
one from a dict or a TOML file, and the precedence of flags, file and preset, are
:mod:`nmt.config_file`'s. :class:`~nmt.decode_config.DecodeConfig` is defined in
:mod:`nmt.decode_config` and imported from here with the others (``from nmt.config import
DecodeConfig``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nmt.decode_config import DecodeConfig
from nmt.errors import ConfigError

__all__ = [
    "ACTIVATIONS", "MIN_VOCAB_SIZE", "PATIENCE_METRICS", "POSITION_LAYOUTS", "PRESETS",
    "PRESET_RECIPES", "DecodeConfig", "ModelConfig", "TrainConfig", "check_vocab_floor",
    "preset",
]  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the encoder-decoder Transformer (Vaswani et al. 2017).

    Attributes:
        vocab_size: the joint SentencePiece vocabulary's size (pieces), shared by source and
            target; with ``src_vocab_size`` set, the target vocabulary's size.
        src_vocab_size: 0 (the ``joint`` layout): source, target and output projection share
            one embedding (Press & Wolf 2017). Otherwise the ``separate`` layout: the
            source vocabulary's size, with its own source embedding, the target embedding
            still tied to the output projection (:mod:`nmt.data.vocab`).
        d_model: width of every residual stream.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        ffn_dim: hidden width of the position-wise feed-forward layers.
        n_encoder_layers / n_decoder_layers: depth of each stack.
        dropout: dropout on embeddings, residual branches and the FFN hidden layer.
        attention_dropout: dropout on attention weights.
        activation_dropout: dropout on the FFN hidden layer (0 by default, as in fairseq).
        pre_norm: LayerNorm before each sub-layer (Xiong et al. 2020) instead of after it.
        max_positions: longest sequence (tokens) the sinusoidal table covers.
        activation: the feed-forward non-linearity: ``relu`` (Vaswani et al. 2017) or
            ``swish`` (SiLU, ``x * sigmoid(x)``; Ramachandran et al. 2017), which OPUS-MT's
            Marian models use (Junczys-Dowmunt et al. 2018; Tiedemann & Thottingal 2020).
        output_bias: add a learned bias ``(vocab_size,)`` to the output logits (Marian's
            output layer bias, Hugging Face's ``final_logits_bias``).
        position_layout: where the sinusoids sit in the position table (positions count from
            0 either way): ``interleaved`` puts sin on even and cos on odd channels (Vaswani et
            al. 2017, §3.5); ``halves`` puts all sines in the first half and all cosines in the
            second (Marian's layout).
        scale_embeddings: multiply token embeddings by ``sqrt(d_model)`` before adding the
            positions (Vaswani et al. 2017, §3.4); Marian models carry it as
            ``scale_embedding``.
        pad_id / bos_id / eos_id: the special ids of the model's vocabulary. ``bos_id`` is the
            token the decoder starts from; nmt's own SentencePiece models use pad 0, BOS 2,
            EOS 3 (:mod:`nmt.data.tokenizer`), imported Marian models pad = the last id, EOS 0, and
            start the decoder from pad (``bos_id = pad_id``).
    """

    vocab_size: int = 8000
    src_vocab_size: int = 0
    d_model: int = 256
    n_heads: int = 4
    ffn_dim: int = 1024
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_norm: bool = True
    max_positions: int = 1024
    activation: str = "relu"
    output_bias: bool = False
    position_layout: str = "interleaved"
    scale_embeddings: bool = True
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_heads", "ffn_dim", "max_positions")
        for name in (*positive, "n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check_vocab_floor(self.vocab_size, self.src_vocab_size)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        for name, valid in (("activation", ACTIVATIONS), ("position_layout", POSITION_LAYOUTS)):
            if getattr(self, name) not in valid:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r}: choose one of {', '.join(valid)}"
                )
        for name in ("pad_id", "eos_id"):  # the source side's special ids too
            if self.src_vocab_size and getattr(self, name) >= self.src_vocab_size:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be an id of the source vocabulary "
                    f"[0, src_vocab_size={self.src_vocab_size})"
                )
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be an id of the vocabulary "
                    f"[0, vocab_size={self.vocab_size})"
                )
        if self.eos_id in (self.pad_id, self.bos_id):
            raise ConfigError(f"eos_id={self.eos_id} must differ from pad_id and bos_id")

    @property
    def vocab_layout(self) -> str:
        """``joint`` or ``separate`` (see ``src_vocab_size``)."""
        return "separate" if self.src_vocab_size else "joint"


ACTIVATIONS = ("relu", "swish")
POSITION_LAYOUTS = ("interleaved", "halves")

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_heads=4, ffn_dim=256, n_encoder_layers=2, n_decoder_layers=2),
    "small": dict(d_model=256, n_heads=4, ffn_dim=1024, n_encoder_layers=3, n_decoder_layers=3),
    "base": dict(d_model=512, n_heads=8, ffn_dim=2048, n_encoder_layers=6, n_decoder_layers=6),
    "big": dict(
        d_model=1024,
        n_heads=16,
        ffn_dim=4096,
        n_encoder_layers=6,
        n_decoder_layers=6,
        dropout=0.3,
    ),
    # A distillation student (nmt distill): small's width with a deeper encoder and a one-layer
    # decoder (Kasai et al. 2021, "Deep Encoder, Shallow Decoder"); the decoder runs once per
    # output token, the encoder once per sentence. 4+1 was the one shape measured at 1.4× the
    # small model's speed both greedy and at beam 5 (6+1: only at beam 5); docs/benchmarks.md.
    "student": dict(d_model=256, n_heads=4, ffn_dim=1024, n_encoder_layers=4, n_decoder_layers=1),
}

# The training recipe each preset carries (under the config file and the flags). `small` is
# the Multi30k CPU recipe (the TrainConfig defaults). `base` and `big` carry the GPU recipes
# of fairseq's WMT'14 en-de Transformers (Vaswani et al. 2017; Ott et al. 2018, "Scaling
# Neural Machine Translation"): ~4k tokens per batch and ~25k tokens per update
# (update_tokens: accum 6 on one GPU, 3 on two, 1 on eight), inverse square root schedule
# with 4,000 warm-up updates, peak lr 7e-4 (base) / 5e-4 (big), label smoothing 0.1, no
# gradient clipping.
PRESET_RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {},
    "base": dict(
        batch_tokens=4096, update_tokens=24576, lr=7e-4, warmup_steps=4000, clip_norm=0.0,
        eval_every=2000, save_every=1000, max_len=256,
    ),
    "big": dict(
        batch_tokens=4096, update_tokens=24576, lr=5e-4, warmup_steps=4000, clip_norm=0.0,
        eval_every=2000, save_every=1000, max_len=256,
    ),
    "student": {},
}  # fmt: skip


PATIENCE_METRICS = ("bleu", "chrf", "loss")  # fairseq's --best-checkpoint-metric


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe.

    Attributes:
        src_lang / tgt_lang: language codes, the suffixes of the corpus files.
        pairs: a multilingual model's language pairs (``("de-en", "fr-en")``), instead of
            ``src_lang``/``tgt_lang``: a target tag leads each source
            (:mod:`nmt.data.multilingual`).
        pair_sampling_temperature: T of the pairs' sampling probabilities
            ``p_i ∝ (n_i / N)^(1/T)`` (Arivazhagan et al. 2019); 1 = as the data.
        batch_tokens: padded tokens per batch, counted as sentences × max(src_len, tgt_len).
        lr: peak learning rate, reached at the end of the warm-up.
        warmup_steps: linear warm-up length (updates).
        lr_schedule: after the warm-up, ``inverse_sqrt`` decays with 1/sqrt(step) (Vaswani
            et al. 2017, eq. 3); ``linear`` decays linearly to 0 at the end of the budget
            (Li et al. 2020): ``max_steps``, else ``max_epochs`` × updates per epoch, else the
            updates that ``max_minutes`` allows, extrapolated from the time per update
            (validation included) at every validation after the warm-up, the decay
            continuing from the current rate towards the new end, and kept in ``resume.pt``.
            With a planned end, the kept step checkpoints are spread over its last 20%
            (:data:`nmt.train.schedule.AVERAGE_SHARE`), ready for ``nmt average``.
        label_smoothing: epsilon of label-smoothed cross-entropy (Szegedy et al. 2016).
        clip_norm: the gradient's L2 norm is clipped to this (Pascanu et al. 2013); 0 = no
            clipping (as in fairseq and Marian).
        max_steps / max_epochs / max_minutes: whichever comes first ends training (0 = no limit).
            ``max_minutes`` is wall-clock time from the start of the training loop (waits for
            batches, validation, checkpoints and skipped updates included), summed over
            resumes.
        eval_every: validate every this many updates (and at the end).
        patience: stop after this many validations without a better ``patience_metric``
            (0 = never).
        patience_metric: what early stopping and the choice of ``model.safetensors`` follow:
            validation ``bleu`` (default), ``chrf`` or teacher-forced ``loss`` (as fairseq's
            ``--best-checkpoint-metric``); ``loss`` suits short runs whose BLEU is still 0.
        valid_beam_size: beam used for validation BLEU (1 = greedy).
        max_len: training pairs longer than this (tokens, either side) are skipped.
        keep_checkpoints: how many step checkpoints to keep for averaging.
        save_every: write a resume checkpoint every this many updates, and a step
            checkpoint too, except under a linear schedule with a known end (see
            ``lr_schedule``: its step checkpoints are spread over the end of the budget).
        dtype: ``fp32``, ``bf16`` autocast, or ``fp16`` autocast with a gradient scaler;
            ``auto`` = bf16 where it is native: on CPUs whose flags include AVX512-BF16 or AMX
            (and oneDNN is not capped below them by ``ONEDNN_MAX_CPU_ISA``), and on GPUs where
            ``torch.cuda.is_bf16_supported(including_emulation=False)``; fp16 with the scaler
            on other GPUs; fp32 on other CPUs
            (:func:`nmt.device.cpu_has_native_bf16`).
        valid_autocast: run validation (the loss and the search for BLEU) under the
            training dtype's autocast, as training runs; False validates in float32.
        tf32: on CUDA, let float32 matrix products and cuDNN convolutions use TF32 tensor
            cores (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.
            allow_tf32``; Ampere and newer: a 10-bit mantissa for the products, float32
            accumulation); False keeps them in full float32. No effect on CPU.
        log_every: write a training record to ``metrics.jsonl`` every this many updates.
        accum: batches whose gradients are accumulated into one update on each process (a
            larger effective batch without the memory; fairseq's ``--update-freq``). Used
            when ``update_tokens`` is 0.
        update_tokens: padded tokens per update over all processes, in ``batch_tokens``'
            unit (Marian's ``--mini-batch-words``), as papers report the batch size: each
            process accumulates ``max(1, round(update_tokens / (world_size ×
            batch_tokens)))`` batches (:meth:`update_accum`), so that an update is the same
            size on 1 GPU as on 8. 0 = use ``accum``.
        tensorboard: also write TensorBoard event files to ``DIR/tensorboard`` (needs the
            ``tensorboard`` package).
        compile: run the training forward/backward through ``torch.compile`` (dynamic
            shapes); pays off on GPUs, measured slower on CPU (docs/benchmarks.md).
        onednn: in float32 on CPU, compute the linear layers' forward and input-gradient
            products with oneDNN instead of torch's default (MKL sgemm; :mod:`nmt.model.onednn`).
            Off by default: with a new row count in almost every batch, oneDNN builds a
            kernel per shape, and on the AMD EPYC we measured it gained nothing end to end
            (docs/benchmarks.md, "oneDNN in float32 training").
        dist_timeout: minutes a collective waits for the other processes of a torchrun job
            before it fails (torch's defaults: 30 for gloo, 10 for NCCL).
    """

    src_lang: str = "de"
    tgt_lang: str = "en"
    pairs: tuple[str, ...] = ()
    pair_sampling_temperature: float = 1.0
    batch_tokens: int = 2048
    lr: float = 1e-3
    warmup_steps: int = 500
    lr_schedule: str = "inverse_sqrt"
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.98)
    clip_norm: float = 1.0
    max_steps: int = 0
    max_epochs: int = 0
    max_minutes: float = 0.0
    eval_every: int = 500
    patience: int = 0
    patience_metric: str = "bleu"
    valid_beam_size: int = 1
    max_len: int = 200
    keep_checkpoints: int = 5
    save_every: int = 200
    seed: int = 1
    device: str = "auto"
    dtype: str = "auto"
    valid_autocast: bool = True
    tf32: bool = True
    log_every: int = 50
    accum: int = 1
    update_tokens: int = 0
    tensorboard: bool = False
    compile: bool = False
    onednn: bool = False
    dist_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.batch_tokens < 16:
            raise ConfigError(f"batch_tokens={self.batch_tokens} is too small (at least 16)")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.accum < 1 or self.log_every < 1 or self.save_every < 1:
            raise ConfigError("accum, log_every and save_every must be at least 1")
        for name in (
            "warmup_steps", "max_steps", "max_epochs", "patience", "eval_every", "update_tokens"
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        if not 0 <= self.max_minutes < math.inf:
            raise ConfigError(
                f"max_minutes={self.max_minutes} must be a number >= 0 (0 = no limit)"
            )
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout={self.dist_timeout} must be positive (minutes)")
        if self.eval_every == 0:
            raise ConfigError("eval_every=0: validate at least every N steps (N > 0)")
        if self.clip_norm < 0:
            raise ConfigError(
                f"clip_norm={self.clip_norm} must not be negative (0 = no gradient clipping)"
            )
        if self.keep_checkpoints < 1:
            raise ConfigError(
                f"keep_checkpoints={self.keep_checkpoints}: keep at least 1 step checkpoint "
                "(the newest ones are kept for nmt average)"
            )
        if self.max_len < 1:
            raise ConfigError(f"max_len={self.max_len} must be at least 1 token")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: choose one of auto, cpu, cuda, cuda:N")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"dtype={self.dtype!r}: choose one of auto, fp32, bf16, fp16")
        if self.patience_metric not in PATIENCE_METRICS:
            raise ConfigError(
                f"patience_metric={self.patience_metric!r}: choose one of "
                f"{', '.join(PATIENCE_METRICS)}"
            )
        if self.lr_schedule not in ("inverse_sqrt", "linear"):
            raise ConfigError(
                f"lr_schedule={self.lr_schedule!r}: choose one of inverse_sqrt, linear"
            )
        budget = self.max_steps or self.max_epochs or self.max_minutes
        if self.lr_schedule == "linear" and not budget:
            raise ConfigError(
                "lr_schedule='linear' decays to 0 at the end of the budget: set max_steps, "
                "max_epochs or max_minutes"
            )
        if self.lr_schedule == "linear" and self.max_steps and self.warmup_steps >= self.max_steps:
            # Refused, not warned about: the run would warm up and stop, and never do the
            # decay it was asked for (an inverse_sqrt run only warns, see schedule_notes).
            raise ConfigError(
                f"warmup_steps={self.warmup_steps} is not below max_steps={self.max_steps}: "
                "the linear schedule would never reach its peak lr nor decay; lower "
                f"--warmup-steps (e.g. to {max(self.max_steps // 10, 1)}) or raise --max-steps"
            )
        if self.src_lang == self.tgt_lang and not self.pairs:
            raise ConfigError(f"src_lang and tgt_lang are both {self.src_lang!r}")
        if not self.pair_sampling_temperature > 0:
            raise ConfigError(
                f"pair_sampling_temperature={self.pair_sampling_temperature} must be positive"
            )
        # Checked here, not at the first validation or optimizer step (after training).
        if self.valid_beam_size < 1:
            raise ConfigError(f"valid_beam_size={self.valid_beam_size} must be at least 1")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay={self.weight_decay} must be a number >= 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas={list(self.adam_betas)} must be two numbers in [0, 1)")
        if not self.lr < math.inf:
            raise ConfigError(f"lr={self.lr} must be finite")

    def update_accum(self, world_size: int) -> int:
        """Batches each of ``world_size`` processes accumulates into one update: ``accum``,
        or with ``update_tokens`` set, ``max(1, round(update_tokens / (world_size ×
        batch_tokens)))`` (Python's round: halves go to the even number)."""
        if not self.update_tokens:
            return self.accum
        return max(1, round(self.update_tokens / (world_size * self.batch_tokens)))


MIN_VOCAB_SIZE = 8  # pieces: the four special ids and a few more


def check_vocab_floor(vocab_size: int, src_vocab_size: int = 0) -> None:
    """Raise :class:`ConfigError` for a vocabulary under :data:`MIN_VOCAB_SIZE` pieces
    (``src_vocab_size`` 0 = one joint vocabulary, not checked), naming the field."""
    for name, value in (("vocab_size", vocab_size), ("src_vocab_size", src_vocab_size)):
        if value < MIN_VOCAB_SIZE and (name == "vocab_size" or value):
            raise ConfigError(f"{name}={value} is too small (at least {MIN_VOCAB_SIZE})")


def preset(name: str) -> dict[str, Any]:
    """Model overrides of a named preset.

    Raises:
        ConfigError: unknown preset (the message lists the valid ones).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
