"""Shared fixtures: Multi30k slices, a small SentencePiece model, random and trained tiny models;
and the suite's two rules: the data is found or the run fails, and nothing skips outside
``skips.ALLOWED``.

Multi30k (files ``SPLIT.LANG.gz``) is looked for once, by :func:`find_multi30k`: in the folder
named by ``NMT_MULTI30K`` when it is set (as on a machine lent for ``benchmarks/gpu_check.sh``),
else in ``shared/data/multi30k`` beside the repository, else in ``data/multi30k`` (where
``make data`` puts it). Every test takes it from here, through the ``multi30k`` and
``multi30k_dir`` fixtures. When a selected test needs it and it is nowhere, the run stops at
once with an error naming the three places, instead of passing with the tests skipped. Slices
are written to temporary folders, never into the repository.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from cpu_profile import probe
from skips import ALLOWED, allowed_key

from nmt.config import ModelConfig, TrainConfig, preset
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.model.transformer import Transformer
from nmt.train.run import train

REPO = Path(__file__).resolve().parents[1]
MULTI30K_ENV = "NMT_MULTI30K"
# The fixtures through which every test reads Multi30k (the others request one of them).
DATA_FIXTURES = frozenset({"multi30k", "multi30k_dir"})


def multi30k_places(environ: Mapping[str, str], repo: Path) -> list[tuple[str, Path | None]]:
    """Where Multi30k is looked for, in order: ``(how the place is named, folder)``; the
    folder of an unset ``NMT_MULTI30K`` is ``None``."""
    named = environ.get(MULTI30K_ENV)
    return [
        (f"${MULTI30K_ENV}", Path(named) if named else None),
        ("shared/data/multi30k beside the repository", repo.parent / "shared/data/multi30k"),
        ("make data's folder", repo / "data/multi30k"),
    ]


def find_multi30k(environ: Mapping[str, str], repo: Path) -> tuple[Path | None, str]:
    """``(folder, "")`` of the first place of :func:`multi30k_places` that holds
    ``train.de.gz``, or ``(None, message)`` naming every place looked at and what to do.

    A set ``NMT_MULTI30K`` is the only place looked at: a folder named on purpose is not
    silently replaced by another one.
    """
    places = multi30k_places(environ, repo)
    if places[0][1] is not None:
        places = places[:1]
    for _, folder in places:
        if folder is not None and (folder / "train.de.gz").is_file():
            return folder, ""
    looked = "".join(
        f"\n  {name}: {'(unset)' if folder is None else folder}"
        for name, folder in multi30k_places(environ, repo)
    )
    if len(places) == 1:
        what = f"{MULTI30K_ENV} is set, so only its folder counts: point it at a folder of the "
        what += "SPLIT.LANG.gz files, or unset it"
    else:
        what = f"run `make data`, or set {MULTI30K_ENV} to a folder of the SPLIT.LANG.gz files"
    return (
        None,
        f"Multi30k (train.de.gz and the other SPLIT.LANG.gz) not found in:{looked}\n{what}.",
    )


DATA, MISSING_DATA = find_multi30k(os.environ, REPO)

SPM_VOCAB = 1000
SPM_LINES = 3000  # first lines of train.de and train.en the SentencePiece model is trained on
TINY_TRAIN_LINES = 400
TINY_VALID_LINES = 20
TINY_STEPS = 200


def multi30k_file(name: str) -> Path:
    """The path of the Multi30k file ``name`` (``SPLIT.LANG.gz``) in :data:`DATA`.

    Raises:
        pytest.fail.Exception: the data was not found (the message says where it was looked
            for), or the folder lacks this file.
    """
    if DATA is None:
        pytest.fail(MISSING_DATA, pytrace=False)
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the Multi30k folder {DATA} is incomplete", pytrace=False)
    return path


def read_multi30k(split: str, lang: str, n: int | None = None) -> list[str]:
    """The first ``n`` lines (all when ``None``) of ``SPLIT.LANG.gz`` (:func:`multi30k_file`)."""
    path = multi30k_file(f"{split}.{lang}.gz")
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
    """The Multi30k folder (files ``SPLIT.LANG.gz``); fails the test when it was not found."""
    if DATA is None:
        pytest.fail(MISSING_DATA, pytrace=False)
    return DATA


@pytest.fixture(scope="session")
def multi30k() -> Callable[..., list[str]]:
    """``multi30k(split, lang, n=None)``: lines of a Multi30k file (fails when absent)."""
    return read_multi30k


@pytest.fixture(scope="session")
def corpus_writer() -> Callable[..., Path]:
    """``corpus_writer(prefix, src, tgt, langs=("de", "en"), gz=False)``."""
    return write_corpus


@pytest.fixture(scope="session")
def spm_text(multi30k: Callable[..., list[str]]) -> dict[str, list[str]]:
    """The text the shared SentencePiece model is trained on: the first 3000 lines of the
    Multi30k training set, by language."""
    return {lang: multi30k("train", lang, SPM_LINES) for lang in ("de", "en")}


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
def tiny_corpus(
    tmp_path_factory: pytest.TempPathFactory, multi30k: Callable[..., list[str]]
) -> tuple[Path, Path]:
    """``(train_prefix, valid_prefix)``: 400 training pairs (gzipped) and 20 validation pairs."""
    folder = tmp_path_factory.mktemp("corpus")
    train_prefix = write_corpus(
        folder / "train",
        multi30k("train", "de", TINY_TRAIN_LINES),
        multi30k("train", "en", TINY_TRAIN_LINES),
        gz=True,
    )
    valid_prefix = write_corpus(
        folder / "valid",
        multi30k("val", "de", TINY_VALID_LINES),
        multi30k("val", "en", TINY_VALID_LINES),
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


def pytest_report_header() -> str:
    return f"multi30k: {DATA}" if DATA is not None else "multi30k: not found"


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop the run before any test when a selected test needs Multi30k and it is nowhere."""
    if DATA is not None or config.option.collectonly:
        return
    needing = [item.nodeid for item in items if DATA_FIXTURES & set(item.fixturenames)]
    if needing:
        raise pytest.UsageError(
            f"{MISSING_DATA}\n{len(needing)} selected tests need it, e.g. {needing[0]}"
        )


def _unallowed_skip(longrepr: object) -> str | None:
    """The message of a skip outside ``skips.ALLOWED`` (``None`` for an allowed one)."""
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if allowed_key(str(message)) is not None:
        return None
    return (
        f"{message}\nThis skip is not in the allow-list of tests/skips.py "
        f"({', '.join(ALLOWED)}): install what the test needs (the dev extra, make install, "
        "make data), or skip through skips.skip(KEY) for a reason that list allows."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A test skipped for a reason outside ``skips.ALLOWED`` fails."""
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        failure = _unallowed_skip(report.longrepr)
        if failure is not None:
            report.outcome, report.longrepr = "failed", failure
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """A module skipped whole (``importorskip`` at its top) outside ``skips.ALLOWED`` is a
    collection error."""
    report: pytest.CollectReport = yield
    if report.skipped:
        failure = _unallowed_skip(report.longrepr)
        if failure is not None:
            report.outcome, report.longrepr = "failed", failure
    return report
