"""Shared fixtures: Multi30k slices, a small SentencePiece model, random and trained tiny models.

The Multi30k files live outside the repository, in ``shared/data/multi30k`` beside it (or in
the folder named by ``NMT_MULTI30K``, as on a machine lent for ``benchmarks/gpu_check.sh``);
tests that need them are skipped when they are absent. Slices are written to temporary
folders, never into the repository.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cpu_profile import probe

from nmt.config import ModelConfig, TrainConfig, preset
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.model.transformer import Transformer
from nmt.train.run import train

DATA = Path(
    os.environ.get("NMT_MULTI30K") or Path(__file__).resolve().parents[2] / "shared/data/multi30k"
)
SPM_VOCAB = 1000
SPM_LINES = 3000  # first lines of train.de and train.en the SentencePiece model is trained on
TINY_TRAIN_LINES = 400
TINY_VALID_LINES = 20
TINY_STEPS = 200


def read_multi30k(split: str, lang: str, n: int | None = None) -> list[str]:
    """The first ``n`` lines (all when ``None``) of ``SPLIT.LANG.gz``; skips the test if absent."""
    path = DATA / f"{split}.{lang}.gz"
    if not path.is_file():
        pytest.skip(f"Multi30k data not found at {DATA} (needs {path.name})")
    lines = []
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
        for line in f:
            if n is not None and len(lines) == n:
                break
            lines.append(line.rstrip("\n"))
    return lines


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` as UTF-8 (gzipped when ``path`` ends in ``.gz``), one per line."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_corpus(
    prefix: Path,
    src: list[str],
    tgt: list[str],
    langs: tuple[str, str] = ("de", "en"),
    gz: bool = False,
) -> Path:
    """Write a parallel corpus ``PREFIX.SRC`` / ``PREFIX.TGT`` (``.gz`` if asked); returns
    ``prefix``."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_lines(Path(f"{prefix}.{langs[0]}{suffix}"), src)
    write_lines(Path(f"{prefix}.{langs[1]}{suffix}"), tgt)
    return prefix


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The Multi30k folder (files ``SPLIT.LANG.gz``); skips when absent."""
    if not (DATA / "train.de.gz").is_file():
        pytest.skip(f"Multi30k data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def multi30k() -> Callable[..., list[str]]:
    """``multi30k(split, lang, n=None)``: lines of a Multi30k file (skips when absent)."""
    return read_multi30k


@pytest.fixture(scope="session")
def corpus_writer() -> Callable[..., Path]:
    """``corpus_writer(prefix, src, tgt, langs=("de", "en"), gz=False)``."""
    return write_corpus


@pytest.fixture(scope="session")
def spm_text() -> dict[str, list[str]]:
    """The text the shared SentencePiece model is trained on: the first 3000 lines of the
    Multi30k training set, by language."""
    return {lang: read_multi30k("train", lang, SPM_LINES) for lang in ("de", "en")}


@pytest.fixture(scope="session")
def short_pairs(spm_text: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """``(de, en)``: the first 16 pairs of ``spm_text`` with at most 7 words a side, short
    enough for a tiny model to learn by heart in a few hundred updates of one batch."""
    pairs = [
        (s, t)
        for s, t in zip(spm_text["de"], spm_text["en"])
        if len(s.split()) <= 7 and len(t.split()) <= 7
    ][:16]
    return [s for s, _ in pairs], [t for _, t in pairs]


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory: pytest.TempPathFactory, spm_text: dict[str, list[str]]) -> Path:
    """A joint de/en SentencePiece model of 1000 pieces."""
    path = tmp_path_factory.mktemp("spm") / "spm.model"
    train_tokenizer(spm_text["de"] + spm_text["en"], path, SPM_VOCAB)
    return path


@pytest.fixture(scope="session")
def tokenizer(spm_model: Path) -> Tokenizer:
    return Tokenizer(spm_model)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(train_prefix, valid_prefix)``: 400 training pairs (gzipped) and 20 validation pairs."""
    folder = tmp_path_factory.mktemp("corpus")
    train_prefix = write_corpus(
        folder / "train",
        read_multi30k("train", "de", TINY_TRAIN_LINES),
        read_multi30k("train", "en", TINY_TRAIN_LINES),
        gz=True,
    )
    valid_prefix = write_corpus(
        folder / "valid",
        read_multi30k("val", "de", TINY_VALID_LINES),
        read_multi30k("val", "en", TINY_VALID_LINES),
    )
    return train_prefix, valid_prefix


