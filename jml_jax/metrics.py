"""Metrics for joint multi-modal aspect-sentiment analysis (JMASA), host-side.

Every number this project reports comes from this module; docs/metrics.md
has the same list with the papers that use each definition and worked
differences. Key names are those returned by :func:`evaluate_predictions`.

- ``joint_orig/*``: the original JML metric (§7.1 of original-jml-code.md,
  ``eval_absa``), string-level: a predicted (text, polarity) is a hit if ANY
  gold aspect of the sentence has the same SQuAD-normalised text and the
  same polarity; relevant counts every gold aspect, duplicates included.
  The JML paper's joint P/R/F1 (code inherited from SpanABSA).
- ``joint_pos/*``: position-level joint P/R/F1: (word_start, word_end,
  polarity) triples matched exactly against gold, one to one (per-sentence
  sets). The span-level exact match of later JMASA work (e.g. VLP-MABSA).
- ``mate/*``: MATE P/R/F1, position-level (word-span sets, exact match).
  The default MATE number: it is one to one and does not credit a word
  found at the wrong place.
- ``mate_str/*``: MATE P/R/F1, string-level: the original's procedure with
  polarity ignored (§7.3 proposal).
- ``masc/{acc,macro_f1,n}``: polarity accuracy and macro-F1 over the three
  polarities on correctly extracted aspects (predicted word span == gold
  word span), the setting of the JML paper's MASC comparison.
- ``masc_gold/{acc,macro_f1,n}``: the same with polarity predicted on the
  gold spans (the usual MASC setting, e.g. TomBERT).

A predicted WordPiece span (s, e) covers words token_to_word[s] ..
token_to_word[e], so a sub-word span (``trump`` of ``trump's``) counts as the
whole covering word at position level, while string-level matching compares
the projected text ``trump`` with the gold ``trump's``.

Polarity ids (§1.2): 0 other, 1 neutral, 2 positive, 3 negative.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np

__all__ = [
    "POLARITY_NAMES",
    "evaluate_predictions",
    "exact_match",
    "joint_counts_original",
    "joint_counts_position",
    "mate_counts_position",
    "mate_counts_string",
    "masc_gold_span_metrics",
    "masc_metrics_from_labels",
    "masc_on_extracted",
    "normalize_answer",
    "original_joint_metric",
    "precision_recall_f1",
    "token_f1",
    "word_spans_from_token_spans",
]

POLARITY_NAMES = ("other", "neutral", "positive", "negative")
# The three classes macro-F1 averages over; 'other' is never a gold label.
_SENTIMENT_IDS = (1, 2, 3)

# SQuAD's set(string.punctuation): ASCII punctuation only (a regex is faster
# than str.translate for deletions).
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop ASCII punctuation, drop a/an/the, squeeze spaces."""
    s = _PUNCT.sub("", s.lower())
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
    """SQuAD exact match: equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def token_f1(prediction: str, ground_truth: str) -> float:
    """SQuAD token F1 of the normalised texts (0.0 when no token is shared)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def precision_recall_f1(common: int, retrieved: int, relevant: int) -> dict[str, float]:
    """P = common/retrieved, R = common/relevant, F1 = 2PR/(P+R); 0 where undefined.

    As ``eval_absa`` (§7.1), except R = 0 when there is no gold aspect (the
    original divides by zero there).
    """
    p = common / retrieved if retrieved > 0 else 0.0
    r = common / relevant if relevant > 0 else 0.0
    f1 = 2 * p * r / (p + r) if p > 0 and r > 0 else 0.0
    return {"p": p, "r": r, "f1": f1}


def _polarity_name(p) -> str:
    if isinstance(p, str):
        if p not in POLARITY_NAMES:
            raise ValueError(f"unknown polarity {p!r}; expected one of {POLARITY_NAMES} or an id 0-3")
        return p
    i = int(p)
    if not 0 <= i < len(POLARITY_NAMES):
        raise ValueError(f"polarity id {i} out of range; ids are 0..3 for {POLARITY_NAMES}")
    return POLARITY_NAMES[i]


