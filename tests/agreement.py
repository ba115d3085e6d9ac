"""Comparing two numeric paths so that the comparison holds on every CPU (STYLE, "Tests that
can fail" 12).

Two correct implementations of one model (CTranslate2 and torch, oneDNN and MKL, a batch of 1
and a batch of 20, AVX-512 and AVX2 kernels) differ by rounding: their log-probabilities
differ by some small ``delta`` (about 1e-6 between batchings, 1e-5 between engines in
float32). Where the two best tokens of a step are closer than ``2 * delta``, an argmax may
flip, and the greedy outputs diverge from there on, on one CPU and not on another. So greedy
outputs are compared token by token: identical outputs must have close scores, and where two
outputs diverge, the two tokens chosen at the first position where they differ must be a
near-tie in a reference model's teacher-forced distribution, given the prefix they share. Both
searches took the argmax there, so a correct pair can only diverge where the gap is at most
``2 * delta``; a wrong one (a transposed weight, a scale off by 2) diverges on most sentences,
with gaps of a tenth of a nat and more.

Beam search is compared per sentence on the normalized score of the best hypothesis (a
different but equally good hypothesis is allowed), or over a whole test set by chrF between
the two outputs.

Every tolerance that compares two paths is listed in ``tests/README.md`` with the bug its
companion test injects (the helpers at the end of this module), the gap that bug makes and the
gap the kernels make. The checks here print the gaps they see (``pytest -s``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F

import nmt.decode.sampling as sampling
import nmt.decode.translate as translate
from nmt.decode.forced import normalized
from nmt.decode.sampling import sampling_probs, uniforms
from nmt.decode.search import Hypothesis, mask_specials
from nmt.model.checkpoint import load_model, save_weights
from nmt.model.transformer import Transformer

Found = dict[tuple[int, ...], list[Hypothesis]]
Limits = dict[tuple[int, ...], int]  # a source's length limit (tokens before EOS)

# Two float32 computations of one model differ by at most ~5e-6 per token in log-probability
# (measured between CTranslate2 and torch and between oneDNN and MKL, with AVX-512 and with
# AVX2 kernels). Greedy outputs may therefore differ only where the two tokens are within
# FLOAT32_TIE; a transposed or doubled weight made them diverge at gaps of 0.1-5 nats, most
# above 1e-3. Identical outputs must score within SCORE_TOL per token (EOS counted). Beam
# search may keep another hypothesis where candidates were near-tied; its normalized score
# must then be within BEAM_NORMALIZED_TOL of the other's. Their companions (tests/README.md):
# a batch whose cross-attention reads the padding, log-probabilities rounded to bfloat16.
FLOAT32_TIE, SCORE_TOL, BEAM_NORMALIZED_TOL = 1e-3, 1e-4, 0.05
# Cross-attention weights (probabilities in [0, 1]) of one output computed in batches of
# different shapes: float32 rounding moves them by about 1e-7; 1e-4 is far below the gap
# between the weights of two different sentences or layers (a tenth and more).
ATTENTION_TOL = 1e-4


def record_hypotheses(translator: Any) -> Found:
    """Make ``translator`` (a ``Translator`` or ``CT2Translator``) record what its search
    finds: returns a dict, filled as it translates, from each source's token ids (without
    EOS, as searched) to its hypotheses, best first."""
    found: Found = {}
    search_rows = translator.search_rows

    def recording(
        ids: list[list[int]], request: Any = None
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        for rows, hyps in search_rows(ids, request):
            for row, h in zip(rows, hyps):
                found[tuple(ids[row])] = h
            yield rows, hyps

    translator.search_rows = recording
    return found


def assert_in_order(translator: Any, lines: list[str], results: list[Any], found: Found) -> None:
    """``results`` (of ``translator.translate(lines)``) hold, line by line, the best hypothesis
    that ``found`` (:func:`record_hypotheses`) recorded for that line's source; empty lines
    give empty results. So the order is kept whatever the batches were."""
    assert len(results) == len(lines)
    tokenizer = translator.tokenizer
    for line, ids, result in zip(lines, tokenizer.encode(lines), results):
        if not ids:
            assert result.text == "" and result.score == 0.0, line
            continue
        best = found[tuple(ids[: translator.max_src_tokens])][0]
        assert (result.text, result.score) == (tokenizer.decode([best.tokens])[0], best.score)


def translate_recorded(translator: Any, lines: list[str]) -> tuple[list[Any], Found]:
    """``translator.translate(lines)``, checked by :func:`assert_in_order`, and the hypotheses
    its search found, by source ids."""
    found = record_hypotheses(translator)
    results = list(translator.translate(lines))
    assert_in_order(translator, lines, results, found)
    return results, found


def assert_float32_agree(
    model: Transformer, beam_size: int, a: Found, b: Found, limits: Limits | None = None
) -> int:
    """Two float32 searches (greedy when ``beam_size`` is 1) of the same sources by ``model``
    computed two ways agree within the tolerances above; returns how many are identical.
    ``limits``: see :func:`assert_greedy_agree`."""
    if beam_size == 1:
        return assert_greedy_agree(model, a, b, FLOAT32_TIE, SCORE_TOL, limits)
    return assert_beam_agree(a, b, BEAM_NORMALIZED_TOL, SCORE_TOL)


@torch.inference_mode()
def forced_log_probs(model: Transformer, src_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """``(len(tokens) + 1, vocab)`` float32 log-probabilities (on the CPU) of the next token
    after the decoder's start token and after each prefix of ``tokens``, by teacher-forced
    decoding on the model's device (``src_ids`` without EOS; the model's own special ids, so
    an imported Marian model's too)."""
    device = next(model.parameters()).device
    bos, eos = model.cfg.bos_id, model.cfg.eos_id
    memory, src_mask = model.encode(torch.tensor([[*src_ids, eos]], device=device))
    hidden = model.decode(torch.tensor([[bos, *tokens]], device=device), memory, src_mask)
    return F.log_softmax(model.logits(hidden)[0].float(), -1).cpu()


