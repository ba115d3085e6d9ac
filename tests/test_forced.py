"""nmt.decode.forced and ``Translator.score_targets``: scoring given translations.

On the token ids search produced, the forced score equals the score search reported; given as
text, a translation is re-encoded by SentencePiece, and scores as its re-encoded ids do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.config import DecodeConfig
from nmt.data.parallel import pad
from nmt.data.tokenizer import EOS_ID
from nmt.decode.forced import forced_scores, normalized
from nmt.decode.search import length_penalty, max_lengths
from nmt.decode.translate import Translator
from nmt.errors import InputError


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 16)


@pytest.mark.kernels
def test_forced_score_equals_the_score_search_reported(tiny_run: Path, lines: list[str]) -> None:
    translator = Translator.load(tiny_run, DecodeConfig(beam_size=4), device="cpu", workers=1)
    src = pad(translator.tokenizer.encode(lines), suffix=EOS_ID)
    limits = max_lengths(src, 1.5, 10, translator.model.cfg.max_positions - 1).tolist()
    best = [h[0] for h in translator.search(src)]
    forced = forced_scores(translator.model, src, [h.tokens for h in best])
    checked = 0
    for h, score, limit in zip(best, forced, limits):
        # Those cut at the limit too: search forces EOS there with its own log-probability.
        assert score == pytest.approx(h.score, abs=1e-4 * (len(h.tokens) + 1))
        assert normalized(score, len(h.tokens), 1.0) == pytest.approx(h.normalized, abs=1e-3)
        checked += len(h.tokens) == limit
    print(f"{checked} of {len(best)} outputs reached the length limit")


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
