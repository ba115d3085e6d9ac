"""Vocabulary shortlists (nmt.decode.shortlist): building, the restricted output projection,
search over a batch's candidates in both engines, and the refusals.

A shortlist changes the softmax (normalized over a batch's candidates), so its scores are not
the full search's. The full search's output is kept exactly where the candidates cover it for
greedy search (the argmax of a subset holding it is the same token); for both searches when
the model gives the excluded tokens no probability at all (an output bias of -inf there), the
scores too. Across engines, the torch engine with the shortlist and CTranslate2 with the
vocabulary map that ``nmt export`` writes compare under ``agreement.py``'s rules.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from agreement import (
    FLOAT32_TIE,
    SCORE_TOL,
    Found,
    assert_beam_agree,
    assert_float32_agree,
    forced_log_probs,
    record_hypotheses,
    tie_gap,
)
from typer.testing import CliRunner

from cli.main import app
from nmt.config import DecodeConfig
from nmt.decode.ct2 import CT2Translator
from nmt.decode.search import Hypothesis
from nmt.decode.shortlist import (
    SHORTLIST_FILE,
    VMAP_FILE,
    OutputVocab,
    Shortlist,
    build_shortlist,
    load_shortlist,
)
from nmt.decode.translate import Translator
from nmt.errors import CheckpointError, ConfigError
from nmt.interop.export import export_ctranslate2
from nmt.model import onednn
from nmt.model.checkpoint import CONFIG_FILE, SPM_FILE, WEIGHTS_FILE, load_model
from nmt.model.transformer import Transformer

runner = CliRunner()
LINES = 40  # test_2016_flickr sentences searched, in one batch


def model_copy(tiny_run: Path, folder: Path) -> Path:
    """A model folder of ``tiny_run``'s files (so that a shortlist is written beside them,
    not into the shared run)."""
    folder.mkdir(parents=True)
    for name in (CONFIG_FILE, SPM_FILE, WEIGHTS_FILE):
        shutil.copy(tiny_run / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def lines(multi30k: Callable[..., list[str]]) -> list[str]:
    return multi30k("test_2016_flickr", "de", LINES)


@pytest.fixture(scope="module")
def folder(
    tiny_run: Path, tiny_corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``tiny_run``'s model with a shortlist of 3 candidates per source piece and the 10 most
    frequent target pieces, from its 400 training pairs: small enough that it leaves out
    tokens the full search picks."""
    out = model_copy(tiny_run, tmp_path_factory.mktemp("shortlist") / "model")
    build_shortlist(out, tiny_corpus[0], best=3, frequent=10)
    return out


def translator(folder: Path, model: Transformer | None = None, **decode: Any) -> Translator:
    """The torch engine on ``folder`` (or on ``model`` with ``folder``'s tokenizer and
    shortlist), one batch of up to 64 sentences, searched in the calling thread."""
    loaded = Translator.load(folder, DecodeConfig(batch_size=64, **decode), device="cpu")
    if model is None:
        return loaded
    return Translator(model, loaded.tokenizer, loaded.decode, folder=folder)


def search(t: Translator, lines: list[str], **decode: Any) -> tuple[torch.Tensor, Found]:
    """One batch of ``lines`` searched by ``t`` with ``decode``: the padded source ids, and
    each source's hypotheses."""
    ids = t.tokenizer.encode(lines)
    src = t.source_batch(ids)
    found = t.search(src, replace(t.decode, **decode))
    return src, {tuple(x): h for x, h in zip(ids, found)}


def restricted_score(
    model: Transformer, src: list[int], h: Hypothesis, vocab: torch.Tensor
) -> float:
    """The log-probability of ``h`` (EOS included) under ``model`` teacher-forced, each step's
    distribution renormalized over the target ids ``vocab``."""
    logp = forced_log_probs(model, src, h.tokens)[:, vocab]  # (len + 1, n)
    logp = logp - logp.logsumexp(-1, keepdim=True)
    columns = torch.searchsorted(vocab, torch.tensor([*h.tokens, model.cfg.eos_id]))
    return float(logp.gather(1, columns[:, None]).sum())


