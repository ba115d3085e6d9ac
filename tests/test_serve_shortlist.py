"""``nmt serve --shortlist``: the server searches over each model folder's vocabulary shortlist
through the engine's options (:meth:`nmt.decode.engine.BaseTranslator.options`), as ``nmt
translate --shortlist`` does, and refuses what a shortlist cannot apply to (sampling) with a
422; a folder without one is refused when the server starts. A CTranslate2 export serves with
its vocabulary map.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from serve_client import ServerProcess, request, serving

from nmt.config import DecodeConfig
from nmt.decode.shortlist import VMAP_FILE, build_shortlist
from nmt.decode.translate import Translator
from nmt.errors import CheckpointError, ConfigError
from nmt.model.checkpoint import CONFIG_FILE, SPM_FILE, WEIGHTS_FILE
from nmt.serve.registry import load_models


@pytest.fixture(scope="module")
def folder(
    tiny_run: Path, tiny_corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``tiny_run``'s model with a shortlist of 3 candidates per source piece and the 10 most
    frequent target pieces (as in test_shortlist.py: it leaves out pieces the full search
    picks)."""
    out = tmp_path_factory.mktemp("shortlist") / "model"
    out.mkdir()
    for name in (CONFIG_FILE, SPM_FILE, WEIGHTS_FILE):
        shutil.copy(tiny_run / name, out / name)
    build_shortlist(out, tiny_corpus[0], best=3, frequent=10)
    return out


@pytest.fixture(scope="module")
def lines(multi30k: Callable[..., list[str]]) -> list[str]:
    return multi30k("test_2016_flickr", "de", 8)


def test_the_server_searches_over_each_lines_candidates(
    folder: Path, lines: list[str], tmp_path: Path
) -> None:
    """A real server (2 workers), one line per request, so that each batch is that line: every
    output piece is one of the line's candidates (``Shortlist.batch_vocab``), while the full
    search picks pieces outside them for some line (so the shortlist was applied; without
    ``--shortlist`` the option did not exist). A sampling request is a 422 naming the
    shortlist, as ``nmt translate --shortlist --sampling-topk 0`` is a usage error."""
    engine = Translator.load(folder, DecodeConfig(shortlist=True), device="cpu", workers=1)
    vocabulary = engine.tokenizer.vocabulary()
    shortlist = engine.load_shortlist()

    def candidates(line: str) -> set[str]:
        src = engine.source_batch(engine.tokenizer.encode([line]))
        return {vocabulary[i] for i in shortlist.batch_vocab(src).tolist()}

    full = Translator.load(folder, DecodeConfig(beam_size=2), device="cpu", workers=1)
    outside = [
        set(map(engine.tokenizer.piece, t.tokens[0])) - candidates(line)
        for line, t in zip(lines, full.translate(lines))
    ]
    assert any(outside), "the full search stays within the candidates: no test"
    args = ["-m", f"short={folder}", "--shortlist", "--workers", "2"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        for line in lines:
            body = {"src": [line], "beam_size": 2, "return_attention": True}
            status, answer = request(server.url + "/v1/translate", body)
            assert status == 200, answer
            (t,) = answer["translations"]
            pieces = set(t["attention"]["tgt_pieces"]) - {"</s>"}
            assert pieces and pieces <= candidates(line), (line, pieces - candidates(line))
        body = {"src": lines[:1], "sampling_topk": 0, "seed": 1}
        status, answer = request(server.url + "/v1/translate", body)
        assert status == 422, answer
        assert "shortlist" in answer["error"]["message"], answer


def test_a_folder_without_a_shortlist_is_refused_when_the_server_starts(
    tiny_run: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Loading for ``--shortlist`` checks every model: a torch folder without a shortlist
    (saying how to build one), a CTranslate2 export without its vocabulary map (saying to
    export it again); an export of a folder with a shortlist serves with its map."""
    from nmt.interop.export import export_ctranslate2

    with pytest.raises(CheckpointError, match="nmt shortlist"):
        load_models([f"plain={tiny_run}"], "torch", "cpu", shortlist=True)
    root = tmp_path_factory.mktemp("exports")
    bare = export_ctranslate2(tiny_run, root / "bare")
    with pytest.raises(ConfigError, match=VMAP_FILE):
        load_models([f"bare={bare}"], "auto", "cpu", shortlist=True)
    mapped = export_ctranslate2(folder, root / "mapped")
    assert (mapped / VMAP_FILE).is_file()
    models = load_models([f"mapped={mapped}"], "auto", "cpu", shortlist=True)
    assert models["mapped"].translator.decode.shortlist
    with serving(models, workers=2) as client:
        answer = client.post("/v1/translate", json={"src": ["Ein Hund läuft im Schnee."]})
        assert answer.status_code == 200, answer.json()
        assert answer.json()["translations"][0]["text"]
