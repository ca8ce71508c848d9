"""Projection of a WordPiece span back onto the original words (pure Python).

The original decoder (§6 step 4, §7.2 of original-jml-code.md) scores and
deduplicates spans by their *text*, obtained the SQuAD way:

1. join the WordPieces s..e, remove the ``##`` glue, normalise whitespace
   -> ``pred_text`` (lower-cased, punctuation split off);
2. join the covering original words with one space -> ``orig_text``;
3. ``get_final_text(pred_text, orig_text)``: run BERT's BasicTokenizer on
   ``orig_text``, find ``pred_text`` in it and map that character range back
   onto ``orig_text`` (ignoring spaces); on any failure return ``orig_text``.

So a span over part of a word (``trump`` of ``trump's``) yields that part,
and a span over a whole word yields the word as written.

BasicTokenizer is reimplemented here rather than taken from transformers:
transformers 5 keeps it only in a legacy module, and that copy adds an NFC
normalisation step that the original BERT tokenizer (the one the authors
used) does not have.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = [
    "basic_tokenize",
    "clear_projection_cache",
    "get_final_text",
    "project_span",
    "wordpiece_text",
]


def _is_whitespace(char: str) -> bool:
    # Tab, newline and CR are control characters in Unicode but BERT treats
    # them as whitespace.
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    # All non-letter/number ASCII is punctuation for BERT, even characters
    # such as "^", "$" and "`" that are not in the Unicode P* categories.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _clean_and_space_cjk(text: str) -> str:
    out = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            continue
        if _is_whitespace(char):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(" ")
            out.append(char)
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def _strip_accents(token: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", token) if unicodedata.category(c) != "Mn")


def _split_on_punctuation(token: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    for char in token:
        if _is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """BERT's BasicTokenizer (the original Google version, no NFC step).

    Drops NUL, U+FFFD and control characters; maps whitespace to spaces; puts
    spaces around CJK ideographs; splits on whitespace (``str.split``); with
    ``do_lower_case`` lower-cases and strips accents (NFD, drop category Mn);
    splits every punctuation character into its own token.
    """
    text = _clean_and_space_cjk(text)
    tokens: list[str] = []
    for token in text.split():
        if do_lower_case:
            token = _strip_accents(token.lower())
        tokens.extend(_split_on_punctuation(token))
    # The original re-splits " ".join(tokens) on whitespace; accent stripping
    # can leave empty tokens (a word made only of combining marks), which
    # that second split drops.
    return [t for t in tokens if t]


# Word -> ' '.join(its BasicTokenizer output), one cache per do_lower_case.
# Tweets repeat words heavily and the decoder projects several overlapping
# spans per sentence, so this cache is what keeps projection cheap. Bounded
# to stay small on odd corpora.
_WORD_CACHES: dict[bool, dict[str, str]] = {True: {}, False: {}}
_WORD_CACHE_MAX = 200_000


def clear_projection_cache() -> None:
    """Empty the per-word BasicTokenizer caches (for timing and memory)."""
    for cache in _WORD_CACHES.values():
        cache.clear()


def _tokenize_words_joined(words: Sequence[str], do_lower_case: bool) -> str:
    """' '.join(basic_tokenize(' '.join(words))), computed word by word.

    BasicTokenizer only acts within whitespace-separated tokens (cleaning and
    CJK spacing are per character), so tokenising the words one at a time and
    concatenating gives the same token list.
    """
    cache = _WORD_CACHES[bool(do_lower_case)]
    parts = []
    for word in words:
        text = cache.get(word)
        if text is None:
            text = " ".join(basic_tokenize(word, do_lower_case))
            if len(cache) >= _WORD_CACHE_MAX:
                cache.clear()
            cache[word] = text
        if text:  # a word of control characters only adds no token
            parts.append(text)
    return " ".join(parts)


def _non_space_positions(text: str) -> list[int]:
    """Index into ``text`` of each non-space character, in order."""
    return [i for i, c in enumerate(text) if c != " "]


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool = True) -> str:
    """SQuAD's ``get_final_text``: map normalised ``pred_text`` back onto ``orig_text``.

    Steps (§7.2): ``tok_text`` = BasicTokenizer(orig_text) joined by spaces;
    find ``pred_text`` in it (first occurrence; not found -> ``orig_text``);
    strip spaces (only ' ') from both texts keeping index maps; if the
    space-free lengths differ -> ``orig_text``; map the first and last
    matched characters to ``orig_text`` positions and return that slice.
    """
    return _final_text(pred_text, orig_text, _tokenize_words_joined(orig_text.split(" "), do_lower_case))


def _final_text(pred_text: str, orig_text: str, tok_text: str) -> str:
    """get_final_text given tok_text = ' '.join(BasicTokenizer(orig_text))."""
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    # Space-free lengths must agree (the original compares the stripped texts).
    if len(orig_text) - orig_text.count(" ") != len(tok_text) - tok_text.count(" "):
        return orig_text
    if pred_text == tok_text and pred_text:
        # Common case (the span covers whole words): the match is all of
        # tok_text, i.e. every non-space character of orig_text.
        return orig_text.strip(" ")
    # A match boundary on a space (or an empty pred_text, end = start - 1)
    # has no space-free counterpart: the original returns orig_text then.
    if end < 0 or tok_text[start] == " " or tok_text[end] == " ":
        return orig_text
    # Index among non-space characters = position minus spaces before it.
    ns_start = start - tok_text.count(" ", 0, start)
    ns_end = end - tok_text.count(" ", 0, end)
    orig_ns = _non_space_positions(orig_text)
    return orig_text[orig_ns[ns_start] : orig_ns[ns_end] + 1]


def wordpiece_text(pieces: Sequence[str]) -> str:
    """Join WordPieces into text: ' ##' and then '##' removed, whitespace squeezed."""
    text = " ".join(pieces).replace(" ##", "").replace("##", "")
    return " ".join(text.strip().split())


def project_span(
    tokens: Sequence[str],
    token_to_word: Sequence[int],
    words: Sequence[str],
    start: int,
    end: int,
    do_lower_case: bool = True,
) -> str:
    """Text of the WordPiece span ``start..end`` (inclusive), as the original decoder sees it.

    Args:
      tokens: feature tokens of one sentence ([CLS], WordPieces, [SEP]).
      token_to_word: [L] word index of each feature position, -1 where the
        position has none ([CLS], [SEP], padding).
      words: the (lower-cased) original words.
      start, end: feature positions, inclusive; both must map to a word.

    Returns:
      ``get_final_text(pred_text, orig_text)`` with pred_text from the pieces
      and orig_text = words[token_to_word[start] .. token_to_word[end]]
      joined by one space (§7.2).
    """
    if not 0 <= start <= end < len(tokens):
        raise ValueError(f"span ({start}, {end}) outside the {len(tokens)} tokens of the sentence")
    w_start, w_end = int(token_to_word[start]), int(token_to_word[end])
    if w_start < 0 or w_end < 0:
        raise ValueError(
            f"span ({start}, {end}) has a boundary with no word (token_to_word = {w_start}, {w_end}); "
            "[CLS], [SEP] and padding cannot be span boundaries"
        )
    if w_end >= len(words) or w_start > w_end:
        raise ValueError(
            f"span ({start}, {end}) maps to words ({w_start}, {w_end}); the sentence has {len(words)} words "
            "and token_to_word must not decrease"
        )
    span_words = words[w_start : w_end + 1]
    return _final_text(
        wordpiece_text(tokens[start : end + 1]),
        " ".join(span_words),
        _tokenize_words_joined(span_words, do_lower_case),
    )
