"""Vocabulary layouts (:mod:`nmt.data.vocab`): separate source and target SentencePiece models
through preparing, training, translating, averaging, fine-tuning and the CTranslate2 export.

The source side is Multi30k German written in Cyrillic letters (a one-to-one letter map), so
that the two sides have different scripts, as en–ru would: a separate source model must hold
only Cyrillic pieces and the target model only Latin ones, which a joint model (or a side
trained on the wrong text) would not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from agreement import (
    SCORE_TOL,
    assert_float32_agree,
    assert_scores_agree,
    record_hypotheses,
    teacher_forced_log_probs,
)
from serve_client import serving
from typer.testing import CliRunner

from cli.main import app
from nmt.config import DecodeConfig, ModelConfig
from nmt.data.parallel import encode_parallel
from nmt.data.prepared import open_store
from nmt.data.store import prepare, read_meta
from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import (
    JOINT_SPM,
    SRC_SPM,
    TGT_SPM,
    SeparateTokenizer,
    load_tokenizer,
    train_vocab,
    vocab_layout,
    vocab_options,
)
from nmt.decode.translate import Translator
from nmt.errors import ConfigError
from nmt.model.checkpoint import WEIGHTS_FILE, load_model, load_weights, read_config, save_weights
from nmt.model.transformer import Transformer
from nmt.train.average import average_run
from nmt.train.run import train

LATIN = "abcdefghijklmnopqrstuvwxyz"
CYRILLIC = "абцдефгхийклмнопярстужвьыз"
TO_CYRILLIC = str.maketrans(LATIN + LATIN.upper(), CYRILLIC + CYRILLIC.upper())
SRC_VOCAB, TGT_VOCAB = 700, 500  # different sizes, so that a side mixed up fails loudly


def cyrillic(lines: list[str]) -> list[str]:
    return [line.translate(TO_CYRILLIC) for line in lines]


def has_latin(piece: str) -> bool:
    return any(c in LATIN for c in piece.lower())


def has_cyrillic(piece: str) -> bool:
    return any(c in CYRILLIC for c in piece.lower())


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory, spm_text) -> Path:
    """spm.src.model (700 pieces, Cyrillic German) and spm.tgt.model (500 pieces, English)."""
    folder = tmp_path_factory.mktemp("separate-vocab")
    train_vocab(cyrillic(spm_text["de"]), spm_text["en"], folder, TGT_VOCAB, SRC_VOCAB)
    return folder


@pytest.fixture(scope="module")
def pairs(short_pairs) -> tuple[list[str], list[str]]:
    """16 short pairs (Cyrillic German → English) among the SentencePiece training lines."""
    return cyrillic(short_pairs[0]), short_pairs[1]


@pytest.fixture(scope="module")
def separate_run(
    tmp_path_factory, vocab_dir, pairs, corpus_writer, tiny_model_config, tiny_train_config
) -> Path:
    """A tiny model with separate vocabularies that learned ``pairs`` by heart (200 updates,
    checkpoints at 100 and 200)."""
    folder = tmp_path_factory.mktemp("separate-run")
    prefix = corpus_writer(folder / "pairs", *pairs)
    cfg = tiny_model_config(dropout=0.0, src_vocab_size=8000)  # sizes: the SentencePiece models'
    recipe = tiny_train_config(
        max_steps=200, batch_tokens=4096, label_smoothing=0.0, eval_every=200, save_every=100
    )
    train(prefix, prefix, folder / "run", cfg, recipe, spm_path=vocab_dir)
    return folder / "run"


def test_each_side_has_its_own_script(vocab_dir: Path, spm_text) -> None:
    tokenizer = load_tokenizer(vocab_dir)
    assert isinstance(tokenizer, SeparateTokenizer) and vocab_layout(vocab_dir) == "separate"
    assert (tokenizer.src_vocab_size, tokenizer.vocab_size) == (SRC_VOCAB, TGT_VOCAB)
    src_pieces, tgt_pieces = tokenizer.source_vocabulary()[4:], tokenizer.vocabulary()[4:]
    assert not any(map(has_latin, src_pieces)) and sum(map(has_cyrillic, src_pieces)) > 600
    assert not any(map(has_cyrillic, tgt_pieces)) and sum(map(has_latin, tgt_pieces)) > 400
    # encode reads the source model, encode_target and decode the target model
    de, en = cyrillic(spm_text["de"][:50]), spm_text["en"][:50]
    assert tokenizer.encode(de) == Tokenizer(vocab_dir / SRC_SPM).encode(de)
    assert tokenizer.encode_target(en) == Tokenizer(vocab_dir / TGT_SPM).encode(en)
    assert tokenizer.decode(tokenizer.encode_target(en)) == en
    assert [tokenizer.source_piece(i) for i in tokenizer.encode(de[:1])[0]] == tokenizer.pieces(
        de[0]
    )


def test_in_memory_pairs_encode_each_side_with_its_model(vocab_dir: Path, pairs) -> None:
    """The validation set (encoded in memory for the validation loss) as the store's pairs."""
    tokenizer = load_tokenizer(vocab_dir)
    data = encode_parallel(tokenizer, *pairs, max_len=256)
    assert data.src == tokenizer.encode(pairs[0])
    assert data.tgt == tokenizer.encode_target(pairs[1]) != tokenizer.encode(pairs[1])


