"""Canonical examples every reader produces and every feature converter takes.

Words keep the case they have in the source file. The original lower-cases
words at read time (§1.1); here lower-casing happens where the original uses
the lower-cased words: in `Aspect.text` (gold texts for the metric, §7.1) and in
the WordPiece tokenizer (`do_lower_case=True`, §1.3). The resulting texts and
pieces are the same, and the canonical example still carries the words exactly
as the annotators wrote them.
"""

from __future__ import annotations

import dataclasses

# Polarity names as the original stores them after `convert_absa_data` (§1.2).
POLARITIES = ("positive", "neutral", "negative")

# Label ids of the original (`absa/utils.py` constants, §1.2): 'other' is the
# untrained 4th class used for padding slots; 'conflict' (4) never occurs.
POLARITY_LABEL_IDS = {"other": 0, "neutral": 1, "positive": 2, "negative": 3}
LABEL_ID_TO_POLARITY = {v: k for k, v in POLARITY_LABEL_IDS.items()}


@dataclasses.dataclass(frozen=True)
class Aspect:
    """One gold aspect: an inclusive word span and its sentiment.

    Attributes:
      start: index of the first word of the aspect.
      end: index of the last word of the aspect (inclusive).
      polarity: 'positive' | 'neutral' | 'negative'.
    """

    start: int
    end: int
    polarity: str

    def __post_init__(self):
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity {self.polarity!r} is not one of {POLARITIES}")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad aspect span [{self.start}, {self.end}]")

    def text(self, words) -> str:
        """The aspect's words, lower-cased and joined by one space (§1.2 term_texts)."""
        return " ".join(w.lower() for w in words[self.start : self.end + 1])


@dataclasses.dataclass(frozen=True)
class Example:
    """One annotated sentence of a JMASA data set.

    Attributes:
      words: the pre-tokenised sentence, original case.
      aspects: gold aspects sorted by start, non-overlapping, inside `words`.
      image_id: file name of the tweet image inside the image folder.
      example_id: where the example came from, e.g. 'train:17' (file stem and
        record index or line number); unique within one read.
    """

    words: tuple[str, ...]
    aspects: tuple[Aspect, ...]
    image_id: str
    example_id: str


@dataclasses.dataclass(frozen=True)
class RelationExample:
    """One tweet of the TRC text-image relation set (§2.3).

    Attributes:
      words: the tweet text split on whitespace (may be empty).
      image_id: image file name, e.g. 'T<tweet_id>.jpg'.
      text_represented: 1 if the image shows what the text says (R label).
      image_adds: 1 if the image adds meaning to the text (V label, the gate).
      example_id: file stem and record index.
    """

    words: tuple[str, ...]
    image_id: str
    text_represented: int
    image_adds: int
    example_id: str
