"""nmt.decode.forced and ``Translator.score_targets``: scoring given translations.

On the token ids search produced, the forced score equals the score search reported; given as
text, a translation is re-encoded by SentencePiece, and scores as its re-encoded ids do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from agreement import inject_padding_read

from nmt.config import DecodeConfig
from nmt.data.parallel import pad
from nmt.data.targets import Targets
from nmt.data.tokenizer import EOS_ID, Tokenizer
from nmt.decode.forced import forced_scores, normalized
from nmt.decode.search import Hypothesis, length_penalty, max_lengths
from nmt.decode.translate import Translator
from nmt.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 16)


FORCED_TOL = 1e-4  # per token (EOS counted): agreement.SCORE_TOL


def searched(tiny_run: Path, lines: list[str]) -> tuple[Translator, torch.Tensor, list[Hypothesis]]:
    """The tiny run's beam-4 best hypotheses of ``lines``, searched as one padded batch."""
    translator = Translator.load(tiny_run, DecodeConfig(beam_size=4), device="cpu", workers=1)
    src = pad(translator.tokenizer.encode(lines), suffix=EOS_ID)
    return translator, src, [h[0] for h in translator.search(src)]


def per_token_gaps(model: Any, src: torch.Tensor, best: list[Hypothesis]) -> list[float]:
    forced = forced_scores(model, src, [h.tokens for h in best])
    return [abs(s - h.score) / (len(h.tokens) + 1) for s, h in zip(forced, best, strict=True)]


@pytest.mark.kernels
def test_forced_score_equals_the_score_search_reported(tiny_run: Path, lines: list[str]) -> None:
    translator, src, best = searched(tiny_run, lines)
    limits = max_lengths(src, 1.5, 10, translator.model.cfg.max_positions - 1).tolist()
    forced = forced_scores(translator.model, src, [h.tokens for h in best])
    checked = 0
    for h, score, limit in zip(best, forced, limits):
        # Those cut at the limit too: search forces EOS there with its own log-probability.
        assert score == pytest.approx(h.score, abs=FORCED_TOL * (len(h.tokens) + 1))
        assert normalized(score, len(h.tokens), 1.0) == pytest.approx(h.normalized, abs=1e-3)
        checked += len(h.tokens) == limit
    print(f"{checked} of {len(best)} outputs reached the length limit")
    print(f"forced vs search: kernels {max(per_token_gaps(translator.model, src, best)):.2g}")


@pytest.mark.kernels
def test_forced_bound_fails_a_scorer_that_reads_the_source_padding(
    tiny_run: Path, lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Companion of FORCED_TOL (tests/README.md): a scorer whose cross-attention reads the
    source padding (a wrong mask, agreement.inject_padding_read) scores the padded
    sentences of the batch otherwise than search did, and the check fails."""
    translator, src, best = searched(tiny_run, lines)
    inject_padding_read(monkeypatch, translator.model)
    gaps = per_token_gaps(translator.model, src, best)
    print(f"forced vs search, padding read: bug {max(gaps):.2g} per token")
    assert max(gaps) > FORCED_TOL


def test_score_targets_scores_the_text_as_sentencepiece_encodes_it(
    tiny_run: Path, lines: list[str]
) -> None:
    translator = Translator.load(tiny_run, DecodeConfig(beam_size=4), device="cpu", workers=1)
    results = list(translator.translate(lines))
    texts = [r.text for r in results]
    scored = list(translator.score_targets(["", *lines], ["", *texts]))
    assert len(scored) == len(lines) + 1
    src = pad(translator.tokenizer.encode(lines), suffix=EOS_ID)
    encoded = translator.tokenizer.encode(texts)
    expected = forced_scores(translator.model, src, encoded)
    for (score, norm), want, ids in zip(scored[1:], expected, encoded):
        assert score == pytest.approx(want, abs=1e-4 * (len(ids) + 1))
        assert norm == pytest.approx(score / length_penalty(len(ids) + 1, 1.0))
    assert scored[0][0] < 0  # an empty target scores EOS alone
    with pytest.raises(InputError, match="refs.en:2: no target for input line 2"):
        list(translator.score_targets(lines[:3], texts[:1], target_source="refs.en"))


def test_score_targets_tags_the_sources_for_the_target_language_each_call_names(
    tagged_spm: Path, random_model: Any, spm_text: dict[str, list[str]]
) -> None:
    """One translator of a model of two target languages, loaded without one, scores given
    translations for the language each call names (``score_targets(..., tgt_lang=)``, as
    ``translate(..., tgt_lang=)``): its sources are tagged for it, so the scores are those
    of lines carrying that tag themselves and of a translator loaded for that language, and
    differ between the two languages. (The argument did not exist: a per-call language could
    not be scored.)"""
    base = Tokenizer(tagged_spm)
    model = random_model(vocab_size=base.vocab_size)
    targets = Targets(base, ["de-en", "en-de"], None, None)
    untagged = Translator(model, base, targets=targets)
    src, tgt = spm_text["de"][:4], spm_text["en"][:4]
    scores = {lang: list(untagged.score_targets(src, tgt, tgt_lang=lang)) for lang in ("de", "en")}
    for lang in ("de", "en"):  # the same ids in the same batch: the same numbers
        assert scores[lang] == list(untagged.score_targets([f"<2{lang}> {x}" for x in src], tgt))
        loaded = Translator(model, targets.tokenizer(lang), targets=targets)
        assert scores[lang] == list(loaded.score_targets(src, tgt))
    assert all(d != e for d, e in zip(scores["de"], scores["en"]))
    with pytest.raises(ConfigError, match="tgt_lang fr"):
        list(untagged.score_targets(src, tgt, tgt_lang="fr"))