def test_prepare_encodes_each_side_with_its_model(tmp_path: Path, spm_text, corpus_writer) -> None:
    de, en = cyrillic(spm_text["de"][:2000]), spm_text["en"][:2000]
    prefix = corpus_writer(tmp_path / "train", de, en)
    out = tmp_path / "data"
    prepare(prefix, out, "de", "en", vocab_size=300, src_vocab_size=400)
    meta = read_meta(out)
    assert (meta["vocab_layout"], meta["src_vocab_size"], meta["vocab_size"]) == (
        "separate",
        400,
        300,
    )
    assert not (out / JOINT_SPM).exists()
    tokenizer = load_tokenizer(out)
    store = open_store(out, 256)
    src_ids, tgt_ids = store.pair(0)
    assert tokenizer.source.decode([src_ids.tolist()]) == de[:1]
    assert tokenizer.decode([tgt_ids.tolist()]) == en[:1]
    assert max(int(store.pair(i)[0].max()) for i in range(200)) >= 300  # source ids past 300


def test_separate_model_learns_pairs_by_heart(separate_run: Path, pairs, vocab_dir) -> None:
    config = read_config(separate_run)
    assert (config["model"]["src_vocab_size"], config["model"]["vocab_size"]) == (
        SRC_VOCAB,
        TGT_VOCAB,
    )
    assert {p.name for p in separate_run.iterdir()} >= {SRC_SPM, TGT_SPM}
    assert not (separate_run / JOINT_SPM).exists()
    weights = load_weights(separate_run / "model.safetensors")
    assert weights["src_embed.weight"].shape == (SRC_VOCAB, 64)
    assert weights["embed.weight"].shape == (TGT_VOCAB, 64)
    translator = Translator.load(separate_run, DecodeConfig(beam_size=1), device="cpu")
    src, tgt = pairs
    assert [t.text for t in translator.translate(src)] == tgt
    metrics = (separate_run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["bleu"] == pytest.approx(100.0)


@pytest.mark.kernels
def test_search_scores_equal_forced_scores(separate_run: Path, pairs) -> None:
    """The score beam search reports is the teacher-forced log-probability of its output
    through the source embedding and the tied target embedding."""
    translator = Translator.load(separate_run, DecodeConfig(beam_size=4), device="cpu")
    model, tokenizer = translator.model, translator.tokenizer
    for line, result in zip(pairs[0][:6], translator.translate(pairs[0][:6])):
        src, tgt = tokenizer.encode([line])[0], tokenizer.encode_target([result.text])[0]
        forced = teacher_forced_log_probs(model, src, tgt).sum().item()
        assert result.score == pytest.approx(forced, abs=SCORE_TOL * (len(tgt) + 1))


def test_average_keeps_both_models(separate_run: Path, tmp_path: Path, pairs) -> None:
    out = tmp_path / "averaged"
    average_run(separate_run, 2, out)
    for name in (SRC_SPM, TGT_SPM):
        assert (out / name).read_bytes() == (separate_run / name).read_bytes()
    model, _ = load_model(out)
    assert model.src_embed is not None and model.src_embed.weight.shape == (SRC_VOCAB, 64)
    translations = Translator.load(out, DecodeConfig(beam_size=1), device="cpu").translate(
        pairs[0][:4]
    )
    assert all(t.text for t in translations)


@pytest.mark.kernels
def test_ctranslate2_export_has_both_vocabularies(
    separate_run: Path, tmp_path: Path, pairs
) -> None:
    import ctranslate2 as ct2

    from nmt.decode.ct2 import CT2Translator
    from nmt.interop.export import export_ctranslate2

    exported = export_ctranslate2(separate_run, tmp_path / "ct2")
    names = {p.name for p in exported.iterdir()}
    assert {"source_vocabulary.json", "target_vocabulary.json", SRC_SPM, TGT_SPM} <= names
    assert "shared_vocabulary.json" not in names
    tokenizer = load_tokenizer(separate_run)
    model, _ = load_model(separate_run)
    src, tgt = tokenizer.encode(pairs[0]), tokenizer.encode_target(pairs[1][::-1])
    results = ct2.Translator(str(exported), device="cpu").score_batch(
        [[tokenizer.source_piece(i) for i in ids] for ids in src],
        [[tokenizer.piece(i) for i in ids] for ids in tgt],
    )
    for s, t, result in zip(src, tgt, results):
        ours = teacher_forced_log_probs(model, s, t)
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=SCORE_TOL, rtol=0)
    engine = CT2Translator.load(exported, DecodeConfig(beam_size=1), device="cpu")
    torch_engine = Translator.load(separate_run, DecodeConfig(beam_size=1), device="cpu")
    assert_scores_agree(
        [len(t) + 1 for t in tokenizer.encode_target(pairs[1])],
        list(engine.score_targets(*pairs)),
        list(torch_engine.score_targets(*pairs)),
    )


