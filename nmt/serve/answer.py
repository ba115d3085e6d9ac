"""``POST /v1/translate``'s answer for one line: a :class:`~nmt.decode.results.Translation`
as the JSON of :mod:`nmt.serve.schema`, with what the request asked for (scores, n-best list,
piece alignment, attention).
"""

from __future__ import annotations

from nmt.decode.attention import Attention
from nmt.decode.results import Translation
from nmt.serve.registry import ServedModel
from nmt.serve.schema import (
    AttentionOut,
    HypothesisOut,
    TranslateRequest,
    TranslationOut,
)


def attention_out(att: Attention, src_pieces: list[str], tgt_pieces: list[str]) -> AttentionOut:
    """One output's cross-attention ``(n_layers, n_heads, tgt_len, src_len)`` with the pieces
    of its rows and columns, weights rounded to 4 decimals."""
    w = att.weights
    return AttentionOut(
        src_pieces=src_pieces,
        tgt_pieces=tgt_pieces,
        shape=list(w.shape),
        weights=w.double().round(decimals=4).tolist(),  # 4 decimals: a 3x smaller JSON
    )


def translation_out(r: Translation, req: TranslateRequest, model: ServedModel) -> TranslationOut:
    """One line's JSON: text, and what the request asked for."""
    if not r.tokens:  # an empty line, or one whose search found nothing: an empty output
        empty = [HypothesisOut(text="", score=0.0)] if req.nbest > 1 and not r.failure else None
        score = 0.0 if req.return_scores and not r.failure else None
        return TranslationOut(text="", score=score, nbest=empty, failure=r.failure)
    src_pieces = model.translator.pieces(r.src_tokens, source=True)
    hyps = []
    for i, ((text, score), tokens) in enumerate(zip(r.nbest, r.tokens)):
        att = None if r.attention is None else r.attention[i]
        hyps.append(
            HypothesisOut(
                text=text,
                score=score,
                piece_alignment=att.pharaoh() if att and req.return_piece_alignment else None,
                alignment=att.pharaoh() if att and req.return_alignment else None,
                attention=attention_out(att, src_pieces, model.translator.pieces(tokens))
                if att and req.return_attention
                else None,
            )
        )
    best = hyps[0]
    return TranslationOut(
        text=best.text,
        score=best.score if req.return_scores else None,
        nbest=hyps if req.nbest > 1 else None,
        piece_alignment=best.piece_alignment,
        alignment=best.alignment,
        attention=best.attention,
        truncated=True if r.truncated else None,
    )