def _polarity_id(p) -> int:
    return POLARITY_NAMES.index(_polarity_name(p))


def joint_counts_original(
    pred_texts: Sequence[str],
    pred_polarities: Sequence,
    gold_texts: Sequence[str],
    gold_polarities: Sequence,
) -> tuple[int, int, int]:
    """(common, retrieved, relevant) of ONE sentence under the original metric (§7.1).

    A prediction is a hit if any gold aspect has the same normalised text and
    the same polarity (names or ids). No one-to-one assignment: two equal
    predictions can both hit one gold; two golds with one text give at most
    one hit per prediction. relevant = len(gold_texts), duplicates included.
    """
    if len(pred_texts) != len(pred_polarities) or len(gold_texts) != len(gold_polarities):
        raise ValueError(
            f"{len(pred_texts)} predicted texts vs {len(pred_polarities)} polarities, "
            f"{len(gold_texts)} gold texts vs {len(gold_polarities)} polarities"
        )
    gold = {(normalize_answer(t), _polarity_name(p)) for t, p in zip(gold_texts, gold_polarities)}
    common = sum((normalize_answer(t), _polarity_name(p)) in gold for t, p in zip(pred_texts, pred_polarities))
    return common, len(pred_texts), len(gold_texts)


def original_joint_metric(
    pred_texts: Sequence[Sequence[str]],
    pred_polarities: Sequence[Sequence],
    gold_texts: Sequence[Sequence[str]],
    gold_polarities: Sequence[Sequence],
) -> dict[str, float]:
    """The original JML metric over sentences: counts summed, then P/R/F1.

    Args are per-sentence lists (see :func:`joint_counts_original`).

    Returns:
      dict with ``common``, ``retrieved``, ``relevant`` (ints) and
      ``precision``, ``recall``, ``f1``.
    """
    n = len(pred_texts)
    if not len(pred_polarities) == len(gold_texts) == len(gold_polarities) == n:
        raise ValueError(
            f"sentence counts differ: {n} predicted texts, {len(pred_polarities)} predicted polarities, "
            f"{len(gold_texts)} gold texts, {len(gold_polarities)} gold polarities"
        )
    totals = [0, 0, 0]
    for i in range(n):
        try:
            counts = joint_counts_original(pred_texts[i], pred_polarities[i], gold_texts[i], gold_polarities[i])
        except ValueError as err:
            raise ValueError(f"sentence {i}: {err}") from None
        totals = [a + b for a, b in zip(totals, counts)]
    prf = precision_recall_f1(*totals)
    return {
        "common": totals[0],
        "retrieved": totals[1],
        "relevant": totals[2],
        "precision": prf["p"],
        "recall": prf["r"],
        "f1": prf["f1"],
    }


def word_spans_from_token_spans(span_starts, span_ends, span_mask, token_to_word) -> list[list[tuple[int, int]]]:
    """Word spans covered by the chosen WordPiece spans.

    Args:
      span_starts, span_ends, span_mask: [B, M] decoder output.
      token_to_word: [B, L] word index per position (-1 for none).

    Returns:
      per sentence, (token_to_word[s], token_to_word[e]) for each masked-in
      slot, in slot order. A sub-word span maps to its covering words.
    """
    starts, ends, mask = (np.asarray(a) for a in (span_starts, span_ends, span_mask))
    t2w = np.asarray(token_to_word)
    if not starts.shape == ends.shape == mask.shape or starts.ndim != 2:
        raise ValueError(f"span arrays must share one [B, M] shape, got {starts.shape}, {ends.shape}, {mask.shape}")
    if t2w.ndim != 2 or t2w.shape[0] != starts.shape[0]:
        raise ValueError(f"token_to_word must be [B={starts.shape[0]}, L], got {t2w.shape}")
    out = []
    for b in range(starts.shape[0]):
        spans = []
        for m in np.nonzero(mask[b])[0].tolist():
            s, e = int(starts[b, m]), int(ends[b, m])
            if not 0 <= s <= e < t2w.shape[1] or t2w[b, s] < 0 or t2w[b, e] < 0:
                raise ValueError(f"row {b} slot {m}: span ({s}, {e}) does not map to words")
            spans.append((int(t2w[b, s]), int(t2w[b, e])))
        out.append(spans)
    return out