@pytest.mark.kernels
def test_ctranslate2_outputs_no_special_piece_where_torch_masks_it(
    separate_run: Path, tmp_path: Path, multi30k
) -> None:
    """An untrained separate-vocabulary model, greedy, --max-len-a 0 --max-len-b 20:
    CTranslate2 alone output "<s> <s> ..." (41 of these 48 lines) where our search masks PAD
    and BOS. Both engines now apply that constraint: no output holds them, and both agree
    (``agreement.py``: the same tokens with the same scores, or a first difference at a
    float32 near-tie)."""
    import ctranslate2 as ct2

    from nmt.decode.ct2 import CT2Translator
    from nmt.interop.export import export_ctranslate2

    folder = tmp_path / "untrained"
    shutil.copytree(separate_run, folder, ignore=shutil.ignore_patterns("checkpoints", "*.pt"))
    torch.manual_seed(0)
    save_weights(folder / WEIGHTS_FILE, Transformer(load_model(separate_run)[0].cfg))
    exported = export_ctranslate2(folder, tmp_path / "ct2")
    tokenizer = load_tokenizer(folder)
    lines = cyrillic(multi30k("test_2016_flickr", "de", 48))
    specials = {tokenizer.pad_id, tokenizer.bos_id}
    unconstrained = ct2.Translator(str(exported), device="cpu").translate_batch(
        [[tokenizer.source_piece(i) for i in x] for x in tokenizer.encode(lines)],
        beam_size=1,
        max_decoding_length=20,
    )
    special_pieces = {tokenizer.piece(i) for i in specials}
    assert any(special_pieces & set(r.hypotheses[0]) for r in unconstrained)  # the case arises
    decode = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=20)
    engines = (
        CT2Translator.load(exported, decode, device="cpu"),
        Translator.load(folder, decode, device="cpu"),
    )
    theirs, mine = (record_hypotheses(engine) for engine in engines)
    for engine in engines:
        assert len(list(engine.translate(lines))) == len(lines)
    assert not any(specials & set(h.tokens) for hyps in theirs.values() for h in hyps)
    limits = dict(zip(mine, engines[0].limits([len(s) for s in mine])))
    assert_float32_agree(load_model(folder)[0], 1, mine, theirs, limits)


