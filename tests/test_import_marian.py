"""``nmt import marian`` (``nmt.interop.import_marian``) against Hugging Face's ``MarianMTModel``.

No network: the test builds a tiny ``MarianMTModel`` with random weights itself, with two
SentencePiece models trained on Multi30k lines (de for the source, en for the target) and a
``vocab.json`` over both with Marian's special ids (``</s>`` 0, ``<unk>`` 1, ``<pad>`` last),
saves it with ``save_pretrained`` and imports it. A random model has flat distributions full of
near-ties; a large random ``final_logits_bias`` makes them peaked, so that both
implementations' searches pick the same tokens wherever float32 rounding does not decide; where
it does, outputs are compared as ``tests/agreement.py`` compares two numeric paths (the same
tokens with the same scores, or a first difference at a near-tie), never as exact strings.
Needs ``transformers`` (the ``hf`` extra, which ``make install`` installs).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from agreement import (
    BEAM_NORMALIZED_TOL,
    FLOAT32_TIE,
    SCORE_TOL,
    Found,
    assert_beam_agree,
    assert_float32_agree,
    assert_greedy_agree,
    record_hypotheses,
    teacher_forced_log_probs,
)
from serve_client import serving
from typer.testing import CliRunner

from cli.main import app
from nmt.config import DecodeConfig
from nmt.data.marian_vocab import MarianVocabulary
from nmt.data.parallel import pad
from nmt.data.targets import TaggedTokenizer
from nmt.data.tokenizer import train_tokenizer
from nmt.data.vocab import load_tokenizer
from nmt.decode.beam import beam_search
from nmt.decode.forced import normalized
from nmt.decode.search import Hypothesis, greedy_search, length_penalty
from nmt.decode.translate import Translator
from nmt.errors import CheckpointError, ConfigError, InputError
from nmt.interop.import_marian import import_marian
from nmt.model.checkpoint import load_model, load_weights
from nmt.model.transformer import Transformer

SPM_LINES, SPM_VOCAB = 2000, 400
N_PAIRS = 40  # Multi30k validation pairs compared
MAX_NEW = 24  # tokens before EOS, for both searches
TAG = ">>fra<<"


def write_vocab(folder: Path, source: Path, target: Path) -> dict[str, int]:
    """``vocab.json``: ``</s>`` 0, ``<unk>`` 1, the pieces of both models, a target tag,
    ``<pad>`` last (the layout of Hugging Face's OPUS-MT conversion)."""
    import sentencepiece as spm

    pieces = ["</s>", "<unk>"]
    for path in (source, target):
        sp = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(4, sp.GetPieceSize()):  # 0-3: nmt's pad, unk, bos, eos
            if sp.IdToPiece(i) not in pieces:
                pieces.append(sp.IdToPiece(i))
    vocab = {p: i for i, p in enumerate([*pieces, TAG, "<pad>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return vocab


def make_hf_model(vocab: dict[str, int], **overrides: Any) -> Any:
    """A random ``MarianMTModel`` with OPUS-MT's options and peaked output distributions."""
    pad = vocab["<pad>"]
    values: dict[str, Any] = dict(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        share_encoder_decoder_embeddings=True,
    )
    config = transformers.MarianConfig(**{**values, **overrides})
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # beyond HF's near-zero init
            p.add_(torch.randn_like(p) * (0.3 if "layer_norm" in name else 0.2))
        torch.manual_seed(1)
        model.final_logits_bias.copy_(torch.randn(1, len(vocab)) * 4.0)
        # EOS near the top: some hypotheses end early, others run to the length limit.
        model.final_logits_bias[0, 0] = 10.0
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, multi30k: Any) -> Path:
    """A ``save_pretrained`` folder with the tokenizer files beside it."""
    folder = tmp_path_factory.mktemp("hf-marian")
    source, target = folder / "source.spm", folder / "target.spm"
    train_tokenizer(multi30k("train", "de", SPM_LINES), source, SPM_VOCAB)
    train_tokenizer(multi30k("train", "en", SPM_LINES), target, SPM_VOCAB)
    for path in (source, target):
        path.with_suffix(".vocab").unlink()
    vocab = write_vocab(folder, source, target)
    make_hf_model(vocab).save_pretrained(folder)
    config = {"source_lang": "de", "target_lang": "en", "separate_vocabs": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def imported(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_marian(hf_dir, tmp_path_factory.mktemp("imported") / "model")


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path) -> Any:
    return transformers.MarianMTModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def pairs(multi30k: Any) -> tuple[list[str], list[str]]:
    return multi30k("val", "de", N_PAIRS), multi30k("val", "en", N_PAIRS)


def source_batch(tokenizer: MarianVocabulary, lines: list[str]) -> torch.Tensor:
    """``(batch, src_len)`` ids ending in EOS, padded with ``<pad>``."""
    return pad(tokenizer.encode(lines), suffix=tokenizer.eos_id, pad_id=tokenizer.pad_id)


def test_tokenization_equals_marian_tokenizer(
    imported: Path, hf_dir: Path, pairs: tuple[list[str], list[str]]
) -> None:
    ours = load_tokenizer(imported)
    assert isinstance(ours, MarianVocabulary)
    theirs = transformers.MarianTokenizer(
        *(str(hf_dir / name) for name in ("source.spm", "target.spm", "vocab.json"))
    )
    lines = [*pairs[0], f"{TAG} {pairs[0][0]}", "Zürich ☃ 𝔘"]  # a tag, unknown pieces
    expected = [ids[:-1] for ids in theirs(lines)["input_ids"]]  # without EOS
    assert ours.encode(lines) == expected
    assert ours.encode([f"{TAG} x"])[0][0] == ours.ids[TAG] and ours.target_tags == [TAG]
    target = theirs(text_target=pairs[1])["input_ids"]
    assert ours.encode_target(pairs[1]) == [ids[:-1] for ids in target]
    assert ours.decode(ours.encode_target(pairs[1][:5])) == pairs[1][:5]
    assert (ours.eos_id, ours.unk_id, ours.pad_id) == (0, 1, ours.vocab_size - 1)


def test_output_with_source_only_pieces_decodes_as_marian_tokenizer(
    imported: Path, hf_dir: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """A piece of ``vocab.json`` that only ``source.spm`` knows (a German word the model
    copies into its English output) is text with spaces, as transformers writes it, not
    ``▁Anlegestelle▁Anlegestelle``."""
    import sentencepiece as spm

    ours = load_tokenizer(imported)
    assert isinstance(ours, MarianVocabulary)
    theirs = transformers.MarianTokenizer(
        *(str(hf_dir / name) for name in ("source.spm", "target.spm", "vocab.json"))
    )
    target_sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "target.spm"))
    source_only = [
        i
        for i, piece in enumerate(ours.pieces_by_id)
        if i not in ours.special_ids
        and piece not in ours.target_tags
        and target_sp.PieceToId(piece) == target_sp.unk_id()
    ]
    word_starts = [i for i in source_only if ours.piece(i).startswith("▁")][:3]
    inside = [i for i in source_only if not ours.piece(i).startswith("▁")][:1]
    assert len(word_starts) == 3 and inside, "the two tokenizers should differ"
    known = ours.encode_target(pairs[1][:3])
    outputs = [
        [word_starts[0], word_starts[0], ours.eos_id],
        known[0][:3] + [word_starts[1], *inside] + known[0][3:],
        [word_starts[2], *known[1]],
        known[2] + [word_starts[0]],
    ]
    expected = [theirs.decode(ids, skip_special_tokens=True) for ids in outputs]
    assert all("▁" not in text for text in expected)
    assert ours.decode(outputs) == expected


@pytest.mark.kernels
def test_teacher_forced_log_probs_equal_hugging_face(
    imported: Path, hf_model: Any, pairs: tuple[list[str], list[str]]
) -> None:
    model, _ = load_model(imported)
    tokenizer = MarianVocabulary(imported)
    src = source_batch(tokenizer, pairs[0])
    tgt = tokenizer.encode_target(pairs[1])
    tgt_in = pad(tgt, prefix=tokenizer.pad_id, pad_id=tokenizer.pad_id)  # decoder starts at pad
    real = pad(tgt, suffix=tokenizer.eos_id, pad_id=-1) != -1  # (batch, tgt_len) scored places
    with torch.no_grad():
        ours = torch.log_softmax(model.logits(model(src, tgt_in)), -1)
        theirs = hf_model(
            input_ids=src, attention_mask=src != tokenizer.pad_id, decoder_input_ids=tgt_in
        ).logits.log_softmax(-1)
    assert real.sum() > 500
    torch.testing.assert_close(ours[real], theirs[real], atol=SCORE_TOL, rtol=0)


def hf_generate(hf_model: Any, src: torch.Tensor, pad_id: int, **kwargs: Any) -> list[list[int]]:
    """``generate()``'s outputs without the start token, cut before EOS. ``bad_words_ids``
    forbids PAD, as OPUS-MT's generation configs do (and nmt's search); ``forced_eos_token_id``
    ends a hypothesis at the length limit with EOS, as nmt's search does."""
    out = hf_model.generate(
        input_ids=src,
        attention_mask=src != pad_id,
        max_new_tokens=MAX_NEW + 1,
        bad_words_ids=[[pad_id]],
        do_sample=False,
        **kwargs,
    )
    results = []
    for row in out[:, 1:].tolist():
        results.append(row[: row.index(0)] if 0 in row else row)
    return results


def hf_found(
    hf_model: Any, tokenizer: MarianVocabulary, ids: list[list[int]], outputs: list[list[int]]
) -> Found:
    """``generate()``'s ``outputs`` for the sources ``ids`` (without EOS) as hypotheses scored
    by Hugging Face: the teacher-forced log-probability of each output and EOS in
    ``hf_model`` (``normalized`` with length penalty 0, as the searches here rank)."""
    eos, start = tokenizer.eos_id, tokenizer.pad_id
    src = pad(ids, suffix=eos, pad_id=start)
    tgt_in = pad(outputs, prefix=start, pad_id=start)
    labels = pad(outputs, suffix=eos, pad_id=-1)  # (batch, tgt_len + 1), -1 where padded
    with torch.no_grad():
        logp = hf_model(
            input_ids=src, attention_mask=src != start, decoder_input_ids=tgt_in
        ).logits.log_softmax(-1)
    token_logp = logp.gather(2, labels.clamp(min=0)[:, :, None])[:, :, 0]
    scores = token_logp.masked_fill(labels == -1, 0.0).sum(1).tolist()
    return {
        tuple(s): [Hypothesis(t, score, normalized(score, len(t), 0.0))]
        for s, t, score in zip(ids, outputs, scores)
    }


def by_source(ids: list[list[int]], hyps: list[Any]) -> Found:
    """A search's results (one hypothesis or a list, best first, per source) by source ids."""
    return {tuple(s): h if isinstance(h, list) else [h] for s, h in zip(ids, hyps)}


@pytest.mark.kernels
def test_greedy_agrees_with_generate(
    imported: Path, hf_model: Any, pairs: tuple[list[str], list[str]]
) -> None:
    """Our greedy search and ``generate()`` give the same outputs with the same scores, or
    diverge first at a float32 near-tie of our model (``agreement.py``)."""
    model, _ = load_model(imported)
    tokenizer = MarianVocabulary(imported)
    src = source_batch(tokenizer, pairs[0])
    ours = greedy_search(model, src, max_len_a=0.0, max_len_b=MAX_NEW)
    theirs = hf_generate(hf_model, src, tokenizer.pad_id, num_beams=1)
    lengths = [len(h.tokens) for h in ours]
    assert min(lengths) < MAX_NEW == max(lengths)  # some chose EOS, some reached the limit
    ids = tokenizer.encode(pairs[0])
    found_theirs = hf_found(hf_model, tokenizer, ids, theirs)
    assert_greedy_agree(model, by_source(ids, ours), found_theirs, FLOAT32_TIE, SCORE_TOL)


@pytest.mark.kernels
def test_beam_4_agrees_with_generate(
    imported: Path, hf_model: Any, pairs: tuple[list[str], list[str]]
) -> None:
    """Length penalty 0 on both sides (GNMT alpha 0; ``length_penalty=0``) and
    ``early_stopping=True`` (stop at ``beam`` finished hypotheses, as nmt's search does): the
    same best hypotheses with the same scores, or others as good (``agreement.py``)."""
    model, _ = load_model(imported)
    tokenizer = MarianVocabulary(imported)
    src = source_batch(tokenizer, pairs[0])
    ours = beam_search(model, src, 4, 0.0, max_len_a=0.0, max_len_b=MAX_NEW)
    theirs = hf_generate(
        hf_model, src, tokenizer.pad_id, num_beams=4, length_penalty=0.0, early_stopping=True
    )
    ids = tokenizer.encode(pairs[0])
    found_theirs = hf_found(hf_model, tokenizer, ids, theirs)
    # BEAM_NORMALIZED_TOL bounds scores normalized with alpha 1; with alpha 0 a score is the
    # whole sum, up to length_penalty(MAX_NEW + 1, 1) = 5 times larger (0.057 seen).
    tol = BEAM_NORMALIZED_TOL * length_penalty(MAX_NEW + 1, 1.0)
    assert_beam_agree(by_source(ids, ours), found_theirs, tol, SCORE_TOL)


def test_cli_import_then_translate(
    hf_dir: Path, tmp_path: Path, pairs: tuple[list[str], list[str]]
) -> None:
    runner = CliRunner()
    out = tmp_path / "model"
    result = runner.invoke(app, ["import", "marian", str(hf_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [*pairs[0][:3], ""]
    result = runner.invoke(
        app, ["translate", "-m", str(out), "--beam-size", "1", "--max-len-a", "0",
              "--max-len-b", str(MAX_NEW)],
        input="".join(line + "\n" for line in lines),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    outputs = result.stdout.split("\n")[:-1]
    # The same engine on the same batch in process: the same computation, the same strings
    # (how they compare with generate() is test_greedy_agrees_with_generate's).
    decode = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=MAX_NEW)
    expected = [t.text for t in Translator.load(out, decode, device="cpu").translate(lines)]
    assert outputs == expected and outputs[-1] == "" and all(outputs[:3])
    again = runner.invoke(app, ["import", "marian", str(hf_dir), "-o", str(out)])
    assert again.exit_code != 0 and "already exists" in again.stderr


def test_import_from_hub_cache_folder(hf_dir: Path, imported: Path, tmp_path: Path) -> None:
    """The layout ``huggingface-cli download`` leaves: snapshot files link to ``blobs/``."""
    cache = tmp_path / "hub" / "models--Helsinki-NLP--opus-mt-de-en"
    snapshot = cache / "snapshots" / "0123abcd"
    (cache / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(hf_dir.iterdir())):
        blob = cache / "blobs" / f"blob{i}"
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0123abcd")
    out = import_marian(cache, tmp_path / "from-cache")
    a, b = load_weights(out / "model.safetensors"), load_weights(imported / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "config.json").read_text())["tgt_lang"] == "en"


def test_unsupported_settings_name_the_file_and_field(hf_dir: Path, tmp_path: Path) -> None:
    def variant(name: str, change: Any) -> Path:
        folder = tmp_path / name
        shutil.copytree(hf_dir, folder)
        change(folder)
        return folder

    def set_field(field: str, value: Any) -> Any:
        def change(folder: Path) -> None:
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, field: value}))

        return change

    cases = [
        ("bart", set_field("model_type", "bart"), ConfigError, "model_type='bart'"),
        ("gelu", set_field("activation_function", "gelu"), ConfigError, "activation_function"),
        ("untied", set_field("share_encoder_decoder_embeddings", False), ConfigError,
         "share_encoder_decoder_embeddings"),
        ("start", set_field("decoder_start_token_id", 0), ConfigError, "decoder_start_token_id"),
        ("novocab", lambda f: (f / "vocab.json").unlink(), CheckpointError, "vocab.json"),
        ("noweights", lambda f: (f / "model.safetensors").unlink(), CheckpointError,
         "model.safetensors"),
    ]  # fmt: skip
    for name, change, error, text in cases:
        folder = variant(name, change)
        with pytest.raises(error, match=text) as info:
            import_marian(folder, tmp_path / f"out-{name}")
        assert str(folder) in str(info.value)
        assert not (tmp_path / f"out-{name}").exists()


def test_pytorch_model_bin_is_read_without_pickled_code(
    hf_dir: Path, imported: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bin"
    shutil.copytree(hf_dir, folder)
    state = load_weights(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    out = import_marian(folder, tmp_path / "out")
    assert torch.equal(
        load_weights(out / "model.safetensors")["embed.weight"],
        load_weights(imported / "model.safetensors")["embed.weight"],
    )


def test_default_options_keep_the_model_as_before(random_model: Any) -> None:
    """The new options' defaults: ReLU, no output bias, interleaved positions, scaled
    embeddings, nmt's ids (a model folder without them loads as before)."""
    model: Transformer = random_model()
    cfg = model.cfg
    assert (cfg.activation, cfg.output_bias, cfg.position_layout) == ("relu", False, "interleaved")
    assert cfg.scale_embeddings and (cfg.pad_id, cfg.bos_id, cfg.eos_id) == (0, 2, 3)
    assert "output_bias" not in model.state_dict()
    table = model.positions
    half = cfg.d_model // 2  # position 0: sin 0 on even channels, cos 1 on odd ones
    assert torch.equal(table[0, 0::2], torch.zeros(half))
    assert torch.equal(table[0, 1::2], torch.ones(half))


def test_translator_loads_imported_folder(imported: Path) -> None:
    translator = Translator.load(imported, device="cpu", workers=1)
    tokenizer = translator.tokenizer  # tagged with the model's one target tag, >>fra<<
    assert isinstance(tokenizer, TaggedTokenizer) and isinstance(tokenizer.base, MarianVocabulary)
    assert len(list(translator.translate(["Ein Hund.", ""]))) == 2


@pytest.mark.kernels
def test_ctranslate2_export_of_imported_model(
    imported: Path, tmp_path: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """Swish, the output bias, the [sin | cos] table, vocab.json and the <pad> decoder start
    all reach CTranslate2: its teacher-forced log-probabilities equal ours to 1e-4 and its
    greedy outputs agree with ours (``agreement.py``: the same tokens and scores, or a first
    difference at a float32 near-tie)."""
    import ctranslate2 as ct2

    from nmt.decode.ct2 import CT2Translator
    from nmt.interop.export import export_ctranslate2

    out = export_ctranslate2(imported, tmp_path / "ct2")
    assert {"vocab.json", "source.spm", "target.spm"} <= {p.name for p in out.iterdir()}
    model, _ = load_model(imported)
    tokenizer = MarianVocabulary(imported)
    src, tgt = tokenizer.encode(pairs[0][:16]), tokenizer.encode_target(pairs[1][:16])
    vocab = tokenizer.vocabulary()
    results = ct2.Translator(str(out), device="cpu").score_batch(
        [[vocab[i] for i in s] for s in src], [[vocab[i] for i in t] for t in tgt]
    )
    for s, t, result in zip(src, tgt, results):
        ours = teacher_forced_log_probs(model, s, t)  # Marian's ids: the model's own
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=SCORE_TOL, rtol=0)
    decode = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=MAX_NEW)
    engines = (
        CT2Translator.load(out, decode, device="cpu"),
        Translator.load(imported, decode, device="cpu"),
    )
    theirs, mine = (record_hypotheses(engine) for engine in engines)
    for engine in engines:
        assert len(list(engine.translate(pairs[0]))) == len(pairs[0])
    limits = dict(zip(mine, engines[0].limits([len(s) for s in mine])))
    assert_float32_agree(model, 1, mine, theirs, limits)


def test_decoding_options_use_the_imported_special_ids(
    imported: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """Forced scoring, target prefixes and alignment build their own decoder inputs: with
    Marian's ids (EOS 0, decoder start = PAD = last id), not nmt's fixed 0-3. The forced score
    of search's own ids equals the score search reported; a prefix (encoded with target.spm)
    starts the output; every target word gets one alignment link inside the line."""
    from nmt.decode.forced import forced_scores

    model, _ = load_model(imported)
    tokenizer = MarianVocabulary(imported)
    src = source_batch(tokenizer, pairs[0][:8])
    hyps = beam_search(model, src, beam_size=4, max_len_a=0.0, max_len_b=MAX_NEW)
    best = [h[0] for h in hyps]
    forced = forced_scores(model, src, [h.tokens for h in best])
    torch.testing.assert_close(
        torch.tensor(forced), torch.tensor([h.score for h in best]), atol=1e-4, rtol=0
    )
    decode = DecodeConfig(beam_size=4, max_len_a=0.0, max_len_b=MAX_NEW)
    translator = Translator.load(imported, decode, device="cpu", workers=1)
    prefixed = list(translator.translate(pairs[0][:4], target_prefixes=["A dog"] * 4))
    assert all(t.text.startswith("A dog") for t in prefixed), [t.text for t in prefixed]
    aligned = list(translator.translate(pairs[0][:8], replace(decode, alignment=True)))
    for line, t in zip(pairs[0][:8], aligned):
        assert t.alignment is not None
        n_src, n_tgt = len(line.split()), len(t.text.split())
        assert sorted(j for _, j in t.alignment) == list(range(n_tgt))
        assert all(0 <= i < n_src for i, _ in t.alignment)


def test_tgt_lang_puts_the_marian_target_tag_first(
    imported: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """--tgt-lang fra on a multi-target Marian model = the line written with >>fra<< first."""
    decode = DecodeConfig(beam_size=1, max_len_a=0, max_len_b=MAX_NEW)
    tagged = Translator.load(imported, decode, device="cpu", workers=1, tgt_lang="fra")
    plain = Translator.load(imported, decode, device="cpu", workers=1)
    vocab = MarianVocabulary(imported)
    assert tagged.tokenizer.encode(pairs[0][:1])[0][0] == vocab.ids[TAG]
    by_option = [(t.text, t.score) for t in tagged.translate(pairs[0][:8])]
    inline = [(t.text, t.score) for t in plain.translate([f"{TAG} {s}" for s in pairs[0][:8]])]
    assert by_option == inline
    with pytest.raises(ConfigError, match="--tgt-lang deu: the model translates into fra only"):
        Translator.load(imported, device="cpu", tgt_lang="deu")


@pytest.fixture(scope="module")
def two_targets(imported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imported model with a second target tag, >>deu<< (a piece of vocab.json renamed:
    the weights stay those of the import)."""
    folder = tmp_path_factory.mktemp("two-targets") / "model"
    shutil.copytree(imported, folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    renamed = {(">>deu<<" if i == 5 else p): i for p, i in vocab.items()}
    (folder / "vocab.json").write_text(json.dumps(renamed, ensure_ascii=False), encoding="utf-8")
    return folder


def test_serve_takes_the_marian_target_tag_per_request(
    imported: Path, two_targets: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """nmt serve on a multi-target Marian import: the pairs are the tags' languages (not
    None-None), tgt_lang (or LibreTranslate's target) puts its tag first, as --tgt-lang does,
    and a request without one whose lines carry none is refused, naming the choices."""
    from nmt.serve.registry import load_models

    models = load_models([f"m={imported}", f"two={two_targets}"], "torch", "cpu")
    model, tag = models["m"], MarianVocabulary(imported).ids[TAG]
    src = pairs[0][:2]
    d = model.decode_config(replace_options(beam_size=1))
    assert [x[0] for x in model.encode(src, d, tgt_lang="fra").ids] == [tag, tag]
    assert model.encode(src, d).ids == model.encode(src, d, tgt_lang="fra").ids  # its one tag
    with serving(models) as client:
        listed = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["m"]["pairs"] == ["de-fra"] and listed["m"]["src_lang"] == "de"
        assert sorted(listed["two"]["pairs"]) == ["de-deu", "de-fra"]
        body = {"src": src, "beam_size": 1, "tgt_lang": "fra", "model": "two"}
        assert client.post("/v1/translate", json=body).status_code == 200
        wrong = client.post("/v1/translate", json={**body, "tgt_lang": "en"})
        assert wrong.status_code == 422 and "translates into deu, fra" in wrong.text
        untagged = client.post("/v1/translate", json={"src": src, "model": "two"})
        assert untagged.status_code == 422, untagged.text
        message = untagged.json()["error"]["message"]
        assert "deu, fra" in message and "tgt_lang" in message
        inline = {"src": [f"{TAG} {s}" for s in src], "model": "two", "beam_size": 1}
        by_field = client.post("/v1/translate", json=body).json()["translations"]
        assert client.post("/v1/translate", json=inline).json()["translations"] == by_field
        lt = client.post("/translate", json={"q": src[0], "source": "de", "target": "fra"})
        assert lt.status_code == 200 and isinstance(lt.json()["translatedText"], str)
        languages = client.get("/languages").json()
        assert {"code": "de", "name": "German", "targets": ["fra", "deu"]} in languages
        assert "None" not in json.dumps(languages) + json.dumps(listed)


def replace_options(**options: Any) -> Any:
    from nmt.serve.config import DecodeOptions

    return DecodeOptions(**options)


def test_target_tags_of_a_line_and_of_tgt_lang_are_one(
    two_targets: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """A multi-target model: a line without a tag and no --tgt-lang is refused naming
    --tgt-lang and the choices (CLI and library); a line that starts with >>fra<< and
    --tgt-lang fra keeps one tag; with --tgt-lang deu it is refused, naming the line."""
    decode = DecodeConfig(beam_size=1, max_len_a=0, max_len_b=MAX_NEW)
    plain = Translator.load(two_targets, decode, device="cpu", workers=1)
    fra = Translator.load(two_targets, decode, device="cpu", workers=1, tgt_lang="fra")
    deu = Translator.load(two_targets, decode, device="cpu", workers=1, tgt_lang="deu")
    src = pairs[0][:3]
    with pytest.raises(InputError, match="input line 1: the model translates into deu, fra; "
                       "choose one with --tgt-lang"):  # fmt: skip
        list(plain.translate(src))
    tagged = [f"{TAG} {s}" for s in src]
    assert fra.encode(tagged, decode).ids == fra.encode(src, decode).ids
    assert plain.encode(tagged, decode).ids == fra.encode(src, decode).ids
    with pytest.raises(InputError, match="input line 2 starts with the target tag >>fra<<"):
        list(deu.translate([src[0], tagged[1]]))
    result = CliRunner().invoke(app, ["translate", "-m", str(two_targets)], input=f"{src[0]}\n")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "--tgt-lang" in message and "deu, fra" in message, message


def test_language_codes_of_an_import_without_them(tokenizer: Any) -> None:
    """tokenizer_config.json without source_lang/target_lang: the codes of the OPUS-MT name
    (the hub's, or the folder's), else "und", never None."""
    from nmt.data.targets import Targets
    from nmt.interop.import_marian import model_langs

    assert model_langs({}, "Helsinki-NLP/opus-mt-en-ROMANCE") == ("en", "ROMANCE")
    assert model_langs({}, None, "models--Helsinki-NLP--opus-mt-de-en") == ("de", "en")
    assert model_langs({"source_lang": "fr"}, "opus-mt-de-en") == ("fr", "en")
    assert model_langs({}, None, "my-model") == (None, None)
    assert Targets(tokenizer, [], None, None).directions == [("und", "und")]


def test_fine_tuning_an_imported_model_is_refused_saying_so(
    imported: Path, tmp_path: Path, pairs: tuple[list[str], list[str]]
) -> None:
    """--init-from an imported OPUS-MT model failed with "pad_id=...: leave pad_id at its
    default", a setting the user never touched; it is refused as what it is, before anything
    is written, on the command line and in the library."""
    from conftest import make_tiny_train_config, write_corpus

    from nmt.train.run import train

    prefix = write_corpus(tmp_path / "pairs", *pairs)
    out = tmp_path / "ft"
    args = ["train", "--train", str(prefix), "--valid", str(prefix), "--device", "cpu",
            "--init-from", str(imported), "--max-steps", "1", "-o", str(out)]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 1, done.output
    message = " ".join(done.stderr.split())
    assert f"--init-from {imported} is an imported Marian/OPUS-MT model" in message
    assert "cannot fine-tune it yet" in message and "pad_id" not in message
    model_cfg = load_model(imported)[0].cfg
    with pytest.raises(ConfigError, match="is an imported Marian/OPUS-MT model"):
        train(prefix, prefix, out, model_cfg, make_tiny_train_config(), init_from=imported)
    assert not out.exists()