def make_tiny_model_config(**overrides) -> ModelConfig:  # type: ignore[no-untyped-def]
    """The ``tiny`` preset with a 1000-piece vocabulary (the shared SentencePiece model's)."""
    values = {**preset("tiny"), "vocab_size": SPM_VOCAB, **overrides}
    return ModelConfig(**values)


def make_tiny_train_config(**overrides) -> TrainConfig:  # type: ignore[no-untyped-def]
    """A short CPU/float32 recipe; validation and checkpoints only where a test asks."""
    values = dict(
        batch_tokens=1000,
        lr=3e-3,
        warmup_steps=50,
        max_steps=TINY_STEPS,
        eval_every=100,
        save_every=100,
        log_every=20,
        device="cpu",
        dtype="fp32",
        seed=1,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_model_config() -> Callable[..., ModelConfig]:
    """``tiny_model_config(**overrides)``: the tiny preset, 1000-piece vocabulary."""
    return make_tiny_model_config


@pytest.fixture(scope="session")
def tiny_train_config() -> Callable[..., TrainConfig]:
    """``tiny_train_config(**overrides)``: a short CPU/float32 recipe."""
    return make_tiny_train_config


@pytest.fixture(scope="session")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus: tuple[Path, Path], spm_model: Path
) -> Path:
    """A run folder of the tiny preset trained for 200 steps on 400 Multi30k pairs (de→en).

    Its translations are poor but real: they end with EOS and differ in length, which is what
    the search, translate and checkpoint tests need.
    """
    out = tmp_path_factory.mktemp("tiny-run")
    train(*tiny_corpus, out, make_tiny_model_config(), make_tiny_train_config(), spm_path=spm_model)
    return out


TAGS = ["<2de>", "<2en>"]


@pytest.fixture(scope="session")
def tagged_spm(tmp_path_factory: pytest.TempPathFactory, spm_text: dict[str, list[str]]) -> Path:
    """A joint de/en SentencePiece model of 1000 pieces with the two target tags."""
    path = tmp_path_factory.mktemp("tagged-spm") / "spm.model"
    train_tokenizer(spm_text["de"] + spm_text["en"], path, 1000, user_defined_symbols=TAGS)
    return path


@pytest.fixture(scope="session")
def both_ways(
    tmp_path_factory: pytest.TempPathFactory,
    tagged_spm: Path,
    short_pairs: tuple[list[str], list[str]],
) -> Path:
    """One tiny model trained on de-en and en-de at once (the same 16 pairs both ways), by
    heart: only the tag tells it which language to write."""
    folder = tmp_path_factory.mktemp("both-ways")
    prefix = write_corpus(folder / "pairs", *short_pairs)
    recipe = make_tiny_train_config(
        pairs=("de-en", "en-de"), max_steps=300, batch_tokens=4096, label_smoothing=0.0,
        eval_every=300, save_every=300,
    )  # fmt: skip
    model = make_tiny_model_config(dropout=0.0)
    train(prefix, prefix, folder / "run", model, recipe, spm_path=tagged_spm)
    return folder / "run"


@pytest.fixture(scope="session")
def cpu_isas() -> dict[str, str]:
    """The instruction sets the numeric libraries report in this environment
    (:func:`cpu_profile.probe`; a subprocess, a few seconds)."""
    return probe()


@pytest.fixture
def random_model() -> Callable[..., Transformer]:
    """``random_model(**model_overrides)``: a seeded, randomly initialized small Transformer in
    eval mode (float32, no dropout), 50-token vocabulary."""

    def make(seed: int = 0, **overrides) -> Transformer:  # type: ignore[no-untyped-def]
        values = dict(
            vocab_size=50,
            d_model=32,
            n_heads=4,
            ffn_dim=64,
            n_encoder_layers=2,
            n_decoder_layers=2,
            dropout=0.0,
            max_positions=128,
        )
        torch.manual_seed(seed)
        return Transformer(ModelConfig(**{**values, **overrides})).eval()

    return make
