"""Translation through a CTranslate2 model folder written by ``nmt export``.

:class:`CT2Translator` has the interface of :class:`nmt.translate.Translator` (lines in,
:class:`~nmt.translate.Translation` out, one per line, in order) and the same tokenization,
truncation, length limit and hypothesis ranking; only the search runs in CTranslate2 (Klein et
al. 2020). ``ctranslate2`` is an optional dependency, imported only when it is used.

How our search maps onto ``Translator.translate_batch``:

- Length limit: ours is per sentence, ``a * src_len + b`` tokens before EOS (EOS forced there,
  with log-probability 0); CTranslate2 takes one ``max_decoding_length`` per call and stops a
  hypothesis after that many tokens. So each call holds sentences with the same limit, and the
  limit is passed as it is: the tokens and the score of a hypothesis that reaches it agree.
- Length penalty: ours is GNMT's ``((5 + len) / 6) ** alpha`` with ``len`` counting EOS (Wu et
  al. 2016, eq. 14); CTranslate2 divides by ``len ** p`` (``len`` without EOS unless
  ``return_end_token``) and cannot take another formula. So CTranslate2 only collects the
  finished hypotheses and we rank them: it returns all ``beam_size`` of them with
  ``return_end_token=True`` (``len`` >= 1), each log-probability is recovered as
  ``score * len ** p`` and ranked here with the GNMT penalty (:meth:`CT2Translator._hypotheses`).
- Which hypotheses are collected: we stop a sentence at ``beam_size`` finished hypotheses and
  keep the first ones, in step order, then by score; CTranslate2 stops at the same point but
  keeps every hypothesis that ends on the last step and then the ``beam_size`` best by
  ``score / len ** p``. With ``p`` = 1 that keeps long hypotheses and drops the short, often
  best, ones (1.3% of beam-5 outputs changed on Multi30k with alpha 0). A negative ``p`` whose
  size makes length dominate (:func:`collect_penalty`) orders them by length, i.e. by step, then
  by score, as we do. (``p`` = 0 is no way out: it makes CTranslate2 stop as soon as the best
  beam ends.) Greedy search runs with ``p`` = 0, whose score is the plain log-probability.
- What still differs: floating-point rounding of the two engines (an argmax can flip where two
  tokens are within ~1e-6), and, at the length limit, CTranslate2 ends the top ``beam_size``
  candidates of the last step, while we end the ``beam_size`` best non-EOS ones (with EOS forced
  one step later); and our search never outputs PAD or BOS (:func:`nmt.search.mask_specials`)
  while CTranslate2 may (``suppress_sequences`` would renormalize the scores and break the
  agreement above; a trained model gives those tokens no mass anyway).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from nmt.checkpoint import SPM_FILE, read_versioned_json
from nmt.config import DecodeConfig
from nmt.errors import ConfigError, NMTError
from nmt.search import Hypothesis, length_penalty
from nmt.tokenizer import EOS_ID, Tokenizer
from nmt.translate import BaseTranslator, Translator, length_batches

CT2_WEIGHTS = "model.bin"  # what CTranslate2 writes; its presence marks a CTranslate2 folder
EXPORT_INFO = "nmt.json"  # written by nmt export beside CTranslate2's own config.json
INSTALL_HINT = "pip install 'nmt[ctranslate2]'"
ENGINES = ("auto", "torch", "ctranslate2")
PENALTY_EXPONENT_BITS = 100  # len ** -p stays below 2 ** 100: no float32 overflow of score / ...


class MissingDependencyError(NMTError):
    """An optional package that a feature needs is not installed."""


def import_ctranslate2() -> ModuleType:
    """The ``ctranslate2`` module.

    Raises:
        MissingDependencyError: it is not installed (the message says how to install it).
    """
    try:
        import ctranslate2
    except ImportError:
        raise MissingDependencyError(
            f"the CTranslate2 engine needs the ctranslate2 package; install it with {INSTALL_HINT}"
        ) from None
    return ctranslate2


def is_ctranslate2_dir(path: str | Path) -> bool:
    """True for a CTranslate2 model folder (it holds ``model.bin``); needs no ctranslate2."""
    return (Path(path) / CT2_WEIGHTS).is_file()


def read_export_info(folder: str | Path) -> dict[str, Any]:
    """The ``nmt.json`` that ``nmt export`` writes into a CTranslate2 folder.

    Raises:
        CheckpointError: missing (not written by ``nmt export``), unreadable, or another
            format version.
    """
    return read_versioned_json(
        Path(folder) / EXPORT_INFO,
        "translate only CTranslate2 folders written by nmt export",
        "export the model again with this nmt",
    )


def collect_penalty(limit: int) -> float:
    """The CTranslate2 ``length_penalty`` that makes it keep finished hypotheses in our order.

    CTranslate2 sorts them by ``score / len ** p``; with ``p = -q`` that is ``score * len ** q``
    (scores are negative), so a shorter hypothesis comes first unless its score is worse by a
    factor above ``((len + 1) / len) ** q``. ``q`` is as large as float32 allows for lengths up
    to ``limit``: for lengths near the limit the factor is 1.7 at ``limit`` = 37, 1.16 at 100.
    """
    # A multiple of 1/8 is exact in float32, so that CTranslate2 and _hypotheses use one value.
    return -math.floor(8 * PENALTY_EXPONENT_BITS / math.log2(limit + 1)) / 8


def ct2_device(device: str) -> tuple[str, int]:
    """nmt's ``auto``/``cpu``/``cuda``/``cuda:N`` → CTranslate2's ``(device, device_index)``."""
    name, _, index = str(device).partition(":")
    return name, int(index) if index else 0


def load_translator(
    folder: str | Path,
    decode: DecodeConfig | None = None,
    engine: str = "auto",
    device: str = "auto",
    weights: str | Path | None = None,
    chunk_lines: int = 2000,
    strict: bool = False,
    dtype: str = "fp32",
    quantize: str | None = None,
) -> Translator | CT2Translator:
    """Load a model folder with the engine asked for.

    Args:
        engine: ``torch`` (:class:`nmt.translate.Translator`), ``ctranslate2``
            (:class:`CT2Translator`, a folder written by ``nmt export``), or ``auto``:
            ctranslate2 when :func:`is_ctranslate2_dir`, else torch.
        weights: a weights file instead of ``model.safetensors`` (torch only).
        strict: raise for an over-long source instead of cutting it with a warning.
        dtype / quantize: torch engine only (:func:`nmt.translate.for_inference`); a
            CTranslate2 model keeps the quantization it was exported with.

    Raises:
        ConfigError: unknown engine, or ``weights`` with the ctranslate2 engine.
        MissingDependencyError: ctranslate2 asked for (or detected) but not installed.
        CheckpointError: a file is missing or of another format version.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "torch" or (engine == "auto" and not is_ctranslate2_dir(folder)):
        return Translator.load(
            folder, decode, device, weights, chunk_lines, strict, dtype, quantize
        )
    if dtype != "fp32" or quantize is not None:
        raise ConfigError(
            "--dtype/--quantize apply to the torch engine; a CTranslate2 model keeps the "
            "quantization given to nmt export"
        )
    if weights is not None:
        raise ConfigError(
            "weights apply to the torch engine; export those weights with nmt export --weights"
        )
    return CT2Translator.load(folder, decode, device, chunk_lines=chunk_lines, strict=strict)


