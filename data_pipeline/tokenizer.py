"""WordPiece tokenizer loading and per-word tokenization as the original does it (§1.3).

The original tokenizes each word on its own with BERT's `FullTokenizer`
(`do_lower_case=True`): clean the text (drop control and format characters such
as U+200B, U+200D, U+FE0F, U+FFFD), lower-case, strip accents (NFD, drop
combining marks), split on whitespace and punctuation, then greedy
longest-match WordPiece with '##' continuations; a piece run longer than 100
characters becomes [UNK]. `transformers.BertTokenizerFast` with
`do_lower_case=True` (accent stripping follows lower-casing, as in
bert-base-uncased) implements the same steps; tests check it against the pure
Python port of the original classes on every word of the real data sets.

A word made only of removed characters yields NO pieces, exactly as with the
original. Such a word then owns no WordPiece position: the next word's first
piece follows the previous word's last one, and `orig_to_tok_index` of the
empty word equals that of the next word (see features.py for spans).
"""

from __future__ import annotations

import collections
import pathlib
import weakref

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Per-tokenizer cache: word -> (pieces, ids). Keyed weakly so a dropped
# tokenizer takes its cache with it.
_CACHES: "weakref.WeakKeyDictionary[object, dict[str, tuple[tuple[str, ...], tuple[int, ...]]]]" = (
    weakref.WeakKeyDictionary())


def read_vocab(vocab_path) -> "collections.OrderedDict[str, int]":
    """Reads a BERT vocab.txt (one token per line, id = line index) -> token -> id.

    Raises ValueError naming the file and line on an empty or repeated token.
    """
    from data_pipeline.reader_common import read_text

    path, text = read_text(vocab_path)  # UTF-8; any other encoding is refused naming the file
    vocab: collections.OrderedDict[str, int] = collections.OrderedDict()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline
    for index, line in enumerate(lines):
        token = line.rstrip("\r").strip()  # as the original load_vocab: token.strip()
        if not token:
            raise ValueError(f"{path}:{index + 1}: empty token in vocabulary")
        if token in vocab:
            raise ValueError(f"{path}:{index + 1}: token {token!r} repeats line {vocab[token] + 1}")
        vocab[token] = index
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: vocabulary lacks the special tokens {missing}")
    return vocab


def load_tokenizer(vocab_path) -> "transformers.BertTokenizerFast":  # noqa: F821
    """A lower-casing WordPiece tokenizer built from a local vocab.txt (never a hub call).

    Args:
      vocab_path: path to a BERT vocab.txt, e.g. bert-base-uncased's or the
        bundled data/sample/vocab.txt.
    """
    # Imported here: transformers takes seconds to import, and readers,
    # features and cached pipelines should not pay that unless they tokenize.
    from transformers import BertTokenizerFast

    vocab = read_vocab(vocab_path)
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, strip_accents=None,
                             tokenize_chinese_chars=True)


def _cache(tokenizer) -> dict:
    cache = _CACHES.get(tokenizer)
    if cache is None:
        cache = _CACHES[tokenizer] = {}
    return cache


def prime_cache(tokenizer, words) -> None:
    """Tokenizes every not yet cached word of `words` in one batched call (for speed)."""
    cache = _cache(tokenizer)
    new = [w for w in dict.fromkeys(w.lower() for w in words) if w not in cache]
    if not new:
        return
    # Each list element is tokenized as its own sequence, so batching gives
    # the same pieces as tokenizing the words one by one. The Rust tokenizer is
    # called directly (3x faster than the Python wrapper) unless it has
    # truncation or padding switched on.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        for word, enc in zip(new, backend.encode_batch(new, add_special_tokens=False)):
            cache[word] = (tuple(enc.tokens), tuple(enc.ids))
        return
    encoded = tokenizer(new, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    for word, ids in zip(new, encoded):
        cache[word] = (tuple(tokenizer.convert_ids_to_tokens(ids)), tuple(ids))


def word_cache(tokenizer) -> dict:
    """The tokenizer's cache dict (lower-cased word -> (pieces, ids)), for hot loops
    that call `prime_cache` first and then look words up directly."""
    return _cache(tokenizer)


def wordpiece_word_with_ids(tokenizer, word: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(pieces, ids) of one word lower-cased and tokenized alone; cached per tokenizer.

    The word is lower-cased with str.lower() first, as the original reader does
    (§1.1), before the tokenizer's own lower-casing and accent stripping.
    """
    cache = _cache(tokenizer)
    word = word.lower()
    hit = cache.get(word)
    if hit is None:
        prime_cache(tokenizer, [word])
        hit = cache[word]
    return hit


def wordpiece_word(tokenizer, word: str) -> list[str]:
    """WordPieces of ONE word tokenized alone, lower-cased (§1.3); [] for a word of
    only control/format characters, as the original FullTokenizer gives."""
    return list(wordpiece_word_with_ids(tokenizer, word)[0])