def test_fine_tuning_keeps_the_separate_vocabularies(
    separate_run: Path, tmp_path: Path, pairs, corpus_writer, tiny_model_config, tiny_train_config
) -> None:
    """--init-from a separate model: the data is encoded with its two models (prepare --spm
    taking the model folder), and the run starts from its weights."""
    prefix = corpus_writer(tmp_path / "new", pairs[0][::-1], pairs[1][::-1])
    data = tmp_path / "data"
    prepare(prefix, data, "de", "en", spm_path=separate_run)
    assert vocab_layout(data) == "separate"
    out = tmp_path / "ft"
    recipe = tiny_train_config(max_steps=1, lr=1e-9, warmup_steps=1, eval_every=100)
    train(None, prefix, out, tiny_model_config(), recipe, data_dir=data, init_from=separate_run)
    tuned, base = read_config(out)["model"], read_config(separate_run)["model"]
    assert (tuned["src_vocab_size"], tuned["vocab_size"]) == (SRC_VOCAB, TGT_VOCAB) and all(
        tuned[k] == base[k] for k in base if "dropout" not in k
    )
    before = load_weights(separate_run / "model.safetensors")["src_embed.weight"]
    after = load_weights(out / "last.safetensors")["src_embed.weight"]
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)  # lr 1e-9: one tiny step


def test_layout_mismatches_are_refused(
    separate_run: Path, tiny_run: Path, tmp_path: Path, pairs, corpus_writer, tiny_model_config,
    tiny_train_config,
) -> None:  # fmt: skip
    recipe = tiny_train_config(max_steps=1)
    separate = tiny_model_config(src_vocab_size=1000)
    prefix = corpus_writer(tmp_path / "p", *pairs)
    with pytest.raises(ConfigError, match="joint vocabulary.*drop --vocab-layout separate"):
        train(prefix, prefix, tmp_path / "ft", separate, recipe, init_from=tiny_run)
    joint_data = tmp_path / "joint-data"
    prepare(prefix, joint_data, "de", "en", spm_path=tiny_run)
    with pytest.raises(ConfigError, match="joint vocabulary, but separate"):
        train(None, prefix, tmp_path / "new", separate, recipe, data_dir=joint_data)
    with pytest.raises(ConfigError, match="separate vocabulary.*joint one|joint vocabulary"):
        Translator.load([tiny_run, separate_run], device="cpu")


def test_vocabulary_options() -> None:
    assert vocab_options(None, None, None, None) == {"vocab_size": None, "src_vocab_size": None}
    assert vocab_options("joint", 4000, None, None) == {"vocab_size": 4000, "src_vocab_size": 0}
    assert vocab_options("separate", None, 6000, None) == {
        "vocab_size": 8000,
        "src_vocab_size": 6000,
    }
    assert vocab_options("separate", 4000, None, 3000) == {
        "vocab_size": 3000,
        "src_vocab_size": 4000,
    }
    with pytest.raises(ConfigError, match="--src-vocab-size needs --vocab-layout separate"):
        vocab_options(None, None, 6000, None)
    with pytest.raises(ConfigError, match="joint, separate"):
        vocab_options("split", None, None, None)
    with pytest.raises(ConfigError, match="src_vocab_size=4 is too small"):
        ModelConfig(src_vocab_size=4)


