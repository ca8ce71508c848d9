"""WordPiece features of JMASA examples, faithful to the original (§1.3, §5.2).

One feature per sentence (no sliding windows). Each word is lower-cased and
tokenized alone; the sub-tokens are truncated to L-2, wrapped as
`[CLS] pieces [SEP]` and padded with id 0 to L. Positions below are feature
positions ([CLS] = 0), spans inclusive.

Deliberate departures, all counted in `FeatureSet.stats` and logged:
  * A gold span with any piece past the L-2 truncation is dropped with a
    warning naming the example; the original crashes there (§13).
  * A gold span whose words produce no WordPiece at all (only control/format
    characters) is dropped the same way; the original would write an inverted
    span.
  * A sentence left without any gold span is dropped (`dropped_all_spans_lost`):
    keeping it would give a MATE row with no target, a NaN loss (§5.1).
Aspect-free sentences are dropped as in the original (`dropped_no_aspect`, §1.2).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from data_pipeline.examples import POLARITY_LABEL_IDS, Example
from data_pipeline.tokenizer import prime_cache, word_cache, wordpiece_word_with_ids

logger = logging.getLogger(__name__)

CLS, SEP = "[CLS]", "[SEP]"


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """max_seq_length: L (96 in the original); max_spans: M span slots (20 = n_best_size)."""

    max_seq_length: int = 96
    max_spans: int = 20

    def __post_init__(self):
        if self.max_seq_length < 3:
            raise ValueError(f"max_seq_length must be >= 3, got {self.max_seq_length}")
        if self.max_spans < 1:
            raise ValueError(f"max_spans must be >= 1, got {self.max_spans}")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Features of the kept examples. N = kept examples, L = max_seq_length, M = max_spans.

    arrays (int32):
      input_ids, input_mask, segment_ids: [N, L] (segment_ids all 0).
      start_positions, end_positions: [N, L] multi-hot gold boundaries (MATE
        targets, every kept gold aspect, duplicates included).
      span_starts, span_ends, polarity_labels, span_mask: [N, M] MASC training
        spans (§5.2): kept gold spans de-duplicated by their text (first kept),
        labels other=0 neutral=1 positive=2 negative=3, padded (0, 0), mask 0.
      token_to_word: [N, L] word index of each piece; -1 on [CLS], [SEP], padding.
      num_tokens: [N] real tokens including [CLS] and [SEP].
      example_index: [N] index into the `examples` given to the converter.
    examples: the kept input examples (row i is examples[i]).
    tokens: per row, ['[CLS]', pieces..., '[SEP]'] (no padding).
    stats: counts, see `convert_examples`.
    """

    arrays: dict
    examples: list
    tokens: list
    stats: dict

    def __len__(self):
        return len(self.examples)


def _pieces(tokenizer, cache, words):
    """-> (piece strings, piece ids, orig_to_tok [len(words)+1], tok_to_orig)."""
    pieces, ids, orig_to_tok, tok_to_orig = [], [], [], []
    for i, word in enumerate(words):
        orig_to_tok.append(len(pieces))
        hit = cache.get(word.lower())
        word_pieces, word_ids = hit if hit is not None else wordpiece_word_with_ids(tokenizer, word)
        pieces.extend(word_pieces)
        ids.extend(word_ids)
        tok_to_orig.extend([i] * len(word_pieces))
    # Sentinel: the original maps an aspect ending on the last word to the last piece.
    orig_to_tok.append(len(pieces))
    return pieces, ids, orig_to_tok, tok_to_orig


def _empty_arrays(n, cfg):
    L, M = cfg.max_seq_length, cfg.max_spans
    z = lambda *shape: np.zeros(shape, np.int32)  # noqa: E731
    return {
        "input_ids": z(n, L), "input_mask": z(n, L), "segment_ids": z(n, L),
        "start_positions": z(n, L), "end_positions": z(n, L),
        "span_starts": z(n, M), "span_ends": z(n, M), "polarity_labels": z(n, M),
        "span_mask": z(n, M), "token_to_word": np.full((n, L), -1, np.int32),
        "num_tokens": z(n), "example_index": z(n),
    }