def joint_counts_position(pred_triples, gold_triples) -> tuple[int, int, int]:
    """(common, retrieved, relevant) of ONE sentence, position-level joint.

    Args:
      pred_triples, gold_triples: (word_start, word_end_inclusive, polarity)
        with polarity a name or id. Each side is made a set, so a repeated
        triple counts once; matching is exact and one to one.
    """
    pred = {(int(s), int(e), _polarity_name(p)) for s, e, p in pred_triples}
    gold = {(int(s), int(e), _polarity_name(p)) for s, e, p in gold_triples}
    return len(pred & gold), len(pred), len(gold)


def mate_counts_position(pred_spans, gold_spans) -> tuple[int, int, int]:
    """(common, retrieved, relevant) of ONE sentence for MATE: word-span sets, exact match."""
    pred = {(int(s), int(e)) for s, e in pred_spans}
    gold = {(int(s), int(e)) for s, e in gold_spans}
    return len(pred & gold), len(pred), len(gold)


def mate_counts_string(pred_texts: Sequence[str], gold_texts: Sequence[str]) -> tuple[int, int, int]:
    """(common, retrieved, relevant) of ONE sentence for MATE, string-level.

    The original's joint procedure with polarity ignored: a predicted text is
    a hit if it normalises equal to any gold text of the sentence.
    """
    gold = {normalize_answer(t) for t in gold_texts}
    return sum(normalize_answer(t) in gold for t in pred_texts), len(pred_texts), len(gold_texts)


def masc_metrics_from_labels(pred_ids, gold_ids) -> dict[str, float]:
    """Accuracy and macro-F1 over neutral/positive/negative of paired labels.

    Args:
      pred_ids, gold_ids: [N] polarity ids (0-3); a predicted 0 ('other') is
        always wrong and is no class's positive.

    Returns:
      dict ``acc``, ``macro_f1`` (mean of the three per-class F1s, a class
      with no gold and no prediction scoring 0) and ``n`` = N. All 0 if N = 0.
    """
    pred = np.asarray(pred_ids, np.int64).reshape(-1)
    gold = np.asarray(gold_ids, np.int64).reshape(-1)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.size} predicted vs {gold.size} gold polarities")
    for name, a in (("predicted", pred), ("gold", gold)):
        if a.size and (a.min() < 0 or a.max() > 3):
            raise ValueError(f"{name} polarity ids must be in 0..3, got {sorted(set(a.tolist()))}")
    n = int(gold.size)
    if n == 0:
        return {"acc": 0.0, "macro_f1": 0.0, "n": 0}
    f1s = []
    for c in _SENTIMENT_IDS:
        tp = int(np.sum((pred == c) & (gold == c)))
        denom = int(np.sum(pred == c)) + int(np.sum(gold == c))
        f1s.append(2 * tp / denom if denom else 0.0)  # = 2PR/(P+R)
    return {"acc": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s)), "n": n}