def test_cli_prepare_separate(tmp_path: Path, spm_text, corpus_writer) -> None:
    prefix = corpus_writer(tmp_path / "t", cyrillic(spm_text["de"][:1500]), spm_text["en"][:1500])
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["prepare", "--train", str(prefix), "-o", str(tmp_path / "d"), "--vocab-layout",
         "separate", "--src-vocab-size", "300", "--tgt-vocab-size", "200"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        load_tokenizer(tmp_path / "d").src_vocab_size,
        read_meta(tmp_path / "d")["vocab_size"],
    ) == (
        300,
        200,
    )
    bad = runner.invoke(
        app, ["prepare", "--train", str(prefix), "-o", str(tmp_path / "e"), "--tgt-vocab-size", "9"]
    )
    assert bad.exit_code != 0 and "--tgt-vocab-size needs --vocab-layout separate" in bad.output
    assert not (tmp_path / "e").exists()


def test_server_labels_attention_with_each_sides_pieces(separate_run: Path, pairs) -> None:
    """nmt serve's attention labels: source pieces from the source model (Cyrillic), target
    pieces from the target model."""
    from nmt.serve.registry import load_models

    models = load_models([f"sep={separate_run}"], "torch", "cpu")
    with serving(models) as client:
        answer = client.post("/v1/translate", json={"src": pairs[0][:1], "return_attention": True})
        assert answer.status_code == 200, answer.text
        out = answer.json()["translations"][0]
        tokenizer = load_tokenizer(separate_run)
        attention = out["attention"]
        assert attention["src_pieces"] == [*tokenizer.pieces(pairs[0][0]), "</s>"]
        assert attention["tgt_pieces"][:-1] == [
            tokenizer.piece(i) for i in tokenizer.encode_target([out["text"]])[0]
        ]
        assert out["text"] == pairs[1][0]


def test_init_from_with_another_vocab_layout_is_refused_naming_both(
    vocab_dir: Path, spm_model: Path, pairs, corpus_writer, tmp_path: Path
) -> None:
    """--vocab-layout joint with --init-from a separate-vocabulary model was ignored (the run
    trained with separate vocabularies); separate with a joint model said it had "a 0-piece
    vocabulary". Both are refused, naming the typed layout and the folder's; nothing is
    written. With the folder's own layout, fine-tuning starts."""
    prefix = corpus_writer(tmp_path / "pairs", *pairs)
    common = ["train", "--train", str(prefix), "--valid", str(prefix), "--device", "cpu",
              "--dtype", "fp32", "--max-steps", "1", "--eval-every", "1",
              "--preset", "tiny"]  # fmt: skip
    separate, joint = tmp_path / "separate", tmp_path / "joint"
    for out, spm, layout in ((separate, vocab_dir, "separate"), (joint, spm_model, "joint")):
        done = CliRunner().invoke(
            app, [*common, "--spm", str(spm), "--vocab-layout", layout, "-o", str(out)]
        )
        assert done.exit_code == 0, done.output
    for model, layout, have in ((separate, "joint", "separate"), (joint, "separate", "joint")):
        out = tmp_path / f"from-{have}"
        args = [*common[:-2], "--init-from", str(model), "--vocab-layout", layout, "-o", str(out)]
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 1, done.output
        message = " ".join(done.stderr.split())
        assert f"--vocab-layout {layout}, but the --init-from folder {model} has a {have} " in (
            message
        )
        assert "0-piece" not in message and not out.exists()
    out = tmp_path / "same"
    args = [
        *common[:-2],
        "--init-from",
        str(separate),
        "--vocab-layout",
        "separate",
        "-o",
        str(out),
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert read_config(out)["model"]["src_vocab_size"] == SRC_VOCAB