def _convert(examples, tokenizer, cfg: FeatureConfig, with_gold: bool, keep_all: bool = False) -> FeatureSet:
    L, M = cfg.max_seq_length, cfg.max_spans
    keep = L - 2
    stats = dict(examples_in=len(examples), features=0, truncated_sentences=0, dropped_no_aspect=0,
                 dropped_all_spans_lost=0, dropped_spans_truncated=0, sentences_with_spans_truncated=0,
                 dropped_spans_empty=0, kept_without_gold_targets=0,
                 aspects_kept=0, masc_duplicate_texts=0)
    prime_cache(tokenizer, [w for ex in examples for w in ex.words])
    cache = word_cache(tokenizer)
    rows = []  # (example index, ids, pieces, tok_to_orig, gold [(s, e, label)], masc spans)
    for index, ex in enumerate(examples):
        if with_gold and not ex.aspects:
            stats["dropped_no_aspect"] += 1
            continue
        pieces, ids, orig_to_tok, tok_to_orig = _pieces(tokenizer, cache, ex.words)
        if len(pieces) > keep:
            stats["truncated_sentences"] += 1
            if not with_gold:
                logger.warning("%s: %d WordPieces truncated to %d", ex.example_id, len(pieces), keep)
        gold, cut = [], 0
        for aspect in ex.aspects if with_gold else ():
            start, end = orig_to_tok[aspect.start], orig_to_tok[aspect.end + 1] - 1
            if end < start:
                stats["dropped_spans_empty"] += 1
                logger.warning("%s: aspect %r has no WordPiece; dropped", ex.example_id, aspect.text(ex.words))
            elif end >= keep:
                stats["dropped_spans_truncated"] += 1
                cut += 1
                logger.warning("%s: aspect %r lies past the %d-WordPiece truncation; dropped",
                               ex.example_id, aspect.text(ex.words), keep)
            else:  # +1: the [CLS] shift (§1.3)
                gold.append((start + 1, end + 1, POLARITY_LABEL_IDS[aspect.polarity]))
        stats["sentences_with_spans_truncated"] += cut > 0
        if with_gold and not gold and ex.aspects:
            if not keep_all:
                stats["dropped_all_spans_lost"] += 1
                logger.warning("%s: no gold aspect survives tokenization; sentence dropped", ex.example_id)
                continue
            # Evaluation keeps it: its gold aspects count as misses.
            stats["kept_without_gold_targets"] += 1
        # MASC training spans (§5.2): de-duplicated by the text they project to.
        # For whole-word gold spans that is the covered lower-cased words.
        masc, seen = [], set()
        for s, e, label in gold:
            text = " ".join(w.lower() for w in ex.words[tok_to_orig[s - 1]: tok_to_orig[e - 1] + 1])
            if text in seen:
                stats["masc_duplicate_texts"] += 1
                continue
            seen.add(text)
            masc.append((s, e, label))
        if len(masc) > M:
            raise ValueError(f"{ex.example_id}: {len(masc)} distinct gold aspects exceed "
                             f"max_spans={M} (the original asserts <= 20, §10.16)")
        stats["aspects_kept"] += len(gold)
        rows.append((index, ids[:keep], pieces[:keep], tok_to_orig[:keep], gold, masc))

    arrays = _empty_arrays(len(rows), cfg)
    tokens = []
    for r, (index, ids, pieces, tok_to_orig, gold, masc) in enumerate(rows):
        n = len(ids) + 2
        arrays["input_ids"][r, :n] = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        arrays["input_mask"][r, :n] = 1
        arrays["token_to_word"][r, 1:n - 1] = tok_to_orig
        arrays["num_tokens"][r] = n
        arrays["example_index"][r] = index
        for s, e, _ in gold:
            arrays["start_positions"][r, s] = 1
            arrays["end_positions"][r, e] = 1
        for j, (s, e, label) in enumerate(masc):
            arrays["span_starts"][r, j] = s
            arrays["span_ends"][r, j] = e
            arrays["polarity_labels"][r, j] = label
            arrays["span_mask"][r, j] = 1
        tokens.append([CLS, *pieces, SEP])
    stats["features"] = len(rows)
    dropped = stats["dropped_all_spans_lost"] + stats["dropped_spans_truncated"] + stats["dropped_spans_empty"]
    if dropped:
        logger.warning("feature conversion: %s", {k: v for k, v in stats.items() if v})
    return FeatureSet(arrays, [examples[row[0]] for row in rows], tokens, stats)