def tie_gap(model: Transformer, src_ids: list[int], a: list[int], b: list[int]) -> float:
    """How far apart, in ``model``'s log-probabilities, are the two tokens that greedy outputs
    ``a`` and ``b`` (without EOS) chose at the first position where they differ; 0 if equal."""
    eos = model.cfg.eos_id
    a, b = [*a, eos], [*b, eos]
    t = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if t is None:
        return 0.0
    logp = forced_log_probs(model, src_ids, a[:t])[t]
    return abs(float(logp[a[t]] - logp[b[t]]))


# A seeded sample drawn in batches of two shapes: each row draws the same uniform numbers
# (test_sampling.py checks that exactly), so two samples of one line can differ only where a
# draw fell within the log-probabilities' float32 rounding (FLOAT32 ~5e-6 per token, far less
# in probability) of a boundary of the cumulative distribution between the two tokens chosen.
SAMPLE_BOUNDARY_TOL = 1e-4


def sample_boundary_gap(
    model: Transformer, src_ids: list[int], stream_seed: int, a: list[int], b: list[int]
) -> float:
    """How close the uniform number that drew the first differing token of two samples ``a``
    and ``b`` (without EOS) of one source came to a boundary of the cumulative distribution
    between their two tokens, in ``model``'s teacher-forced distribution (sampling from all
    tokens, temperature 1); ``stream_seed`` is the line's
    (:func:`nmt.decode.sampling.sentence_seed`). 0 if the samples are equal."""
    eos = model.cfg.eos_id
    a, b = [*a, eos], [*b, eos]
    t = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if t is None:
        return 0.0
    logp = mask_specials(forced_log_probs(model, src_ids, a[:t])[t : t + 1].clone())
    cdf = sampling_probs(logp, 0, 1.0, 1.0)[0].cumsum(0)
    u = float(uniforms([stream_seed], t + 1)[0, t])
    lo, hi = sorted((a[t], b[t]))
    return float((cdf[lo:hi] - u).abs().min())