def test_output_log_probs_is_the_full_softmax_renormalized_over_the_subset(
    random_model: Callable[..., Transformer],
) -> None:
    """The one function that computes search's log-probabilities: over a subset of ids, the
    whole vocabulary's log-softmax renormalized over that subset; through ``F.linear`` and
    through oneDNN's packed projection alike."""
    model = random_model(output_bias=True)
    with torch.no_grad():
        model.output_bias.normal_()  # type: ignore[union-attr]
    h = torch.randn(6, model.cfg.d_model)
    ids = torch.tensor([0, 2, 3, 5, 11, 17, 30, 49])
    full = F.log_softmax(model.logits(h), -1)[:, ids]
    expected = full - full.logsumexp(-1, keepdim=True)
    with torch.inference_mode():
        got = model.output_log_probs(h, model.output_rows(ids))
        assert got.shape == (6, len(ids))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.output_log_probs(h), F.log_softmax(model.logits(h), -1))
        if onednn.available():
            onednn.use_onednn(model)
            torch.testing.assert_close(
                model.output_log_probs(h, model.output_rows(ids)), expected, atol=1e-5, rtol=0
            )
    # Not the first rows: a wrong slice (ids ignored) would give another distribution.
    wrong = F.log_softmax(model.logits(h)[:, : len(ids)], -1)
    assert (wrong - expected).abs().max() > 0.1


def test_build_writes_the_candidates_and_the_always_allowed(
    folder: Path, tiny_corpus: tuple[Path, Path]
) -> None:
    model, _ = load_model(folder)
    shortlist = load_shortlist(folder, model.cfg)
    assert shortlist.candidates.shape == (model.cfg.vocab_size, 3)
    assert shortlist.info["best"] == "3" and shortlist.info["method"] == "dice"
    assert shortlist.info["pairs"] == "400"
    specials = {0, 1, 2, 3}  # PAD, UNK, BOS, EOS
    always = set(shortlist.always.tolist())
    assert specials <= always and len(always - specials) == 10
    pieces = Translator.load(folder, device="cpu").tokenizer.vocabulary()
    hund = shortlist.candidates[pieces.index("▁Hund")].tolist()
    assert pieces.index("▁dog") in hund  # Dice ranks the translation among the best three
    src = torch.tensor([[pieces.index("▁Hund"), 3]])
    vocab = shortlist.batch_vocab(src, [[700, 701]])
    assert set(vocab.tolist()) == always | set(hund) | {700, 701}
    assert vocab.tolist() == sorted(vocab.tolist())