def convert_examples(examples, tokenizer, config: FeatureConfig = FeatureConfig(), *,
                     keep_all: bool = False) -> FeatureSet:
    """Training/evaluation features of annotated examples (§1.3).

    Args:
      examples: sequence of `Example` (e.g. a reader's ReadResult).
      tokenizer: from `tokenizer.load_tokenizer`.
      config: L and M.
      keep_all: keep a sentence none of whose gold aspects survives the
        truncation (for evaluation: its gold aspects are scored as misses
        instead of vanishing from recall's denominator); counted as
        kept_without_gold_targets. Training drops it (no target to learn).
    Returns:
      FeatureSet; stats counts: examples_in, features, truncated_sentences,
      dropped_no_aspect, dropped_all_spans_lost, dropped_spans_truncated (gold
      aspects cut), sentences_with_spans_truncated, dropped_spans_empty,
      kept_without_gold_targets, aspects_kept (MATE targets), masc_duplicate_texts.
    Raises:
      ValueError if a sentence has more distinct gold aspects than max_spans.
    """
    return _convert(list(examples), tokenizer, config, with_gold=True, keep_all=keep_all)


def convert_texts(texts, tokenizer, config: FeatureConfig = FeatureConfig(), ids=None) -> FeatureSet:
    """Prediction features of unannotated sentences: one row per word list, none
    dropped; all targets and span slots are zero. Truncated rows are logged by
    their id: ``ids[i]`` (e.g. the input's 'file:line'), default 'text:<i>'."""
    ids = [f"text:{i}" for i in range(len(texts))] if ids is None else list(ids)
    examples = [Example(tuple(words), (), "", example_id) for words, example_id in zip(texts, ids, strict=True)]
    return _convert(examples, tokenizer, config, with_gold=False)


def num_wordpieces(tokenizer, words) -> int:
    """WordPieces of a sentence before truncation (each word tokenized alone, §1.3)."""
    return sum(len(wordpiece_word_with_ids(tokenizer, w)[0]) for w in words)


def convert_relation_examples(examples, tokenizer, max_seq_length: int = 96) -> dict:
    """Features of TRC examples (§2.3) -> dict of int32 arrays.

    Each word is lower-cased and tokenized alone, `[CLS] pieces [SEP]`, padded
    with 0 to max_seq_length. The original pads to the longest tweet instead
    and never truncates; here pieces past max_seq_length-2 are cut and logged.

    Returns:
      input_ids, input_mask, segment_ids: [N, L]; labels: [N, 2]
      (text_represented, image_adds); example_index: [N].
    """
    examples = list(examples)
    L, keep = max_seq_length, max_seq_length - 2
    if keep < 1:
        raise ValueError(f"max_seq_length must be >= 3, got {max_seq_length}")
    prime_cache(tokenizer, [w for ex in examples for w in ex.words])
    n = len(examples)
    out = {"input_ids": np.zeros((n, L), np.int32), "input_mask": np.zeros((n, L), np.int32),
           "segment_ids": np.zeros((n, L), np.int32), "labels": np.zeros((n, 2), np.int32),
           "example_index": np.arange(n, dtype=np.int32)}
    truncated = 0
    for r, ex in enumerate(examples):
        ids = [i for w in ex.words for i in wordpiece_word_with_ids(tokenizer, w)[1]]
        if len(ids) > keep:
            truncated += 1
            ids = ids[:keep]
        out["input_ids"][r, :len(ids) + 2] = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        out["input_mask"][r, :len(ids) + 2] = 1
        out["labels"][r] = (ex.text_represented, ex.image_adds)
    if truncated:
        logger.warning("TRC features: %d of %d tweets truncated to %d WordPieces", truncated, n, keep)
    return out
