"""Cross-attention weights recomputed for outputs (nmt.decode.attention): the one function that
``nmt translate --alignment``, the server and its page read."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from agreement import ATTENTION_TOL
from serve_client import ServerProcess, request

from nmt.data.parallel import pad
from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.decode.attention import cross_attention, hard_alignment
from nmt.model.transformer import Transformer


def sdpa_outputs(
    model: Transformer, src: torch.Tensor, targets: list[list[int]]
) -> list[torch.Tensor]:
    """Each decoder layer's cross-attention output ``(batch, tgt_len + 1, d_model)`` as its
    module's own forward (SDPA) computes it from the layer's input in a teacher-forced pass."""
    inputs: list[torch.Tensor] = []
    hooks = [
        layer.cross_block.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
        for layer in model.decoder_layers
    ]
    with torch.inference_mode():
        memory, src_mask = model.encode(src)
        model.decode(pad([[BOS_ID, *t] for t in targets]), memory, src_mask)
        for h in hooks:
            h.remove()
        out = []
        for x, layer in zip(inputs, model.decoder_layers):
            h = layer.cross_block.norm(x) if layer.cross_block.pre_norm else x
            out.append(layer.cross_attn(h, mask=src_mask, memory=memory))
    return out


@pytest.mark.parametrize("pre_norm", [True, False])
def test_weights_reproduce_each_layers_cross_attention_output(
    random_model: Callable[..., Transformer], pre_norm: bool
) -> None:
    """Weights times the values, through ``out_proj``, give what SDPA gave in the layer, for
    every layer and every real row of a padded batch: the weights are the ones the model used,
    not an approximation. Padding rows and columns get 0."""
    model = random_model(pre_norm=pre_norm)
    sources, targets = [[5, 6, 7, 8, 9], [10, 11]], [[10, 11, 12], [13, 14, 15, 16, 17]]
    src = pad(sources, suffix=EOS_ID)  # (2, 6)
    outputs = sdpa_outputs(model, src, targets)
    weights = cross_attention(model, src, targets)  # (2, n_layers, n_heads, 6, 6)
    n_layers, n_heads = model.cfg.n_decoder_layers, model.cfg.n_heads
    assert weights.shape == (2, n_layers, n_heads, 6, 6) and len(outputs) == n_layers
    with torch.inference_mode():
        memory, _ = model.encode(src)
        for i, layer in enumerate(model.decoder_layers):
            _, v = layer.cross_attn.project_kv(memory)  # (2, n_heads, src_len, head_dim)
            mixed = weights[:, i] @ v  # (2, n_heads, tgt_len, head_dim)
            out = layer.cross_attn.out_proj(mixed.transpose(1, 2).reshape(2, 6, -1))
            for row, (s, t) in enumerate(zip(sources, targets)):
                n = len(t) + 1
                torch.testing.assert_close(out[row, :n], outputs[i][row, :n], atol=1e-5, rtol=1e-5)
                real = weights[row, i, :, :n]
                torch.testing.assert_close(real.sum(-1), torch.ones(n_heads, n))
                assert weights[row, i, :, n:].abs().sum() == 0  # rows past the target
                assert weights[row, i, :, :, len(s) + 1 :].abs().sum() == 0  # source padding
    layers = cross_attention(model, src, targets, [1, 0])
    assert torch.equal(layers, weights[:, [1, 0]])


@pytest.mark.kernels
def test_a_batch_gives_each_sentence_its_weights_alone(
    random_model: Callable[..., Transformer],
) -> None:
    """Batch invariance: each row of a padded batch has the weights its sentence has alone,
    within float32 rounding across batch shapes (tests/agreement.py)."""
    model = random_model()
    sources, targets = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14]], [[20, 21], [22, 23, 24, 25], []]
    batch = cross_attention(model, pad(sources, suffix=EOS_ID), targets)
    for row, (s, t) in enumerate(zip(sources, targets)):
        alone = cross_attention(model, torch.tensor([[*s, EOS_ID]]), [t])[0]
        n, m = len(t) + 1, len(s) + 1
        torch.testing.assert_close(batch[row, :, :, :n, :m], alone, atol=ATTENTION_TOL, rtol=0)


def test_hard_alignment_takes_the_penultimate_layers_mean_argmax_without_eos() -> None:
    """The layer nmt translate --alignment reads by default, so the page and the command
    draw the same links."""
    weights = torch.zeros(3, 2, 4, 4)  # (layers, heads, tgt 3 + EOS, src 3 + EOS)
    weights[0, :, :, 0] = 1.0  # the first and the last layer are ignored
    weights[2, :, :, 2] = 1.0
    weights[1, 0] = torch.tensor([[0, 1, 0, 0], [0, 0, 0.4, 0.6], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    weights[1, 1] = torch.tensor([[0, 1, 0, 0], [0, 0, 0.4, 0.6], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    # Target piece 1 attends most to EOS (0.6): the alignment takes the best real piece, 2.
    assert hard_alignment(weights) == [(1, 0), (2, 1), (0, 2)]


# The server writes weights with 4 decimals: two roundings of the same value computed in two
# batch shapes can land 1e-4 apart on top of the arithmetic's own difference.
JSON_ROUNDING = 1e-4


@pytest.mark.kernels
def test_concurrent_requests_on_two_workers_get_their_own_attention(
    tiny_run: Path, multi30k: Callable[..., list[str]], tmp_path: Path
) -> None:
    """``nmt serve --workers 2``, the real process: 16 clients send, at once, one-line requests
    with attention (their lines differ in length) and two-line requests without. Every
    answer is a 200, and each answer's weights equal those of the same line sent alone
    (within float32 rounding across batch shapes). With forward hooks on the shared model, the
    two workers captured each other's tensors: a 500, or weights of another sentence."""
    lines = multi30k("val", "de", 8)
    args = ["-m", f"tiny={tiny_run}", "--workers", "2", "--max-wait-ms", "2"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        url = server.url + "/v1/translate"

        def attention(i: int) -> tuple[int, Any]:
            return request(url, {"src": [lines[i]], "return_attention": True, "beam_size": 2})

        def plain(i: int) -> tuple[int, Any]:
            return request(url, {"src": [lines[i], lines[i - 1]], "beam_size": 2})

        lone = [attention(i)[1]["translations"][0]["attention"] for i in range(len(lines))]
        jobs = [(f, i) for _ in range(6) for i in range(len(lines)) for f in (attention, plain)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda job: (job[0] is attention, job[1], job[0](job[1])), jobs)
            )
    bad = [body for _, _, (status, body) in answers if status != 200]
    assert not bad, bad[:3]
    compared = 0
    for with_attention, i, (_, body) in answers:
        t = body["translations"][0]
        if not with_attention:
            assert "attention" not in t or t["attention"] is None
            continue
        att = t["attention"]
        assert att["src_pieces"] == lone[i]["src_pieces"]
        if att["tgt_pieces"] != lone[i]["tgt_pieces"]:
            continue  # batching flipped a near-tie of the search (tests/agreement.py)
        compared += 1
        got, alone = torch.tensor(att["weights"]), torch.tensor(lone[i]["weights"])
        torch.testing.assert_close(got, alone, atol=ATTENTION_TOL + JSON_ROUNDING, rtol=0)
    assert compared >= 0.75 * len(jobs) / 2