def test_cli_builds_the_shortlist_and_rejects_bad_input(
    tiny_run: Path, tiny_corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    out = model_copy(tiny_run, tmp_path / "model")
    args = ["shortlist", "-m", str(out), "--train", str(tiny_corpus[0])]
    result = runner.invoke(app, [*args, "--best", "5", "--frequent", "7"])
    assert result.exit_code == 0, result.output
    assert (out / SHORTLIST_FILE).is_file() and "from 400 sentence pairs" in result.stderr
    assert load_shortlist(out, load_model(out)[0].cfg).candidates.size(1) == 5
    bad = runner.invoke(app, [*args, "--best", "0"])
    assert bad.exit_code == 1 and "--best 0 must be 1 or more" in bad.stderr
    missing = runner.invoke(app, [*args[:-1], str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "nowhere.de" in missing.stderr


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 4])
def test_search_equals_the_full_search_where_excluded_tokens_have_no_probability(
    folder: Path, lines: list[str], beam_size: int
) -> None:
    """With an output bias of -inf on every token outside the batch's candidates, the full
    softmax is the subset's: both searches must find the same outputs with the same scores."""
    biased, src = _biased_model(folder, lines)
    t = translator(folder, biased, beam_size=beam_size)
    _, full = search(t, lines)
    _, short = search(t, lines, shortlist=True)
    assert_float32_agree(biased, beam_size, full, short)


@pytest.mark.kernels
def test_search_check_fails_when_columns_are_not_mapped_back_to_ids(
    folder: Path, lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Companion of the test above: a search that keeps the subset's column numbers as token
    ids (the bug a shortlist invites) fails its check."""
    biased, _ = _biased_model(folder, lines)
    t = translator(folder, biased, beam_size=1)
    _, full = search(t, lines)
    monkeypatch.setattr(OutputVocab, "tokens", lambda self, columns: columns)
    _, short = search(t, lines, shortlist=True)
    with pytest.raises(AssertionError):
        assert_float32_agree(biased, 1, full, short)


def _biased_model(folder: Path, lines: list[str]) -> tuple[Transformer, torch.Tensor]:
    """``folder``'s model with an output bias of -inf outside the candidates of ``lines``
    searched as one batch, and that batch's candidate ids."""
    model, _ = load_model(folder)
    biased = Transformer(replace(model.cfg, output_bias=True))
    biased.load_state_dict(model.state_dict(), strict=False)
    t = translator(folder)
    vocab = t.load_shortlist().batch_vocab(t.source_batch(t.tokenizer.encode(lines)))
    with torch.no_grad():
        bias = torch.full((model.cfg.vocab_size,), float("-inf"))
        biased.output_bias.copy_(bias.index_fill_(0, vocab, 0.0))  # type: ignore[union-attr]
    return biased.eval(), vocab


@pytest.mark.kernels
def test_greedy_keeps_the_full_output_where_candidates_cover_it_and_not_otherwise(
    folder: Path, lines: list[str]
) -> None:
    """Where the batch's candidates hold every token of the full greedy output (EOS
    included), the shortlist's greedy output is the same (or first differs at a float32
    near-tie), scored by the distributions renormalized over the candidates. Where they do
    not (K = 3 is too small), the output differs: the missing token cannot be chosen."""
    model, _ = load_model(folder)
    t = translator(folder, beam_size=1)
    src, full = search(t, lines)
    _, short = search(t, lines, shortlist=True)
    vocab = t.load_shortlist().batch_vocab(src)
    allowed = set(vocab.tolist())
    covered = [x for x in full if set(full[x][0].tokens) <= allowed]
    missed = [x for x in full if x not in covered]
    print(f"{len(covered)} of {len(full)} full outputs covered by {len(allowed)} candidates")
    assert covered and missed
    for x in full:
        assert set(short[x][0].tokens) <= allowed
    for x in covered:
        a, b = full[x][0], short[x][0]
        if a.tokens != b.tokens:
            assert tie_gap(model, list(x), a.tokens, b.tokens) < FLOAT32_TIE
            continue
        expected = restricted_score(model, list(x), b, vocab)
        assert abs(b.score - expected) <= SCORE_TOL * (len(b.tokens) + 1)
        assert b.score >= a.score - SCORE_TOL  # renormalized over fewer tokens
    for x in missed:
        assert short[x][0].tokens != full[x][0].tokens


@pytest.mark.kernels
def test_beam_scores_are_the_renormalized_log_probabilities(folder: Path, lines: list[str]) -> None:
    """Beam search over the candidates: every hypothesis uses candidates only, and its score
    is the model's teacher-forced log-probability renormalized over them."""
    model, _ = load_model(folder)
    t = translator(folder, beam_size=4, nbest=4)
    src, short = search(t, lines, shortlist=True)
    vocab = t.load_shortlist().batch_vocab(src)
    for x, hyps in short.items():
        assert len(hyps) == 4
        for h in hyps:
            assert set(h.tokens) <= set(vocab.tolist())
            expected = restricted_score(model, list(x), h, vocab)
            assert abs(h.score - expected) <= SCORE_TOL * (len(h.tokens) + 1)


def test_target_prefix_tokens_are_always_allowed(folder: Path, lines: list[str]) -> None:
    """A prefix piece that no source's candidates hold is forced all the same."""
    t = translator(folder, beam_size=3, shortlist=True)
    shortlist = t.load_shortlist()
    vocab = set(shortlist.batch_vocab(t.source_batch(t.tokenizer.encode(lines[:2]))).tolist())
    pieces = t.tokenizer.vocabulary()
    word = next(
        p for i, p in enumerate(pieces) if p.startswith("▁") and len(p) > 4 and i not in vocab
    )
    prefix = word.replace("▁", "")
    assert any(i not in vocab for i in t.tokenizer.encode_target([prefix])[0])
    results = list(t.translate(lines[:2], target_prefixes=[prefix, ""]))
    assert results[0].text.startswith(prefix) and results[0].score > float("-inf")
    assert results[1].text


def test_refusals_name_the_flag_and_what_to_do(
    folder: Path, tiny_run: Path, tmp_path: Path, lines: list[str]
) -> None:
    with pytest.raises(ConfigError, match="--shortlist.*--sampling-topk"):
        DecodeConfig(beam_size=1, sampling_topk=0, shortlist=True)
    source = tmp_path / "in.de"
    source.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    scored = runner.invoke(
        app,
        ["translate", "-m", str(folder), "--shortlist", "--score-target", str(source), str(source)],
    )
    assert scored.exit_code == 1 and "--score-target" in scored.stderr
    assert "drop --shortlist" in scored.stderr
    none = runner.invoke(app, ["translate", "-m", str(tiny_run), "--shortlist", str(source)])
    assert none.exit_code == 1 and "no shortlist" in none.stderr
    assert f"nmt shortlist -m {tiny_run}" in none.stderr
    with pytest.raises(CheckpointError, match="nmt shortlist"):
        list(
            Translator.load(tiny_run, device="cpu").translate(
                lines[:1], DecodeConfig(shortlist=True)
            )
        )
    ok = runner.invoke(app, ["translate", "-m", str(folder), "--shortlist", str(source)])
    assert ok.exit_code == 0 and len(ok.stdout.splitlines()) == 3


@pytest.fixture(scope="module")
def exported(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_ctranslate2(folder, tmp_path_factory.mktemp("ct2") / "model")


def test_export_writes_the_vocabulary_map(
    folder: Path, exported: Path, tiny_run: Path, tmp_path: Path
) -> None:
    t = Translator.load(folder, device="cpu")
    shortlist: Shortlist = t.load_shortlist()
    rows = (exported / VMAP_FILE).read_text(encoding="utf-8").splitlines()
    pieces = t.tokenizer.vocabulary()
    assert rows[0] == "\t" + " ".join(pieces[i] for i in shortlist.always.tolist())
    hund = pieces.index("▁Hund")
    line = next(r for r in rows if r.startswith("▁Hund\t"))
    assert line.split("\t")[1].split() == [
        pieces[i] for i in shortlist.candidates[hund].tolist() if i >= 0
    ]
    plain = export_ctranslate2(tiny_run, tmp_path / "plain")
    assert not (plain / VMAP_FILE).exists()
    with pytest.raises(ConfigError, match="vmap.txt.*nmt shortlist"):
        list(
            CT2Translator.load(plain, device="cpu").translate(
                ["ein Hund"], DecodeConfig(shortlist=True)
            )
        )


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 4])
def test_ctranslate2_with_the_vocabulary_map_agrees_with_torch(
    folder: Path, exported: Path, lines: list[str], beam_size: int
) -> None:
    """Both engines search over the same candidates with the same renormalized softmax
    (CTranslate2's ``score_batch`` ignores the map: searches are compared). Beam search is
    compared on the sentences whose hypotheses all end before their length limit, where
    CTranslate2 collects differently (nmt.decode.ct2)."""
    decode = DecodeConfig(beam_size=beam_size, shortlist=True)
    engines = (
        Translator.load(folder, decode, device="cpu"),
        CT2Translator.load(exported, decode, device="cpu"),
    )
    found = [record_hypotheses(e) for e in engines]
    for e in engines:
        list(e.translate(lines))
    ours, theirs = found
    limits = dict(zip(ours, engines[1].limits([len(x) for x in ours])))
    model, _ = load_model(folder)
    if beam_size == 1:
        assert_float32_agree(model, 1, ours, theirs, limits)
    else:
        within = [x for x in ours if all(len(h.tokens) < limits[x] for h in ours[x] + theirs[x])]
        assert len(within) >= len(ours) // 2
        assert_beam_agree(
            {x: ours[x] for x in within}, {x: theirs[x] for x in within}, 0.05, SCORE_TOL
        )
    # The map is used: without it, CTranslate2's scores are the full softmax's, lower.
    full = record_hypotheses(
        plain := CT2Translator.load(exported, replace(decode, shortlist=False), device="cpu")
    )
    list(plain.translate(lines))
    gaps = [
        theirs[x][0].score - full[x][0].score
        for x in ours
        if theirs[x][0].tokens == full[x][0].tokens
    ]
    assert gaps and max(gaps) > 100 * SCORE_TOL


@pytest.mark.kernels
def test_an_ensemble_restricts_every_model_to_the_same_candidates(
    folder: Path, lines: list[str]
) -> None:
    """An ensemble of the model with itself (weights 0.5, 0.5) sums two equal distributions
    renormalized over the same candidates: the single model's shortlist search."""
    decode = DecodeConfig(beam_size=4, batch_size=64, shortlist=True)
    single = Translator.load(folder, decode, device="cpu")
    pair = Translator.load([folder, folder], decode, device="cpu")
    found = [record_hypotheses(t) for t in (single, pair)]
    for t in (single, pair):
        list(t.translate(lines[:12]))
    assert_float32_agree(load_model(folder)[0], 4, *found)
