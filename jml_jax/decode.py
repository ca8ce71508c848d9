"""Host-side span decoding: MATE logits -> chosen aspect spans and their texts.

A port of the original inference decoder (§6 of original-jml-code.md,
``span_annotate_candidates`` with ``is_training=False``), NumPy/Python only.
Per sentence:

1. top-``n_best_size`` start and end positions over ALL positions ([CLS],
   [SEP] and padding included), stable descending sort (ties: lower index);
2. candidates ``for s in top_start: for e in top_end`` kept if
   s, e < num_tokens; both map to a word; e >= s; e - s + 1 <= max_answer_length;
   start[s] + end[e] >= logit_threshold (inclusive);
3. stable sort by start[s] + end[e] - (e - s + 1) descending (the length
   penalty is ``use_heuristics``; without it the score is start + end);
4. greedy walk: stop at ``max_spans`` chosen; skip a candidate whose projected
   text equals a chosen text; otherwise choose it and (``use_nms``) drop every
   later candidate whose text shares a normalised token with it (SQuAD
   token-F1 > 0). Text that normalises to '' suppresses nothing and is never
   suppressed by F1;
5. pad to ``n_best_size`` slots with (0, 0), mask 0.

Logits are widened to float64 before summing, as the original sums Python
floats; for float32 inputs this makes the threshold and ordering decisions
identical to the original's.

Steps 1-3 are vectorised over the batch; step 4 runs per sentence over the
few survivors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jml_jax.metrics import normalize_answer
from jml_jax.text_projection import project_span

__all__ = [
    "DecodeConfig",
    "DecodeResult",
    "decode_spans",
    "top_k_indexes",
]


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; defaults are the original's (§6, §8).

    Attributes:
      n_best_size: top-k of starts and of ends; also the number of output slots M.
      max_answer_length: longest span, in WordPieces.
      logit_threshold: minimum start + end logit (inclusive).
      max_spans: most spans chosen per sentence (the original's n_best_size // 2).
      use_heuristics: rank by start + end - length instead of start + end.
      use_nms: after choosing a span, drop later candidates sharing a
        normalised token with its text.
    """

    n_best_size: int = 20
    max_answer_length: int = 12
    logit_threshold: float = 8.0
    max_spans: int = 10
    use_heuristics: bool = True
    use_nms: bool = True

    def __post_init__(self):
        if self.n_best_size < 1:
            raise ValueError(f"n_best_size must be >= 1, got {self.n_best_size}")
        if self.max_answer_length < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {self.max_answer_length}")
        if not 0 <= self.max_spans <= self.n_best_size:
            raise ValueError(
                f"max_spans must be in [0, n_best_size={self.n_best_size}] (spans fill the "
                f"n_best_size output slots), got {self.max_spans}"
            )


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Output of :func:`decode_spans`.

    Attributes:
      span_starts: [B, M] int32 chosen start positions in selection order, 0-padded.
      span_ends: [B, M] int32 chosen end positions (inclusive), 0-padded.
      span_mask: [B, M] int32, 1 on chosen slots (always a prefix of each row).
      texts: per sentence, the projected text of each chosen span, in order.
      top_start: [B, K] int32 top-k start positions (K = min(n_best_size, L)).
      top_end: [B, K] int32 top-k end positions.
    """

    span_starts: np.ndarray
    span_ends: np.ndarray
    span_mask: np.ndarray
    texts: list[list[str]]
    top_start: np.ndarray
    top_end: np.ndarray


def top_k_indexes(logits, k: int) -> np.ndarray:
    """Indexes of the k largest logits, largest first; ties -> lower index first.

    Args:
      logits: [B, L] or [L] array.
      k: number of indexes; at most L are returned.

    Returns:
      [B, min(k, L)] or [min(k, L)] int32 (the original's ``_get_best_indexes``).
    """
    x = _as_logits("logits", logits)
    if x.ndim not in (1, 2):
        raise ValueError(f"logits must be [L] or [B, L], got shape {x.shape}")
    # Negation is exact, and a stable ascending sort of -x is a stable
    # descending sort of x: equal values keep index order.
    order = np.argsort(-x, axis=-1, kind="stable")
    return order[..., :k].astype(np.int32)


class NaNLogitsError(ValueError):
    """The model's logits hold NaN: nothing can be ranked (a diverged model)."""


def _as_logits(name: str, a) -> np.ndarray:
    """Logits as a NumPy float array (float16/32/64 kept; ints, bfloat16 widened exactly)."""
    x = np.asarray(a)
    if x.dtype.kind in "iu":
        x = x.astype(np.float64)
    elif x.dtype.kind == "V":
        try:  # ml_dtypes floats (bfloat16 from JAX) widen exactly to float32
            x = x.astype(np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}") from None
    elif x.dtype.kind != "f":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if np.isnan(x).any():
        rows = np.unique(np.nonzero(np.isnan(x.reshape(-1, x.shape[-1])))[0]).tolist()
        raise NaNLogitsError(f"{name} contain NaN (rows {rows[:10]}); cannot rank positions")
    return x


def _as_batch(name: str, a, ndim: int, dtype=None) -> np.ndarray:
    a = np.asarray(a, dtype=dtype)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def decode_spans(
    start_logits,
    end_logits,
    num_tokens,
    token_to_word,
    tokens: Sequence[Sequence[str]],
    words: Sequence[Sequence[str]],
    config: DecodeConfig = DecodeConfig(),
) -> DecodeResult:
    """Decode aspect spans from MATE logits exactly as the original (§6).

    Args:
      start_logits: [B, L] float start logits, all positions.
      end_logits: [B, L] float end logits.
      num_tokens: [B] number of real tokens per row, [CLS] and [SEP] included.
      token_to_word: [B, L] int word index per position, -1 where the original
        ``token_to_orig_map`` has no entry ([CLS], [SEP], padding).
      tokens: per row, the feature tokens ([CLS], WordPieces, [SEP]).
      words: per row, the lower-cased original words texts are projected onto.
      config: decoding settings.

    Returns:
      A :class:`DecodeResult` with M = ``config.n_best_size`` slots.
    """
    start = _as_batch("start_logits", _as_logits("start_logits", start_logits), 2)
    end = _as_batch("end_logits", _as_logits("end_logits", end_logits), 2)
    t2w = _as_batch("token_to_word", token_to_word, 2, np.int64)
    n_tok = _as_batch("num_tokens", num_tokens, 1, np.int64)
    batch, length = start.shape
    if end.shape != start.shape or t2w.shape != start.shape:
        raise ValueError(
            f"start_logits {start.shape}, end_logits {end.shape} and token_to_word {t2w.shape} "
            "must have the same [B, L] shape"
        )
    if n_tok.shape != (batch,) or len(tokens) != batch or len(words) != batch:
        raise ValueError(
            f"batch size {batch} from the logits, but num_tokens has shape {n_tok.shape}, "
            f"{len(tokens)} token lists and {len(words)} word lists"
        )
    n_listed = np.array([len(t) for t in tokens], np.int64)
    bad = np.nonzero((n_tok < 0) | (n_tok > np.minimum(n_listed, length)))[0]
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"row {b}: num_tokens = {n_tok[b]} but there are {n_listed[b]} tokens and L = {length}")

    top_start = top_k_indexes(start, config.n_best_size)
    top_end = top_k_indexes(end, config.n_best_size)

    # Candidate grid [B, k_s, k_e]; flattening gives the start-major order of step 2.
    s_pos = top_start.astype(np.int64)[:, :, None]
    e_pos = top_end.astype(np.int64)[:, None, :]
    n_col = n_tok[:, None, None]
    span_len = e_pos - s_pos + 1
    # float64 sums, as the original adds Python floats (exact widening).
    s_logit = np.take_along_axis(start, top_start, axis=1).astype(np.float64)[:, :, None]
    e_logit = np.take_along_axis(end, top_end, axis=1).astype(np.float64)[:, None, :]
    logit_sum = s_logit + e_logit
    valid = (
        (s_pos < n_col)
        & (e_pos < n_col)
        & (np.take_along_axis(t2w, top_start, axis=1) >= 0)[:, :, None]
        & (np.take_along_axis(t2w, top_end, axis=1) >= 0)[:, None, :]
        & (span_len >= 1)
        & (span_len <= config.max_answer_length)
        & (logit_sum >= config.logit_threshold)
    )
    score = logit_sum - span_len if config.use_heuristics else logit_sum

    span_starts = np.zeros((batch, config.n_best_size), np.int32)
    span_ends = np.zeros((batch, config.n_best_size), np.int32)
    span_mask = np.zeros((batch, config.n_best_size), np.int32)
    texts: list[list[str]] = [[] for _ in range(batch)]

    # Row-major nonzero: each row's pairs come out in start-major order.
    cand_rows, cand_i, cand_j = np.nonzero(valid)
    if cand_rows.size and config.max_spans > 0:
        bounds = np.searchsorted(cand_rows, np.arange(batch + 1))
        cand_s = top_start[cand_rows, cand_i].tolist()
        cand_e = top_end[cand_rows, cand_j].tolist()
        cand_score = score[cand_rows, cand_i, cand_j].tolist()
        for b in np.nonzero(bounds[1:] > bounds[:-1])[0].tolist():
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            # Python's sort is stable, so equal scores keep step-2 order (step 3).
            order = sorted(range(lo, hi), key=cand_score.__getitem__, reverse=True)
            chosen = _select_row(
                [(cand_s[i], cand_e[i]) for i in order], tokens[b], t2w[b].tolist(), words[b], config
            )
            for slot, ((s, e), text) in enumerate(chosen):
                span_starts[b, slot] = s
                span_ends[b, slot] = e
                span_mask[b, slot] = 1
                texts[b].append(text)
    return DecodeResult(span_starts, span_ends, span_mask, texts, top_start, top_end)


def _select_row(candidates, tokens, t2w_row, words, config: DecodeConfig):
    """Greedy selection with text dedup and textual NMS over one sentence (step 4).

    The original deletes, right after choosing a span, every later candidate
    sharing a normalised token with its text. Checking a candidate, when it
    is reached, against all spans chosen so far deletes exactly the same
    candidates (each was chosen before the candidate is reached), and skips
    projecting the candidates left after the cap.

    Args:
      candidates: (s, e) pairs in score order.

    Returns:
      list of ((s, e), text) in selection order.
    """
    chosen: list[tuple[tuple[int, int], str]] = []
    seen: set[str] = set()
    chosen_tokens: set[str] = set()  # union of the chosen texts' normalised tokens
    for s, e in candidates:
        if len(chosen) >= config.max_spans:
            break
        text = project_span(tokens, t2w_row, words, s, e)
        if text in seen:
            continue
        if config.use_nms:
            # SQuAD token-F1 > 0 with some chosen text <=> a shared normalised token.
            toks = normalize_answer(text).split()
            if not chosen_tokens.isdisjoint(toks):
                continue
            chosen_tokens.update(toks)
        seen.add(text)
        chosen.append(((s, e), text))
    return chosen
