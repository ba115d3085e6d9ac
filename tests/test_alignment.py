"""nmt.decode.alignment: word alignment from cross-attention (Garg et al. 2019).

The attention read is the one the model computes (checked against the layer's own output),
pieces are summed into whitespace words, every target word gets exactly one link in range, and
on a model trained on Multi30k a sentence whose word order changes aligns as a person would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from nmt.config import DecodeConfig, ModelConfig
from nmt.data.marian_vocab import MarianVocabulary
from nmt.data.targets import TaggedTokenizer, Targets, for_target
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.data.vocab import SeparateTokenizer, load_tokenizer, train_vocab
from nmt.decode.alignment import (
    check_layer,
    default_layer,
    pharaoh,
    piece_words,
    word_alignment,
)
from nmt.decode.translate import Translator
from nmt.errors import ConfigError
from nmt.model.transformer import Transformer


def test_pieces_map_to_whitespace_words() -> None:
    pieces = ["▁Der", "▁Mann", "▁ge", "se", "hen", "▁", "„", "ja", "“"]
    assert piece_words(pieces, 4) == [0, 1, 2, 2, 2, 3, 3, 3, 3]
    assert piece_words(["x", "▁y"], 2) == [0, 1]  # a first piece without "▁" is word 0
    assert piece_words(["▁a", "▁b", "▁c"], 2) == [0, 1, 1]  # clamped when counts differ


def test_word_alignment_sums_pieces_and_links_each_target_word_once() -> None:
    # 3 target pieces (words 0, 0, 1) + the EOS row; 4 source pieces (words 0, 1, 1, 2) + EOS.
    attention = torch.tensor(
        [
            [0.6, 0.1, 0.0, 0.2, 0.1],  # target word 0: source words 0.6, 0.3, 0.9 -> 2,
            [0.0, 0.1, 0.1, 0.7, 0.1],  # although this piece's own best is word 0
            [0.1, 0.25, 0.25, 0.3, 0.1],  # target word 1: 0.1, 0.5, 0.3 -> 1 (best piece: 2)
            [0.0, 0.0, 0.0, 0.0, 1.0],  # EOS row: ignored
        ]
    )
    links = word_alignment(attention, [0, 1, 1, 2], [0, 0, 1])
    assert links == [(2, 0), (1, 1)]
    assert pharaoh(links) == "2-0 1-1"


def test_layer_choice() -> None:
    assert [default_layer(n) for n in (1, 2, 3, 6)] == [0, 0, 1, 4]
    assert check_layer(None, 6) == 4 and check_layer(5, 6) == 5
    with pytest.raises(ConfigError, match="choose 0 to 2"):
        check_layer(3, 3)


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 16)


def assert_one_link_per_target_word(lines: list[str], results) -> None:  # type: ignore[no-untyped-def]
    for line, r in zip(lines, results):
        assert r.alignment is not None
        n_src, n_tgt = len(line.split()), len(r.text.split())
        assert [j for _, j in r.alignment] == list(range(n_tgt)), (line, r)
        assert all(0 <= i < n_src for i, _ in r.alignment), (line, r)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translations_carry_one_link_per_target_word(
    tiny_run: Path, lines: list[str], beam_size: int
) -> None:
    translator = Translator.load(tiny_run, DecodeConfig(beam_size=beam_size), device="cpu")
    inputs = ["", *lines, "  "]
    plain = list(translator.translate(inputs))
    aligned = list(translator.translate(inputs, DecodeConfig(beam_size=beam_size, alignment=True)))
    assert [r.alignment for r in plain] == [None] * len(inputs)  # only when asked, per call
    assert [(r.text, r.score) for r in aligned] == [(r.text, r.score) for r in plain]
    assert aligned[0].alignment == [] and aligned[-1].alignment == []
    assert_one_link_per_target_word(lines, aligned[1:-1])
    with pytest.raises(ConfigError, match="alignment_layer=2"):
        list(translator.translate(lines[:1], DecodeConfig(alignment=True, alignment_layer=2)))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, multi30k_dir: Path, multi30k) -> Path:
    """The tiny preset with 3 decoder layers trained on all of Multi30k for 1500 updates (the
    recipe of test_train's learning test, about 10 minutes on one idle core), or the de→en
    model folder named by ``NMT_TRAINED_DE_EN`` (e.g. ``runs/demo/averaged`` of ``make
    demo``), to check a model trained elsewhere or to skip the training."""
    from conftest import make_tiny_model_config, make_tiny_train_config

    from nmt.train.run import train

    if given := os.environ.get("NMT_TRAINED_DE_EN"):
        return Path(given)
    tmp = tmp_path_factory.mktemp("aligned")
    for lang in ("de", "en"):
        (tmp / f"valid.{lang}").write_text(
            "".join(line + "\n" for line in multi30k("val", lang, 100)), encoding="utf-8"
        )
    train(
        multi30k_dir / "train",
        tmp / "valid",
        tmp / "run",
        make_tiny_model_config(vocab_size=4000, n_decoder_layers=3),
        make_tiny_train_config(
            batch_tokens=4096,
            lr=3e-3,
            warmup_steps=400,
            max_steps=1500,
            eval_every=1500,
            save_every=1500,
            log_every=100,
        ),
    )
    return tmp / "run"


@pytest.mark.slow
def test_reordered_sentence_aligns_as_a_person_would(trained_run: Path, multi30k) -> None:
    """German puts the participle last: "Der Mann hat einen Hund gesehen ." → "The man has
    seen a dog ." A monotone (diagonal) alignment would link seen↔einen and dog↔gesehen; the
    penultimate layer's attention must link seen↔gesehen and dog↔Hund. The English is forced
    as a target prefix, so the test does not depend on the model's own wording."""
    translator = Translator.load(trained_run, DecodeConfig(beam_size=1), device="cpu")
    line, english = "Der Mann hat einen Hund gesehen .", "The man has seen a dog ."
    decode = DecodeConfig(beam_size=1, alignment=True)
    (result,) = translator.translate([line], decode, [english])
    assert result.text.startswith(english)
    links = dict((j, i) for i, j in result.alignment or [])
    src = line.split()
    assert src[links[3]] == "gesehen" and src[links[5]] == "Hund", result
    assert src[links[0]] == "Der" and src[links[1]] == "Mann", result
    lines = multi30k("test_2016_flickr", "de", 50)
    assert_one_link_per_target_word(lines, list(translator.translate(lines, decode)))


def uniform_translator(
    tokenizer: Tokenizer, unk_only: bool = False, targets: Targets | None = None, **ids: int
) -> Translator:
    """A random model over ``tokenizer``'s vocabulary whose cross-attention queries are 0:
    every target piece then attends equally to every source piece (and EOS), so summed into
    words, each target word links to the source word of the most pieces, the first of those
    on a tie (argmax). ``unk_only``: its output is ``<unk>`` at every step; ``targets``: the
    model's target languages (default: those of ``tokenizer``)."""
    src_size = tokenizer.src_vocab_size
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        src_vocab_size=src_size if src_size != tokenizer.vocab_size else 0,
        d_model=32,
        n_heads=4,
        ffn_dim=64,
        n_encoder_layers=1,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=128,
        output_bias=unk_only,
        **ids,
    )
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for layer in model.decoder_layers:
            layer.cross_attn.q_proj.weight.zero_()
            layer.cross_attn.q_proj.bias.zero_()
        if model.output_bias is not None:
            model.output_bias[tokenizer.unk_id] = 100.0
    decode = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=6, alignment=True)
    return Translator(model, tokenizer, decode, targets=targets)