class SamplingRecord:
    """What the sampler drew, recorded through ``monkeypatch`` while translations run (any
    engine path, any number of worker threads). By each searched source's ids (without
    EOS): ``seeds``, the seed of its stream, and ``samples``, the sample drawn. By each
    stream's seed: ``draws``, the uniform number each of its steps used, ``{step: u}``, as
    handed to :func:`nmt.decode.sampling.draw`."""

    def __init__(self, monkeypatch: Any) -> None:
        self.seeds: dict[tuple[int, ...], int] = {}
        self.samples: dict[tuple[int, ...], Hypothesis] = {}
        self.draws: dict[int, dict[int, float]] = {}
        here = threading.local()  # the rows of the step running in this thread
        sample, chooser, draw = sampling.sample, sampling.sample_chooser, sampling.draw

        def sampling_batch(model: Any, src: torch.Tensor, seeds: list[int], *a: Any) -> Any:
            eos, pad = model.cfg.eos_id, model.cfg.pad_id
            found = sample(model, src, seeds, *a)
            for row, seed, h in zip(src.tolist(), seeds, found, strict=True):
                ids = tuple(x for x in row if x not in (eos, pad))
                self.seeds[ids], self.samples[ids] = seed, h
            return found

        def sample_chooser(seeds: list[int], *a: Any) -> Any:
            choose = chooser(seeds, *a)

            def choosing(logp: torch.Tensor, sentence: torch.Tensor, step: int) -> torch.Tensor:
                here.rows, here.step = [seeds[s] for s in sentence.tolist()], step
                return choose(logp, sentence, step)

            return choosing

        def drawing(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            for seed, x in zip(here.rows, u.tolist(), strict=True):
                self.draws.setdefault(seed, {})[here.step] = x
            return draw(probs, u)

        monkeypatch.setattr(translate, "sample", sampling_batch)
        monkeypatch.setattr(sampling, "sample_chooser", sample_chooser)
        monkeypatch.setattr(sampling, "draw", drawing)


def assert_greedy_agree(
    model: Transformer,
    a: Found,
    b: Found,
    tie: float,
    score_tol: float,
    limits: Limits | None = None,
) -> int:
    """Greedy outputs ``a`` and ``b`` of the same sources agree: identical tokens with scores
    within ``score_tol`` per token (EOS counted), or a first difference that is a near-tie
    (:func:`tie_gap` below ``tie``) in ``model`` (the float32 reference). Returns how many
    outputs are identical, and prints the largest gaps seen (``pytest -s``), the figures of
    the table above.

    ``limits``: each source's length limit, when ``b`` is CTranslate2's search: it ends a
    hypothesis at the limit without EOS's log-probability, which ours adds (README), so the
    scores of identical outputs that reach it are not compared."""
    assert a.keys() == b.keys() and a
    bad, same, score_gap, ties = [], 0, 0.0, []
    for src in a:
        ha, hb = a[src][0], b[src][0]
        if ha.tokens == hb.tokens:
            same += 1
            if limits is not None and len(ha.tokens) == limits[src]:
                continue
            gap = abs(ha.score - hb.score) / (len(ha.tokens) + 1)
            score_gap = max(score_gap, gap)
            if gap > score_tol:
                bad.append(f"{list(src)}: same tokens, scores {ha.score:.6f} vs {hb.score:.6f}")
        else:
            ties.append(gap := tie_gap(model, list(src), ha.tokens, hb.tokens))
            if gap > tie:
                bad.append(f"{list(src)}: {ha.tokens} vs {hb.tokens} diverge at a gap of {gap:.4g}")
    print(
        f"greedy agreement: {same}/{len(a)} identical, score gap <= {score_gap:.2g}/token "
        f"(tol {score_tol:g}); {len(ties)} diverge at gaps {sorted(round(t, 5) for t in ties)[:8]}"
        f" (tie {tie:g})"
    )
    assert not bad, f"{len(bad)} of {len(a)} outputs disagree beyond rounding:\n" + "\n".join(
        bad[:10]
    )
    return same


def assert_beam_agree(a: Found, b: Found, normalized_tol: float, score_tol: float) -> int:
    """The best hypotheses of two beam searches of the same sources agree: identical tokens
    with scores within ``score_tol`` per token (EOS counted), or other tokens whose
    normalized scores are within ``normalized_tol`` (an equally good hypothesis, kept by one
    search and pruned by the other where two candidates were near-tied). Returns how many are
    identical, and prints the largest gaps seen (``pytest -s``)."""
    assert a.keys() == b.keys() and a
    bad, same, score_gap, normalized_gap = [], 0, 0.0, 0.0
    for src in a:
        ha, hb = a[src][0], b[src][0]
        if ha.tokens == hb.tokens:
            same += 1
            gap = abs(ha.score - hb.score) / (len(ha.tokens) + 1)
            score_gap, ok = max(score_gap, gap), gap <= score_tol
        else:
            gap = abs(ha.normalized - hb.normalized)
            normalized_gap, ok = max(normalized_gap, gap), gap <= normalized_tol
        if not ok:
            what = "same tokens, scores" if ha.tokens == hb.tokens else "other tokens, normalized"
            bad.append(f"{list(src)}: {what} {ha} vs {hb}")
    print(
        f"beam agreement: {same}/{len(a)} identical, score gap <= {score_gap:.2g}/token "
        f"(tol {score_tol:g}); normalized gap of the others <= {normalized_gap:.3g} "
        f"(tol {normalized_tol:g})"
    )
    assert not bad, f"{len(bad)} of {len(a)} best hypotheses disagree:\n" + "\n".join(bad[:10])
    return same


def found_from_answers(
    tokenizer: Any, sources: list[list[int]], answers: list[tuple[str, float]], alpha: float
) -> Found:
    """:data:`Found` for answers known only as ``(text, score)`` (a server's, Hugging Face's):
    each source's ids (without EOS) to its answer, as a hypothesis of the target ids of
    ``text`` (``tokenizer.encode_target``) whose normalized score is ``score`` over the GNMT
    length penalty of ``alpha`` (Wu et al. 2016), EOS counted, as nmt's beam search ranks."""
    found: Found = {}
    for src, (_, score), tokens in zip(
        sources, answers, tokenizer.encode_target([text for text, _ in answers])
    ):
        found[tuple(src)] = [Hypothesis(tokens, score, normalized(score, len(tokens), alpha))]
    return found


def assert_scores_agree(
    lengths: list[int], a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> None:
    """Two paths' ``score_targets`` results (log-probability, normalized score) for the same
    pairs agree within :data:`SCORE_TOL` per token; ``lengths``: each target's tokens, EOS
    counted. Prints the largest gap per token seen (``pytest -s``)."""
    assert len(a) == len(b) == len(lengths) and a
    gaps = [max(abs(x - y) for x, y in zip(sa, sb)) / n for sa, sb, n in zip(a, b, lengths)]
    print(f"forced scores: gap <= {max(gaps):.2g}/token (tol {SCORE_TOL:g})")
    bad = [(i, sa, sb) for i, (sa, sb, g) in enumerate(zip(a, b, gaps)) if g > SCORE_TOL]
    assert not bad, f"{len(bad)} of {len(a)} forced scores disagree: {bad[:5]}"


def chrf(hyps: list[str], refs: list[str]) -> float:
    """Corpus chrF (sacreBLEU's defaults) of ``hyps`` against one reference each."""
    return float(sacrebleu.corpus_chrf(hyps, [refs]).score)


def teacher_forced_log_probs(model: Transformer, src: list[int], tgt: list[int]) -> torch.Tensor:
    """``(len(tgt) + 1,)`` log-probabilities of ``tgt`` and EOS given ``src`` (ids without
    EOS), teacher-forced through the whole-prefix path (:meth:`Transformer.decode`), the
    model's own special ids."""
    eos = model.cfg.eos_id
    logp = forced_log_probs(model, src, tgt)
    return logp.gather(1, torch.tensor([*tgt, eos])[:, None])[:, 0]


def mean_log_prob_error(
    reference: Transformer, model: Transformer, src: list[list[int]], tgt: list[list[int]]
) -> float:
    """The mean absolute difference between ``model``'s and the float32 ``reference``'s
    teacher-forced log-probabilities of the tokens of ``tgt`` and EOS given ``src`` (ids
    without EOS), over all tokens of all pairs: how far a low-precision path (bf16, fp16,
    int8, another device) is from float32."""
    eos = reference.cfg.eos_id
    errors = []
    for s, t in zip(src, tgt):
        labels = torch.tensor([*t, eos])[:, None]
        exact, approx = (forced_log_probs(m, s, t).gather(1, labels) for m in (reference, model))
        errors.append((exact - approx).abs().flatten().numpy())
    return float(np.concatenate(errors).mean())


# The bugs that the companion tests inject, to show that each tolerance above fails them.


def doubled_weight_copy(model_dir: Path, out: Path) -> Path:
    """A doubled scale: ``model_dir``'s weights with the first decoder layer's self-attention
    output projection times 2, written to ``out`` (a weights file for ``weights=``)."""
    model, _ = load_model(model_dir)
    layer: Any = model.decoder_layers[0]
    with torch.no_grad():
        layer.self_attn.out_proj.weight.mul_(2.0)
    save_weights(out, model)
    return out


def inject_padding_read(monkeypatch: Any, model: Any) -> None:
    """A wrong mask: ``model``'s cross-attention reads the source padding (the mask that
    ``encode`` returns is all True), which changes only the sentences of a padded batch."""
    encode = model.encode

    def reading_padding(src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory, src_mask = encode(src)
        return memory, torch.ones_like(src_mask)

    monkeypatch.setattr(model, "encode", reading_padding)


def inject_bf16_log_probs(monkeypatch: Any, model: Any) -> None:
    """A cast left in: each decoding step's log-probabilities rounded to bfloat16, which
    moves scores by ~1e-2 but seldom the argmax."""
    decode_step = model.decode_step

    def rounded(tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        return decode_step(tokens, cache).bfloat16().float()

    monkeypatch.setattr(model, "decode_step", rounded)