def masc_gold_span_metrics(pred_polarity_ids, gold_polarity_ids, mask=None) -> dict[str, float]:
    """MASC accuracy and macro-F1 when the gold spans are given.

    Args:
      pred_polarity_ids: [...] predicted ids (e.g. [B, M] argmax of the
        classification logits on the gold spans).
      gold_polarity_ids: same shape, gold ids (1-3 where mask is 1).
      mask: same shape, 1 on real gold spans; None = all.
    """
    pred = np.asarray(pred_polarity_ids)
    gold = np.asarray(gold_polarity_ids)
    m = np.ones(gold.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if not pred.shape == gold.shape == m.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, gold {gold.shape}, mask {m.shape}")
    return masc_metrics_from_labels(pred[m], gold[m])


def masc_on_extracted(pred_triples, gold_triples) -> tuple[list[int], list[int]]:
    """Pair up polarities of correctly extracted aspects in ONE sentence.

    For each gold (s, e, polarity) whose word span was predicted, the
    polarity of the FIRST prediction (selection order) with that span.

    Returns:
      (pred_ids, gold_ids) lists, one entry per correctly extracted gold aspect.
    """
    first: dict[tuple[int, int], int] = {}
    for s, e, p in pred_triples:
        first.setdefault((int(s), int(e)), _polarity_id(p))
    pred_ids, gold_ids = [], []
    for s, e, p in gold_triples:
        if (int(s), int(e)) in first:
            pred_ids.append(first[(int(s), int(e))])
            gold_ids.append(_polarity_id(p))
    return pred_ids, gold_ids


def _add_prf(out: dict, prefix: str, counts) -> None:
    common, retrieved, relevant = counts
    for k, v in precision_recall_f1(common, retrieved, relevant).items():
        out[f"{prefix}/{k}"] = v
    out[f"{prefix}/common"] = float(common)
    out[f"{prefix}/retrieved"] = float(retrieved)
    out[f"{prefix}/relevant"] = float(relevant)


def evaluate_predictions(
    span_starts,
    span_ends,
    span_mask,
    texts: Sequence[Sequence[str]],
    polarity_ids,
    token_to_word,
    gold_aspects: Sequence[Sequence[tuple[int, int, object]]],
    words: Sequence[Sequence[str]],
    gold_span_polarity_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """All metrics of this module from decoded spans and polarity predictions.

    Args:
      span_starts, span_ends, span_mask: [B, M] decoder output.
      texts: per sentence, the projected text of each masked-in slot, in slot order.
      polarity_ids: [B, M] predicted polarity id per slot (argmax of the
        classification logits); only masked-in slots are read.
      token_to_word: [B, L] word index per position, -1 for none.
      gold_aspects: per sentence, (word_start, word_end_inclusive, polarity
        name or id) of each gold aspect.
      words: per sentence, the lower-cased words (gold text = words
        start..end joined by one space, as the original's term).
      gold_span_polarity_ids: optional, per sentence, the predicted polarity
        of each gold aspect when the model is given the gold spans; adds
        ``masc_gold/*``.

    Returns:
      dict with keys ``{joint_orig,joint_pos,mate,mate_str}/{p,r,f1,common,
      retrieved,relevant}``, ``masc/{acc,macro_f1,n}`` and, if
      ``gold_span_polarity_ids`` is given, ``masc_gold/{acc,macro_f1,n}``.
    """
    word_spans = word_spans_from_token_spans(span_starts, span_ends, span_mask, token_to_word)
    pol = np.asarray(polarity_ids)
    mask = np.asarray(span_mask)
    batch = len(word_spans)
    if pol.shape != mask.shape:
        raise ValueError(f"polarity_ids shape {pol.shape} != span_mask shape {mask.shape}")
    if not len(texts) == len(gold_aspects) == len(words) == batch:
        raise ValueError(
            f"{batch} rows of spans but {len(texts)} text lists, {len(gold_aspects)} gold lists, "
            f"{len(words)} word lists"
        )
    if gold_span_polarity_ids is not None and len(gold_span_polarity_ids) != batch:
        raise ValueError(f"{batch} rows but {len(gold_span_polarity_ids)} gold-span polarity lists")

    joint_orig = np.zeros(3, np.int64)
    joint_pos = np.zeros(3, np.int64)
    mate = np.zeros(3, np.int64)
    mate_str = np.zeros(3, np.int64)
    masc_pred, masc_gold, gold_pred, gold_true = [], [], [], []
    for b in range(batch):
        slots = np.nonzero(mask[b])[0].tolist()
        if len(texts[b]) != len(slots):
            raise ValueError(f"row {b}: {len(texts[b])} texts for {len(slots)} masked-in span slots")
        pred_pol = [_polarity_name(pol[b, m]) for m in slots]
        gold = []
        for g in gold_aspects[b]:
            s, e, p = g
            if not 0 <= int(s) <= int(e) < len(words[b]):
                raise ValueError(f"row {b}: gold aspect {g} outside the {len(words[b])} words")
            gold.append((int(s), int(e), _polarity_name(p)))
        gold_texts = [" ".join(words[b][s : e + 1]) for s, e, _ in gold]
        gold_pols = [p for _, _, p in gold]
        pred_triples = [(s, e, p) for (s, e), p in zip(word_spans[b], pred_pol)]

        joint_orig += joint_counts_original(texts[b], pred_pol, gold_texts, gold_pols)
        joint_pos += joint_counts_position(pred_triples, gold)
        mate += mate_counts_position(word_spans[b], [(s, e) for s, e, _ in gold])
        mate_str += mate_counts_string(texts[b], gold_texts)
        p_ids, g_ids = masc_on_extracted(pred_triples, gold)
        masc_pred += p_ids
        masc_gold += g_ids
        if gold_span_polarity_ids is not None:
            if len(gold_span_polarity_ids[b]) != len(gold):
                raise ValueError(
                    f"row {b}: {len(gold_span_polarity_ids[b])} gold-span predictions for {len(gold)} gold aspects"
                )
            gold_pred += [int(x) for x in gold_span_polarity_ids[b]]
            gold_true += [_polarity_id(p) for p in gold_pols]

    out: dict[str, float] = {}
    _add_prf(out, "joint_orig", joint_orig.tolist())
    _add_prf(out, "joint_pos", joint_pos.tolist())
    _add_prf(out, "mate", mate.tolist())
    _add_prf(out, "mate_str", mate_str.tolist())
    for k, v in masc_metrics_from_labels(masc_pred, masc_gold).items():
        out[f"masc/{k}"] = float(v)
    if gold_span_polarity_ids is not None:
        for k, v in masc_metrics_from_labels(gold_pred, gold_true).items():
            out[f"masc_gold/{k}"] = float(v)
    return out


# --------------------------------------------------------------------------- relation (TRC)

RELATIONS = ("text_represented", "image_adds")  # rows of the [B, 2, 2] relation logits (§2.2)


def relation_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Scores of one split from its logits.

    Args:
      logits: [N, 2, 2] (row 0 text_represented, row 1 image_adds).
      labels: [N, 2] 0/1.

    Returns:
      ``{'<relation>/accuracy', '<relation>/precision', '<relation>/recall',
      '<relation>/f1', '<relation>/predicted_positive_frac'}`` for both
      relations (positive class = 1, predicted when P > 0.5, i.e. the argmax;
      precision/recall/F1 are 0 when undefined), ``loss`` (the mean CE of
      `relation_loss`) and ``f1`` = image_adds/f1 (the headline number).
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 3 or logits.shape[1:] != (2, 2) or labels.shape != logits.shape[:2]:
        raise ValueError(f"relation_metrics expects logits [N, 2, 2] and labels [N, 2]; got "
                         f"{logits.shape} and {labels.shape}")
    if logits.shape[0] == 0:
        raise ValueError("relation_metrics needs at least one example")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    out = {"loss": float(-np.take_along_axis(log_probs, labels[..., None], -1).mean())}
    predicted = np.argmax(logits, -1)
    for i, name in enumerate(RELATIONS):
        pred, gold = predicted[:, i] == 1, labels[:, i] == 1
        tp = int(np.sum(pred & gold))
        precision = tp / pred.sum() if pred.sum() else 0.0
        recall = tp / gold.sum() if gold.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update({
            f"{name}/accuracy": float(np.mean(pred == gold)),
            f"{name}/precision": float(precision),
            f"{name}/recall": float(recall),
            f"{name}/f1": float(f1),
            f"{name}/predicted_positive_frac": float(pred.mean()),
        })
    out["f1"] = out["image_adds/f1"]
    return out
