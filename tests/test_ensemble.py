"""nmt.decode.ensemble: several models with one vocabulary, log-probabilities summed with weights.

Two different models (the tiny run's checkpoints after 100 and 200 updates): weights 1,0 and
0,1 reproduce each model alone, and the score an ensemble reports for its output is the
weighted sum of the two models' teacher-forced scores of it (a self-ensemble would pass that
with the second model ignored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from nmt.config import DecodeConfig
from nmt.data.parallel import pad
from nmt.data.tokenizer import EOS_ID, train_tokenizer
from nmt.decode.ensemble import parse_weights
from nmt.decode.forced import forced_scores
from nmt.decode.search import length_penalty, max_lengths
from nmt.decode.translate import Translator
from nmt.errors import CheckpointError, ConfigError
from nmt.model.checkpoint import SPM_FILE


@pytest.fixture(scope="module")
def two_models(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Model folders with the tiny run's weights after 100 and after 200 updates."""
    folders = []
    for step in (100, 200):
        folder = tmp_path_factory.mktemp(f"step{step}")
        for name in ("config.json", SPM_FILE):
            shutil.copy(tiny_run / name, folder / name)
        weights = tiny_run / "checkpoints" / f"step-{step:08d}.safetensors"
        shutil.copy(weights, folder / "model.safetensors")
        folders.append(folder)
    return folders[0], folders[1]


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 12)


def found(translator: Translator, lines: list[str], decode: DecodeConfig):  # type: ignore[no-untyped-def]
    src = pad(translator.tokenizer.encode(lines), suffix=EOS_ID)
    return src, [h[0] for h in translator.search(src, decode)]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_weights_1_0_and_0_1_reproduce_each_model(
    two_models: tuple[Path, Path], lines: list[str], beam_size: int
) -> None:
    """Exact: with weight 0, the other model adds 0.0 to every log-probability, and the
    batches are the same."""
    decode = DecodeConfig(beam_size=beam_size)
    outputs = []
    for weights in ([1.0, 0.0], [0.0, 1.0]):
        ensemble = Translator.load(list(two_models), device="cpu", ensemble_weights=weights)
        outputs.append(found(ensemble, lines, decode)[1])
    alone = [found(Translator.load(m, device="cpu"), lines, decode)[1] for m in two_models]
    for ens, single in zip(outputs, alone):
        assert [(h.tokens, h.score) for h in ens] == [(h.tokens, h.score) for h in single]
    assert [h.tokens for h in alone[0]] != [h.tokens for h in alone[1]]  # two different models


def test_ensemble_score_is_the_weighted_sum_of_the_models_scores(
    two_models: tuple[Path, Path], lines: list[str]
) -> None:
    weights = [0.3, 0.7]
    ensemble = Translator.load(list(two_models), device="cpu", ensemble_weights=weights)
    src, best = found(ensemble, lines, DecodeConfig(beam_size=3))
    models = [Translator.load(m, device="cpu").model for m in two_models]
    each = [forced_scores(m, src, [h.tokens for h in best]) for m in models]
    limits = max_lengths(src, 1.5, 10, ensemble.model.cfg.max_positions - 1).tolist()
    checked = 0
    for h, a, b, limit in zip(best, *each, limits):
        # At the limit too: EOS is forced there with the ensemble's own log-probability.
        assert h.score == pytest.approx(0.3 * a + 0.7 * b, abs=1e-4 * (len(h.tokens) + 1))
        checked += len(h.tokens) == limit
        assert a != pytest.approx(b, abs=1e-2)  # the two models disagree
    print(f"{checked} of {len(best)} outputs reached the length limit")
    # Scoring given translations (--score-target): the ensemble's log-probability of each
    # text is the weighted sum of each model's own --score-target of it, and its normalised
    # score is that log-probability under the length penalty.
    texts = ensemble.tokenizer.decode([h.tokens for h in best])
    scored = list(ensemble.score_targets(lines, texts))
    alone = [list(Translator.load(m, device="cpu").score_targets(lines, texts)) for m in two_models]
    assert len(scored) == len(lines)
    for (score, norm), (a, _), (b, _), text in zip(scored, *alone, texts):
        n = len(ensemble.tokenizer.encode([text])[0])
        assert score == pytest.approx(0.3 * a + 0.7 * b, abs=1e-4 * (n + 1))
        assert norm == pytest.approx(score / length_penalty(n + 1, 1.0), rel=1e-6)
        assert a != pytest.approx(b, abs=1e-2)


def test_different_vocabularies_name_both_files(
    two_models: tuple[Path, Path], tmp_path: Path, spm_text
) -> None:
    other = tmp_path / "other"
    shutil.copytree(two_models[1], other)
    train_tokenizer(spm_text["de"][:500] + spm_text["en"][:500], other / SPM_FILE, 300)
    with pytest.raises(ConfigError) as error:
        Translator.load([two_models[0], other], device="cpu")
    assert str(two_models[0] / SPM_FILE) in str(error.value)
    assert str(other / SPM_FILE) in str(error.value)


def test_weights_are_checked() -> None:
    assert parse_weights(None, 4) == [0.25] * 4
    assert parse_weights("1,0", 2) == [1.0, 0.0]
    for bad in ("1", "a,b", "1,-1", "0,0", "nan,1", "inf,1", "1e400,1"):
        with pytest.raises(ConfigError, match="ensemble weights"):
            parse_weights(bad, 2)


def test_cli_repeated_model_is_an_ensemble(
    two_models: tuple[Path, Path], tmp_path: Path, lines: list[str]
) -> None:
    src = tmp_path / "in.de"
    src.write_text("".join(line + "\n" for line in lines[:4]), encoding="utf-8")
    runner = CliRunner()
    a, b = two_models
    common = ["translate", str(src), "--beam-size", "2", "--device", "cpu"]
    alone = runner.invoke(app, [*common, "-m", str(a)])
    ensemble = runner.invoke(
        app, [*common, "-m", str(a), "-m", str(b), "--ensemble-weights", "1,0"]
    )
    assert alone.exit_code == 0 and ensemble.exit_code == 0, ensemble.output
    assert ensemble.stdout == alone.stdout
    missing = runner.invoke(app, [*common, "-m", str(tmp_path / "missing"), "-m", str(a)])
    assert missing.exit_code == 1 and "missing" in missing.stderr
    assert isinstance(missing.exception, SystemExit)
    with pytest.raises(CheckpointError):
        Translator.load([tmp_path / "missing", a], device="cpu")
