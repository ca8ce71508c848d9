"""Readers of the TRC text-image relation set (§2.3) and its 80/20 split.

Two layouts give the same `RelationExample`s:
  trc      the canonical JSON: an array (or JSON Lines) of
           {"words", "image_id": "T<tweet_id>.jpg", "ifpairs": [R, V]}
  trc_csv  the CSV as released (danielpreotiuc/text-image-relationship,
           `textimage-data.csv`): a header
           `"tweet_id","user_id","tweet","text_is_represented","image_adds",...`
           and one row per line, every field quoted. Embedded quotes are
           written `\\"`, which no CSV dialect reads back, so a row is split on
           `","` exactly as the original does (§2.3).
"""

from __future__ import annotations

import math

import numpy as np

from data_pipeline.examples import RelationExample
from data_pipeline.reader_common import (DataFormatError, ErrorPolicy, ReadResult, RecordError, read_json_file,
                                         read_text, split_lines)

TRC_CSV_HEADER = ("tweet_id", "user_id", "tweet", "text_is_represented", "image_adds")

def _trc_example(record, example_id: str) -> RelationExample:
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    words = record.get("words")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise RecordError("'words' must be a list of strings")
    image_id = record.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise RecordError(f"'image_id' must be a non-empty string, got {image_id!r}")
    pair = record.get("ifpairs")
    if not (isinstance(pair, list) and len(pair) == 2 and all(v in (0, 1) and not isinstance(v, bool) for v in pair)):
        raise RecordError(f"'ifpairs' must be [text_is_represented, image_adds] with 0/1 values, got {pair!r}")
    return RelationExample(tuple(words), image_id, pair[0], pair[1], example_id)


def read_trc(path, on_error: str = "raise") -> ReadResult:
    """Reads the TRC JSON (array or JSON Lines) -> ReadResult of RelationExamples.

    Tweets with no words are kept (the TRC set has some); they become
    '[CLS] [SEP]' features.
    """
    return read_json_file(path, on_error, _trc_example)


def cut_tweet(tweet: str) -> str:
    """The original's cut of a tweet before its last 'https:' (§2.3).

    Faithful to §10.13: a tweet without 'https:' loses its last character
    (`rfind` gives -1 and the original slices `[:-1]`); 36 of the 4471 TRC
    tweets are cut that way.
    """
    return tweet[:tweet.rfind("https:")]


def _trc_csv_fields(line: str, width: int) -> list[str]:
    if len(line) < 2 or not (line.startswith('"') and line.endswith('"')):
        raise RecordError('a row must start and end with a quote (every field is quoted)')
    fields = line[1:-1].split('","')
    if len(fields) != width:
        raise RecordError(f'expected {width} fields separated by \'","\', found {len(fields)}')
    return fields


def read_trc_csv(path, on_error: str = "raise", full_text: bool = False) -> ReadResult:
    """Reads the TRC CSV as released -> ReadResult of RelationExamples.

    words: the tweet cut before its last 'https:' as the original does
    (`cut_tweet`, §2.3, §10.13), or the whole tweet with full_text=True, then
    stripped and split on whitespace (the lower-casing happens in the
    tokenizer). image_id: 'T<tweet_id>.jpg'. Labels [text_is_represented,
    image_adds] (0/1). example_id: '<stem>:<row index>', as `read_trc`.
    """
    path, text = read_text(path)
    issues = ErrorPolicy(path, on_error)
    lines = split_lines(text)
    header_no = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_no is None:
        return issues.result([], "the file is empty")
    header = lines[header_no].strip()
    names = header[1:-1].split('","') if header.startswith('"') and header.endswith('"') else []
    if tuple(names[:len(TRC_CSV_HEADER)]) != TRC_CSV_HEADER:
        raise DataFormatError(f"{path}:{header_no + 1}: the header must start with "
                              + ",".join(f'"{n}"' for n in TRC_CSV_HEADER) + f", got {header[:100]!r}")
    examples, index = [], -1
    for line_no, line in enumerate(lines[header_no + 1:], header_no + 2):
        if not line.strip():
            continue
        index += 1
        try:
            fields = _trc_csv_fields(line.strip(), len(names))
            tweet_id, tweet, r, v = fields[0], fields[2], fields[3], fields[4]
            if not tweet_id.isdigit():
                raise RecordError(f"tweet_id {tweet_id!r} is not a number")
            if r not in ("0", "1") or v not in ("0", "1"):
                raise RecordError(f"text_is_represented/image_adds must be 0 or 1, got {r!r}/{v!r}")
            words = (tweet if full_text else cut_tweet(tweet)).strip().split()
            examples.append(RelationExample(tuple(words), f"T{tweet_id}.jpg", int(r), int(v),
                                            f"{path.stem}:{index}"))
        except RecordError as e:
            issues.report(issues.location(line_no), str(e))
    return issues.result(examples, "only a header line")


def split_trc(examples, test_fraction: float = 0.2, seed: int = 1234):
    """The paper's 80/20 TRC split (§2.3) -> (train, test) lists.

    Follows the algorithm of sklearn's `train_test_split(test_size=0.2,
    random_state=1234)` (ShuffleSplit): `np.random.RandomState(seed)
    .permutation(n)`, the first ceil(test_fraction * n) indices are the test
    set and the rest, in permutation order, the train set. sklearn is not a
    dependency; this was checked to give exactly sklearn 1.9.1's lists for
    n = 5, 10, 20, 37, 101 and 4471 (a test pins n = 20). The split is
    deterministic, disjoint and covers every example; it equals the original's
    only when the rows come in the same order as its CSV.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    examples = list(examples)
    n = len(examples)
    n_test = math.ceil(test_fraction * n)
    if n_test == 0 or n_test == n:
        raise ValueError(f"cannot split {n} examples with test_fraction={test_fraction}")
    permutation = np.random.RandomState(seed).permutation(n)
    test = [examples[i] for i in permutation[:n_test]]
    train = [examples[i] for i in permutation[n_test:]]
    return train, test
