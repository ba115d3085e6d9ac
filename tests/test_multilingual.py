"""Multilingual models (:mod:`nmt.data.multilingual`): pairs, target tags, temperature sampling,
per-direction validation, and translating into a chosen language."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from agreement import (
    assert_float32_agree,
    assert_scores_agree,
    chrf,
    found_from_answers,
    translate_recorded,
)
from serve_client import serving
from typer.testing import CliRunner

from cli.main import app
from nmt.config import DecodeConfig
from nmt.data.multilingual import (
    MultiCorpus,
    epoch_counts,
    pair_prefix,
    parse_pairs,
    sampling_probabilities,
)
from nmt.data.parallel import ParallelData
from nmt.data.targets import TaggedTokenizer, for_target
from nmt.data.tokenizer import Tokenizer
from nmt.decode.translate import Translator
from nmt.errors import ConfigError, InputError
from nmt.model.checkpoint import load_model, load_weights
from nmt.train.run import train


def test_one_model_translates_both_ways_by_the_tag(both_ways: Path, short_pairs) -> None:
    de, en = short_pairs
    to_en = Translator.load(both_ways, DecodeConfig(beam_size=1), device="cpu", tgt_lang="en")
    to_de = Translator.load(both_ways, DecodeConfig(beam_size=1), device="cpu", tgt_lang="de")
    assert [t.text for t in to_en.translate(de)] == en
    assert [t.text for t in to_de.translate(en)] == de
    config = json.loads((both_ways / "config.json").read_text())
    assert config["pairs"] == ["de-en", "en-de"] and config["tgt_lang"] == "de,en"
    records = [json.loads(line) for line in (both_ways / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["type"] == "valid"][-1]
    assert set(valid["directions"]) == {"de-en", "en-de"}
    assert valid["bleu"] == pytest.approx(
        np.mean([d["bleu"] for d in valid["directions"].values()])
    )
    assert valid["bleu"] == pytest.approx(100.0)


def test_target_language_is_required_and_checked(both_ways: Path, short_pairs) -> None:
    """Without --tgt-lang, a line of a model of several target languages must carry its tag
    (one piece, as --tgt-lang puts it); a line without one is refused, naming the choices; a
    line with a tag and --tgt-lang of another language is refused; the same tag is kept once."""
    de, en = short_pairs
    untagged = Translator.load(both_ways, DecodeConfig(beam_size=1), device="cpu")
    with pytest.raises(InputError, match="input line 2: the model translates into de, en; "
                       "choose one with --tgt-lang"):  # fmt: skip
        list(untagged.translate(["<2en> " + de[0], de[1]]))
    assert [t.text for t in untagged.translate([f"<2en> {s}" for s in de])] == en
    to_en = Translator.load(both_ways, DecodeConfig(beam_size=1), device="cpu", tgt_lang="en")
    assert [t.text for t in to_en.translate([f"<2en> {s}" for s in de])] == en  # one tag
    with pytest.raises(InputError, match="input line 1 starts with the target tag <2de>"):
        list(to_en.translate([f"<2de> {de[0]}"]))
    with pytest.raises(ConfigError, match="--tgt-lang fr: the model translates into de, en only"):
        Translator.load(both_ways, device="cpu", tgt_lang="fr")
    runner = CliRunner()
    result = runner.invoke(
        app, ["translate", "-m", str(both_ways), "--tgt-lang", "de"], input="A dog.\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    refused = runner.invoke(app, ["translate", "-m", str(both_ways)], input="A dog.\n")
    assert refused.exit_code == 1 and "--tgt-lang" in refused.stderr, refused.output


BLANKS = ["", "   ", "<2en>"]  # no text: an empty translation whatever the tag


def test_blank_lines_stay_empty_under_a_target_tag(both_ways: Path, short_pairs) -> None:
    """A blank line of a tagged model is not searched: its id list held the tag alone, and the
    model invented a sentence for it. The Python API, the CLI, the server and LibreTranslate's
    "a\\n\\nb" all give an empty output (score 0) and translate the other lines as alone."""
    from nmt.serve.registry import load_models

    de, en = short_pairs
    to_en = Translator.load(both_ways, DecodeConfig(beam_size=1), device="cpu", tgt_lang="en")
    results = list(to_en.translate([de[0], *BLANKS, de[1]]))
    assert [(t.text, t.score) for t in results[1:-1]] == [("", 0.0)] * len(BLANKS)
    assert results[0].text and results[-1].text
    runner = CliRunner()
    out = runner.invoke(
        app, ["translate", "-m", str(both_ways), "--tgt-lang", "en", "--beam-size", "1"],
        input=f"{de[0]}\n\n{de[1]}\n",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert [bool(line) for line in out.stdout.split("\n")[:3]] == [True, False, True]
    models = load_models([f"m={both_ways}"], "torch", "cpu")
    with serving(models) as client:
        body = {"src": [de[0], *BLANKS], "tgt_lang": "en", "beam_size": 1, "return_scores": True}
        answer = client.post("/v1/translate", json=body).json()["translations"]
        assert [(t["text"], t["score"]) for t in answer[1:]] == [("", 0.0)] * len(BLANKS)
        assert answer[0]["text"]
        lt = {"q": f"{de[0]}\n\n{de[1]}", "source": "de", "target": "en"}
        text = client.post("/translate", json=lt).json()["translatedText"]
        assert text.split("\n")[1] == "" and len(text.split("\n")) == 3


def test_blank_lines_stay_empty_on_the_ctranslate2_engine(
    both_ways: Path, tmp_path: Path, short_pairs
) -> None:
    """The same on the CTranslate2 engine: a blank line under a tag gives an empty output."""
    from nmt.decode.ct2 import CT2Translator
    from nmt.interop.export import export_ctranslate2

    de, en = short_pairs
    exported = export_ctranslate2(both_ways, tmp_path / "ct2")
    ct2 = CT2Translator.load(exported, DecodeConfig(beam_size=1), device="cpu", tgt_lang="en")
    results = list(ct2.translate([de[0], *BLANKS, de[1]]))
    assert [(t.text, t.score) for t in results[1:-1]] == [("", 0.0)] * len(BLANKS)
    assert results[0].text and results[-1].text


@pytest.mark.kernels
def test_ctranslate2_export_translates_into_the_chosen_language(
    both_ways: Path, tmp_path: Path, short_pairs
) -> None:
    """The export with --tgt-lang de: the torch engine's forced scores, its greedy outputs
    (compared as two numeric paths, ``agreement.py``), and German (chrF against the pairs)."""
    from nmt.decode.ct2 import CT2Translator
    from nmt.interop.export import export_ctranslate2

    exported = export_ctranslate2(both_ways, tmp_path / "ct2")
    assert json.loads((exported / "nmt.json").read_text())["pairs"] == ["de-en", "en-de"]
    de, en = short_pairs
    ct2 = CT2Translator.load(exported, DecodeConfig(beam_size=1), device="cpu", tgt_lang="de")
    ours = Translator.load(both_ways, DecodeConfig(beam_size=1), device="cpu", tgt_lang="de")
    lengths = [len(t) + 1 for t in ours.tokenizer.encode_target(de)]
    assert_scores_agree(lengths, list(ct2.score_targets(en, de)), list(ours.score_targets(en, de)))
    translations, found_ct2 = translate_recorded(ct2, en)
    _, found_ours = translate_recorded(ours, en)
    limits = dict(zip(found_ours, ct2.limits([len(src) for src in found_ours])))
    assert_float32_agree(load_model(both_ways)[0], 1, found_ours, found_ct2, limits)
    assert chrf([t.text for t in translations], de) > 90  # learned by heart, in German


def test_tagged_tokenizer_prepends_the_tag(tagged_spm: Path) -> None:
    base = Tokenizer(tagged_spm)
    tagged = TaggedTokenizer(base, "de")
    line = "Ein Hund läuft."
    assert tagged.encode([line]) == [[base.sp.PieceToId("<2de>"), *base.encode([line])[0]]]
    assert tagged.pieces(line) == ["<2de>", *base.pieces(line)]
    assert tagged.decode(base.encode([line])) == [line]
    assert base.pieces("<2de>") != ["▁<2de>"] and "<2de>" in base.pieces("<2de> x")
    with pytest.raises(ConfigError, match="no <2fr> tag"):
        TaggedTokenizer(base, "fr")
    assert for_target(base, [], None) is base  # a one-pair model: no tag
    assert isinstance(for_target(base, ["de-en"], None), TaggedTokenizer)  # one target


def test_pairs_are_checked() -> None:
    assert parse_pairs("de-en, fr-en") == ("de-en", "fr-en")
    for bad, message in (
        ("de-de", "not a pair of two languages"),
        ("de_en", "not a pair"),
        ("de-en,de-en", "names a pair twice"),
        ("", "at least one"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_pairs(bad)


def test_temperature_sampling_shares() -> None:
    sizes = [10_000, 1_000, 100]
    np.testing.assert_allclose(sampling_probabilities(sizes, 1.0), np.array(sizes) / 11_100)
    flat = sampling_probabilities(sizes, 1000.0)
    np.testing.assert_allclose(flat, [1 / 3] * 3, atol=0.01)
    p5 = sampling_probabilities(sizes, 5.0)
    assert p5[0] > p5[1] > p5[2] and p5[2] > 100 / 11_100  # flattened towards small pairs
    counts = epoch_counts(sizes, 5.0)
    assert counts[0] == 10_000 and all(c >= n for c, n in zip(counts, sizes))
    np.testing.assert_allclose(np.array(counts) / sum(counts), p5, atol=1e-4)
    assert epoch_counts(sizes, 1.0) == sizes  # T = 1: every example once
    with pytest.raises(ConfigError, match="must be positive"):
        sampling_probabilities(sizes, 0.0)


def test_multi_corpus_mixes_pairs_with_their_tags() -> None:
    big = ParallelData([[10 + i] for i in range(50)], [[100 + i, 1] for i in range(50)])
    small = ParallelData([[60 + i, 7] for i in range(5)], [[200 + i] for i in range(5)])
    corpus = MultiCorpus([big, small], [4, 5], temperature=5.0, seed=3)
    assert corpus.counts == epoch_counts([50, 5], 5.0) and len(corpus) == sum(corpus.counts)
    tags = [int(corpus.pair(i)[0][0]) for i in range(len(corpus))]
    assert tags.count(4) == corpus.counts[0] and tags.count(5) == corpus.counts[1]
    for i in range(len(corpus)):
        src, tgt = corpus.pair(i)
        assert len(src) == corpus.src_lens[i] and len(tgt) == corpus.tgt_lens[i]
        assert (src[1] < 60) == (src[0] == 4)  # a source of the big pair has its tag
    small_sources = [tuple(corpus.pair(i)[0]) for i in range(len(corpus)) if tags[i] == 5]
    assert set(small_sources) == {(5, 60 + i, 7) for i in range(5)}  # all of them, repeated
    again = MultiCorpus([big, small], [4, 5], temperature=5.0, seed=3)
    assert np.array_equal(again.local, corpus.local)


def test_pair_prefix_prefers_per_pair_files(tmp_path: Path, corpus_writer) -> None:
    corpus_writer(tmp_path / "train", ["a"], ["b"])  # train.de, train.en
    assert pair_prefix(tmp_path / "train", "de-en") == str(tmp_path / "train")
    (tmp_path / "train.fr-en.fr").write_text("c\n")
    (tmp_path / "train.fr-en.en").write_text("d\n")
    assert pair_prefix(tmp_path / "train", "fr-en") == str(tmp_path / "train.fr-en")


def test_cli_refuses_bad_pairs(tmp_path: Path, corpus_writer) -> None:
    prefix = corpus_writer(tmp_path / "c", ["Ein Hund."], ["A dog."])
    runner = CliRunner()
    base = ["train", "--train", str(prefix), "--valid", str(prefix), "-o", str(tmp_path / "r")]
    bad = runner.invoke(app, [*base, "--pairs", "de-de"])
    assert bad.exit_code != 0 and "not a pair of two languages" in bad.output
    missing = runner.invoke(app, [*base, "--pairs", "de-en,fr-en"])
    assert missing.exit_code != 0 and "c.fr" in missing.output
    separate = runner.invoke(app, [*base, "--pairs", "de-en", "--vocab-layout", "separate"])
    assert separate.exit_code != 0 and "one joint vocabulary" in separate.output
    assert not (tmp_path / "r").exists()


def test_multilingual_resume_equals_uninterrupted_training(
    tmp_path: Path, tagged_spm, spm_text, corpus_writer, tiny_model_config, tiny_train_config
) -> None:
    """de-en and en-de mixed at T=5 from pairs of different sizes (so that the smaller is
    repeated): 12 updates straight = 5, stop, resume to 12, bit for bit."""
    big = corpus_writer(tmp_path / "train.de-en", spm_text["de"][:300], spm_text["en"][:300])
    corpus_writer(tmp_path / "train.en-de", spm_text["de"][300:360], spm_text["en"][300:360])
    prefix = tmp_path / "train"
    assert pair_prefix(prefix, "en-de") == f"{prefix}.en-de" and big.name == "train.de-en"
    valid = corpus_writer(tmp_path / "valid", spm_text["de"][-5:], spm_text["en"][-5:])
    model_cfg = tiny_model_config(dropout=0.1)

    def recipe(max_steps: int):  # type: ignore[no-untyped-def]
        return tiny_train_config(
            pairs=("de-en", "en-de"), pair_sampling_temperature=5.0, max_steps=max_steps,
            eval_every=1000, save_every=1000,
        )  # fmt: skip

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(prefix, valid, straight, model_cfg, recipe(12), spm_path=tagged_spm)
    train(prefix, valid, split, model_cfg, recipe(5), spm_path=tagged_spm)
    train(prefix, valid, split, model_cfg, recipe(12), spm_path=tagged_spm)
    expected = load_weights(straight / "last.safetensors")
    resumed = load_weights(split / "last.safetensors")
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    assert sorted(p.name for p in (split / "data").iterdir()) == ["de-en", "en-de"]


def test_tgt_lang_of_a_one_pair_model_must_be_its_own(tiny_run: Path) -> None:
    assert Translator.load(tiny_run, device="cpu", tgt_lang="en").tokenizer.encode(["x"]) == (
        Translator.load(tiny_run, device="cpu").tokenizer.encode(["x"])
    )
    with pytest.raises(ConfigError, match="--tgt-lang fr: the model translates into en only"):
        Translator.load(tiny_run, device="cpu", tgt_lang="fr")


@pytest.mark.kernels
def test_serve_picks_the_target_language_on_the_ctranslate2_engine(
    both_ways: Path, tmp_path: Path, short_pairs
) -> None:
    """The exported two-way model, served by CTranslate2: each request's tgt_lang picks the
    direction: greedy outputs that agree with the torch engine's (``agreement.py``) and reproduce
    the pairs learned by heart (chrF)."""
    from nmt.interop.export import export_ctranslate2
    from nmt.serve.registry import load_models

    exported = export_ctranslate2(both_ways, tmp_path / "ct2")
    models = load_models([f"m={exported}"], "ctranslate2", "cpu")
    assert models["m"].engine == "ctranslate2"
    model = load_model(both_ways)[0]
    with serving(models) as client:
        de, en = short_pairs
        for src, tgt_lang, ref in ((de, "en", en), (en, "de", de)):
            body = {"src": src, "tgt_lang": tgt_lang, "beam_size": 1, "return_scores": True}
            answer = client.post("/v1/translate", json=body).json()["translations"]
            ours = Translator.load(
                both_ways, DecodeConfig(beam_size=1), device="cpu", tgt_lang=tgt_lang
            )
            _, found_ours = translate_recorded(ours, src)
            tokenizer = ours.tokenizer
            served = found_from_answers(
                tokenizer, tokenizer.encode(src), [(t["text"], t["score"]) for t in answer], 1.0
            )
            assert_float32_agree(model, 1, found_ours, served)
            assert chrf([t["text"] for t in answer], ref) > 90  # the language asked for