def most_pieces(sp: spm.SentencePieceProcessor, line: str) -> int:
    """The first whitespace word of ``line`` with the most pieces of ``sp``."""
    counts = [len(sp.Encode(word, out_type=str)) for word in line.split()]
    return counts.index(max(counts))


def marian_folder(folder: Path, spm_text: dict[str, list[str]]) -> Path:
    """vocab.json (``</s>`` 0, ``<unk>`` 1, both models' pieces, ``>>fra<<``, ``<pad>`` last)
    over source.spm (German, 300 pieces) and target.spm (English, 200): an imported Marian
    model's vocabulary."""
    pieces = ["</s>", "<unk>"]
    for name, lang, size in (("source.spm", "de", 300), ("target.spm", "en", 200)):
        train_tokenizer(spm_text[lang], folder / name, size)
        sp = spm.SentencePieceProcessor(model_file=str(folder / name))
        pieces += [p for p in map(sp.IdToPiece, range(4, sp.GetPieceSize())) if p not in pieces]
    vocab = {p: i for i, p in enumerate([*pieces, ">>fra<<", "<pad>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def layouts(
    tmp_path_factory: pytest.TempPathFactory, spm_model: Path, tagged_spm: Path, spm_text
) -> dict[str, tuple[Tokenizer, spm.SentencePieceProcessor, dict[str, int]]]:
    """Each vocabulary layout's tokenizer, the SentencePiece model of its source side, and the
    model's special ids: joint, separate (German 300 pieces, English 200), a multilingual
    model's source tagged <2en>, an imported Marian model, and that one with --tgt-lang."""
    folder = tmp_path_factory.mktemp("layouts")
    train_vocab(spm_text["de"], spm_text["en"], folder, 200, 300)
    separate = load_tokenizer(folder)
    assert isinstance(separate, SeparateTokenizer)
    marian = MarianVocabulary(marian_folder(tmp_path_factory.mktemp("marian"), spm_text))
    marian_ids = {"pad_id": marian.pad_id, "bos_id": marian.bos_id, "eos_id": marian.eos_id}
    joint = Tokenizer(spm_model)
    return {
        "joint": (joint, joint.sp, {}),
        "separate": (separate, separate.source.sp, {}),
        "tagged": (TaggedTokenizer(Tokenizer(tagged_spm), "en"), Tokenizer(tagged_spm).sp, {}),
        "marian": (marian, marian.sp, marian_ids),
        "marian-tgt-lang": (for_target(marian, [], "fra"), marian.sp, marian_ids),
    }


@pytest.mark.parametrize("layout", ["joint", "separate", "tagged", "marian", "marian-tgt-lang"])
def test_source_words_are_read_with_the_source_pieces_without_the_tag(
    layouts, layout: str, lines: list[str]
) -> None:
    """Attention spread evenly over the source pieces links every target word to the source
    word of the most pieces. A separate layout's source ids were read with the target's
    pieces (other words), and an added tag was source word 0 (every index one too far)."""
    tokenizer, source_sp, ids = layouts[layout]
    translator = uniform_translator(tokenizer, **ids)
    results = list(translator.translate(lines[:8], target_prefixes=["A man in a blue"] * 8))
    for line, r in zip(lines, results):
        n_tgt = len(r.text.split())
        assert n_tgt >= 5, r
        assert r.alignment == [(most_pieces(source_sp, line), j) for j in range(n_tgt)], line


def test_a_target_language_given_per_call_is_read_as_the_tag(layouts, lines: list[str]) -> None:
    """An untagged Marian translator asked for ``tgt_lang="fra"`` in the call: its sources
    get the tag, and the word alignment reads them with that call's tokenizer (it read them
    with the untagged one, so the tag was source word 0 and every index one too far)."""
    tokenizer, source_sp, ids = layouts["marian"]
    translator = uniform_translator(tokenizer, **ids)
    prefixes = ["A man in a blue"] * 8
    results = list(translator.translate(lines[:8], target_prefixes=prefixes, tgt_lang="fra"))
    for line, r in zip(lines, results):
        n_tgt = len(r.text.split())
        assert n_tgt >= 5, r
        assert r.alignment == [(most_pieces(source_sp, line), j) for j in range(n_tgt)], line


@pytest.mark.parametrize("layout", ["tagged", "marian", "marian-tgt-lang"])
def test_a_tag_written_at_the_start_of_the_line_is_no_source_word(
    layouts, layout: str, lines: list[str], tagged_spm: Path
) -> None:
    """Lines that start with their own target tag (``>>fra<< Ein Mann ...``), untagged by the
    tokenizer or tagged with the same language too (``--tgt-lang fra``), align as the lines
    without it: source word 0 is the first word after the tag. (The tag was source word 0,
    every index one too far.) "tagged": a multilingual model's ``<2en>``, with ``<2en>``."""
    tokenizer, source_sp, ids = layouts[layout]
    targets, tag = None, ">>fra<<"
    if layout == "tagged":
        targets, tag = Targets(Tokenizer(tagged_spm), ["de-en", "en-de"], None, None), "<2en>"
    translator = uniform_translator(tokenizer, targets=targets, **ids)
    tagged = [f"{tag} {line}" for line in lines[:8]]
    results = list(translator.translate(tagged, target_prefixes=["A man in a blue"] * 8))
    for line, r in zip(lines, results):
        n_tgt = len(r.text.split())
        assert n_tgt >= 5, r
        assert r.alignment == [(most_pieces(source_sp, line), j) for j in range(n_tgt)], line


@pytest.mark.parametrize("layout", ["joint", "separate", "tagged", "marian"])
@pytest.mark.parametrize("beam_size", [1, 2])
def test_an_output_that_detokenizes_to_nothing_has_no_links(
    layouts, layout: str, beam_size: int, lines: list[str]
) -> None:
    """Only <unk> pieces: the text is empty and so is the alignment (it raised IndexError)."""
    tokenizer, _, ids = layouts[layout]
    translator = uniform_translator(tokenizer, unk_only=True, **ids)
    decode = DecodeConfig(beam_size=beam_size, max_len_a=0.0, max_len_b=4, alignment=True)
    results = list(translator.translate(lines[:3], decode))
    assert [(r.text, r.alignment) for r in results] == [("", [])] * 3
