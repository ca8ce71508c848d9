"""Shared pieces of the annotation readers: errors, results, span checks, JSON records.

See data_pipeline/readers.py for the formats and the error policy.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import logging
import pathlib
import re

from data_pipeline.examples import Aspect, Example

logger = logging.getLogger("data_pipeline.readers")

ON_ERROR_CHOICES = ("raise", "skip")
SHORT_POLARITY = {"POS": "positive", "NEU": "neutral", "NEG": "negative"}


class DataFormatError(ValueError):
    """A record of an annotation file does not parse; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class ReadResult(collections.abc.Sequence):
    """What a reader returns: a sequence of examples plus the skipped records.

    Attributes:
      examples: `Example`s (or `RelationExample`s) in file order.
      skipped: (location 'file:line', reason) of every record left out with
        on_error='skip'; empty with on_error='raise'.
      path: the file read.
    """

    examples: tuple
    skipped: tuple[tuple[str, str], ...]
    path: str

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __iter__(self):
        return iter(self.examples)


class RecordError(Exception):
    """Raised by a record parser for a malformed record; `ErrorPolicy` turns it into a
    DataFormatError or a counted skip. `line`: the offending line when it is not
    the record's first."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.line = line


class ErrorPolicy:
    """Raises or records malformed records according to `on_error`."""

    def __init__(self, path: pathlib.Path, on_error: str):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.path = path
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = []

    def location(self, line: int, record: int | None = None) -> str:
        where = f"{self.path}:{line}"
        return where if record is None else f"{where} (record {record})"

    def report(self, location: str, reason: str):
        if self.on_error == "raise":
            raise DataFormatError(f"{location}: {reason}")
        logger.warning("skipping %s: %s", location, reason)
        self.skipped.append((location, reason))

    def result(self, examples, empty_hint: str = "") -> ReadResult:
        """The ReadResult; refuses a file that gave no example at all, which would
        otherwise train or score on nothing without a word."""
        if self.skipped:
            logger.warning("%s: skipped %d malformed record(s)", self.path, len(self.skipped))
        if not examples:
            why = f"all {len(self.skipped)} records were malformed and skipped" if self.skipped else (
                empty_hint or "the file holds no records")
            raise DataFormatError(f"{self.path}: no examples ({why})")
        return ReadResult(tuple(examples), tuple(self.skipped), str(self.path))


def read_text(path) -> tuple[pathlib.Path, str]:
    """(path, text) of a UTF-8 text file; a UTF-8 byte-order mark is allowed.

    Raises:
      DataFormatError naming the file when it is not UTF-8 (e.g. Latin-1, or
        UTF-16 with or without its byte-order mark).
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(f"{path}: the file is UTF-16 (byte-order mark); save it as UTF-8")
    try:
        # utf-8-sig: a byte-order mark would otherwise become part of the first word.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}: "
                              f"{e.reason}); save the file as UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataFormatError(f"{path}:{line}: the text holds NUL characters (UTF-16 without a byte-order "
                              "mark?); save the file as UTF-8")
    return path, text


def split_lines(text: str) -> list[str]:
    """Lines split on '\\n' only, a trailing '\\r' removed from each.

    Not `str.splitlines`: that also breaks at U+2028, U+0085, form feeds and
    other characters that real tweets carry inside a token.
    """
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def make_example(words, spans, image_id: str, example_id: str) -> Example:
    """Builds an Example from (start, end_inclusive, polarity) spans, validating them.

    Aspects are sorted by start, as the tag-based formats order them (§1.2).
    """
    aspects = []
    for start, end, polarity in sorted(spans, key=lambda s: (s[0], s[1])):
        if end < start:
            raise RecordError(f"empty aspect span [{start}, {end + 1})")
        if start < 0 or end >= len(words):
            raise RecordError(f"aspect span [{start}, {end + 1}) outside the sentence of {len(words)} words")
        if aspects and start <= aspects[-1].end:
            prev = aspects[-1]
            raise RecordError(f"aspect span [{start}, {end + 1}) overlaps [{prev.start}, {prev.end + 1})")
        aspects.append(Aspect(start, end, polarity))
    if not image_id:
        raise RecordError("empty image id")
    return Example(tuple(words), tuple(aspects), image_id, example_id)


def json_records(path: pathlib.Path, text: str):
    """Yields (line, record_index, object or RecordError) for a JSON array or JSON Lines file.

    A syntax error inside a JSON array cannot be resynchronised, so it always
    raises; in JSON Lines a bad line is one bad record.
    """
    stripped = text.lstrip()
    if not stripped.startswith("["):
        index = 0
        for line_no, line in enumerate(split_lines(text), 1):
            if not line.strip():
                continue
            try:
                yield line_no, index, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, index, RecordError(f"invalid JSON: {e.msg} (column {e.colno})")
            index += 1
        return
    decoder = json.JSONDecoder()
    pos = len(text) - len(stripped) + 1
    line, line_pos = 1 + text.count("\n", 0, pos), pos

    def line_at(p):
        nonlocal line, line_pos
        line += text.count("\n", line_pos, p)
        line_pos = p
        return line

    def syntax_error(p, msg):
        ln = text.count("\n", 0, p) + 1
        col = p - (text.rfind("\n", 0, p) + 1) + 1
        return DataFormatError(f"{path}:{ln}:{col}: invalid JSON: {msg}")

    ws = re.compile(r"\s*")
    pos = ws.match(text, pos).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        index = 0
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise syntax_error(e.pos, e.msg) from None
            yield line_at(pos), index, obj
            index += 1
            pos = ws.match(text, end).end()
            if text.startswith(",", pos):
                pos = ws.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise syntax_error(pos, "expected ',' or ']' after a record")
    if text[pos:].strip():
        raise syntax_error(ws.match(text, pos).end(), "extra data after the JSON array")


def read_json_file(path, on_error: str, make_example) -> ReadResult:
    """A JSON array (or JSON Lines) file, one example per record: ``make_example(record,
    example_id)`` raises RecordError for a bad record, reported with its line."""
    path, text = read_text(path)
    issues = ErrorPolicy(path, on_error)
    examples = []
    for line, index, record in json_records(path, text):
        try:
            if isinstance(record, RecordError):
                raise record
            examples.append(make_example(record, f"{path.stem}:{index}"))
        except RecordError as e:
            issues.report(issues.location(e.line or line, index), str(e))
    return issues.result(examples, "the file is empty" if not text.strip() else "an empty JSON array")


def sha256_file(path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