class CT2Translator(BaseTranslator):
    """A CTranslate2 translator with nmt's tokenizer, batching and output handling.

    Args:
        translator: a loaded ``ctranslate2.Translator``.
        tokenizer: the SentencePiece model the exported model was trained with.
        decode: search settings (beam size, length penalty, length limit, nbest, batching).
        chunk_lines: input lines read and translated together (bounds memory).
        max_positions: the model's position table size (sources are cut to one less, as in
            :class:`nmt.translate.Translator`).
        strict: raise for an over-long source instead of cutting it.
    """

    def __init__(
        self,
        translator: Any,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        chunk_lines: int = 2000,
        max_positions: int = 1024,
        strict: bool = False,
    ):
        super().__init__(tokenizer, decode, chunk_lines, max_positions, strict)
        self.translator = translator
        self.max_tgt_tokens = max_positions - 1  # as nmt.search.max_lengths' cap
        self.pieces = [tokenizer.sp.IdToPiece(i) for i in range(tokenizer.vocab_size)]
        self.piece_ids = {piece: i for i, piece in enumerate(self.pieces)}

    @classmethod
    def load(
        cls,
        folder: str | Path,
        decode: DecodeConfig | None = None,
        device: str = "auto",
        chunk_lines: int = 2000,
        intra_threads: int = 0,
        compute_type: str = "default",
        strict: bool = False,
    ) -> CT2Translator:
        """Load a folder written by ``nmt export --format ctranslate2``.

        Args:
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            intra_threads: CPU threads per batch (0 = CTranslate2's default).
            compute_type: CTranslate2 compute type (``default`` = as exported).

        Raises:
            MissingDependencyError: ctranslate2 is not installed.
            CheckpointError: the folder was not written by ``nmt export``.
        """
        ct2 = import_ctranslate2()
        folder = Path(folder)
        info = read_export_info(folder)
        name, index = ct2_device(device)
        translator = ct2.Translator(
            str(folder),
            device=name,
            device_index=index,
            compute_type=compute_type,
            intra_threads=intra_threads,
        )
        max_positions = int(info["model"]["max_positions"])
        tokenizer = Tokenizer(folder / SPM_FILE)
        return cls(translator, tokenizer, decode, chunk_lines, max_positions, strict)

    def search_rows(
        self, ids: list[list[int]]
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Batches sharing one length limit, searched by CTranslate2."""
        for limit, rows in self.batches(ids):
            yield rows, self.search([ids[r] for r in rows], limit)

    def batches(self, ids: list[list[int]]) -> Iterator[tuple[int, list[int]]]:
        """``(limit, rows)`` batches of the non-empty sources: rows sharing one length limit,
        cut by ``batch_size`` sentences and ``batch_tokens`` padded tokens (EOS counted)."""
        todo = [i for i, x in enumerate(ids) if x]
        if not todo:
            return
        d = self.decode
        # Computed as nmt.search.max_lengths does (float32), so both agree at the boundaries.
        src_len = torch.tensor([len(ids[i]) for i in todo], dtype=torch.float32)
        limits = ((src_len * d.max_len_a).long() + d.max_len_b).clamp(max=self.max_tgt_tokens)
        groups: dict[int, list[int]] = {}
        for i, limit in zip(todo, limits.tolist()):
            groups.setdefault(limit, []).append(i)
        for limit in sorted(groups, reverse=True):
            rows = groups[limit]
            lengths = [len(ids[r]) + 1 for r in rows]
            for batch in length_batches(lengths, d.batch_tokens, d.batch_size):
                yield limit, [rows[b] for b in batch]

    def search(self, src: list[list[int]], limit: int) -> list[list[Hypothesis]]:
        """Search a batch of sources (ids without EOS; CTranslate2 appends it, see
        ``add_source_eos`` in the exported config) with at most ``limit`` target tokens.

        Returns:
            For each sentence, its ``nbest`` best hypotheses, best first.
        """
        d = self.decode
        results = self.translator.translate_batch(
            [[self.pieces[i] for i in x] for x in src],
            beam_size=d.beam_size,
            num_hypotheses=d.beam_size,
            length_penalty=0.0 if d.beam_size == 1 else collect_penalty(limit),
            max_decoding_length=limit,
            min_decoding_length=0,
            max_input_length=0,
            return_scores=True,
            return_end_token=True,
        )
        return [self._hypotheses(r.hypotheses, r.scores, limit) for r in results]

    def _hypotheses(
        self, tokens: list[list[str]], scores: list[float], limit: int
    ) -> list[Hypothesis]:
        """CTranslate2's hypotheses → ours, ranked by the GNMT length penalty."""
        d = self.decode
        hyps = []
        for pieces, score in zip(tokens, scores):
            ids = [self.piece_ids[p] for p in pieces]
            if d.beam_size > 1:  # undo CTranslate2's score / len ** p
                score *= len(ids) ** collect_penalty(limit)
            if ids and ids[-1] == EOS_ID:
                ids = ids[:-1]
            # Length with EOS: a hypothesis cut at the limit gets it forced in nmt's search.
            lp = length_penalty(len(ids) + 1, d.length_penalty) if d.beam_size > 1 else 1.0
            hyps.append(Hypothesis(ids, float(score), float(score) / lp))
        return sorted(hyps, key=lambda h: -h.normalized)[: d.nbest]
