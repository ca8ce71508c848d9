"""Readers for the JMASA annotation formats and the TRC relation set.

Every reader returns a `ReadResult`: the canonical examples in file order plus
the records it skipped. With `on_error='raise'` (the default) the first bad
record raises `DataFormatError` naming the file and line; with
`on_error='skip'` the bad record is left out, logged as a warning with its
file:line and listed in `ReadResult.skipped`, so nothing is lost silently.

Formats (`read_examples` picks one by name or file suffix):
  json      sentence-level JSON array (or JSON Lines) of
            {"words", "image_id", "aspects": [{"from", "to" (exclusive),
            "polarity": POS|NEU|NEG, "term"}]}
  original  the JML line format of §1.1-1.2:
            `raw####w1=TAG w2=TAG ...____name=[labels]____name=['image.jpg']`
  conll     CoNLL sentiment-BIO blocks: `IMGID:<id>` then `token<TAB>tag` lines
  tsv       per-aspect TSV (TomBERT release): one row per aspect,
            `index<TAB>label<TAB>image_id<TAB>sentence with $T$<TAB>aspect`
            (a first line without `$T$` is the header)
  trc       the TRC JSON {"words", "image_id", "ifpairs": [R, V]} (`read_trc`)
  trc_csv   the TRC CSV as released (`read_trc_csv`, data_pipeline/trc_readers.py)

Every text file is read as UTF-8 (a byte-order mark allowed; anything else is
refused naming the file) and split into lines at '\n' only. A file that gives
no example at all (empty, `[]`, a header alone, every record skipped) is
refused naming the file: it would otherwise train or score on nothing.
"""

from __future__ import annotations

import logging
import pathlib
import re

from data_pipeline.examples import Example
from data_pipeline.reader_common import (ON_ERROR_CHOICES, SHORT_POLARITY, DataFormatError, ErrorPolicy,
                                         ReadResult, RecordError, make_example, read_json_file, read_text,
                                         split_lines)
from data_pipeline.trc_readers import TRC_CSV_HEADER, read_trc, read_trc_csv, split_trc

__all__ = ["ON_ERROR_CHOICES", "DataFormatError", "ReadResult", "READERS", "SUFFIX_FORMATS", "read_examples",
           "detect_format", "read_json", "read_original", "read_conll", "read_tsv", "read_trc", "read_trc_csv",
           "split_trc"]

logger = logging.getLogger(__name__)

_TSV_LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
_ORIGINAL_TAGS = ("O", "T-POS", "T-NEG", "T-NEU", "T-POS-B", "T-NEG-B", "T-NEU-B")
_CONLL_TAGS = ("O", "B-POS", "I-POS", "B-NEU", "I-NEU", "B-NEG", "I-NEG")
# An IMGID that already names an image file keeps its suffix (no '1.jpg.jpg').
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def _empty_hint(text: str) -> str:
    return "the file is empty" if not text.strip() else ""


# ----------------------------------------------------------------------------- JSON
def _int_field(record, key, where=""):
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{where}{key!r} must be an integer, got {value!r}")
    return value


def _words_field(record):
    words = record.get("words")
    if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
        raise RecordError("'words' must be a list of non-empty strings")
    return words


def _image_field(record):
    image_id = record.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise RecordError(f"'image_id' must be a non-empty string, got {image_id!r}")
    return image_id


def _json_example(record, example_id: str) -> Example:
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    words = _words_field(record)
    image_id = _image_field(record)
    aspects = record.get("aspects")
    if not isinstance(aspects, list):
        raise RecordError("'aspects' must be a list")
    spans = []
    for k, aspect in enumerate(aspects):
        where = f"aspect {k}: "
        if not isinstance(aspect, dict):
            raise RecordError(f"{where}must be an object")
        start, stop = _int_field(aspect, "from", where), _int_field(aspect, "to", where)
        polarity = SHORT_POLARITY.get(aspect.get("polarity"))
        if polarity is None:
            raise RecordError(f"{where}polarity {aspect.get('polarity')!r} not in {sorted(SHORT_POLARITY)}")
        if "term" in aspect and 0 <= start < stop <= len(words) and aspect["term"] != words[start:stop]:
            raise RecordError(f"{where}term {aspect['term']!r} != words[{start}:{stop}] {words[start:stop]!r}")
        spans.append((start, stop - 1, polarity))  # 'to' is exclusive
    return make_example(words, spans, image_id, example_id)


def read_json(path, on_error: str = "raise") -> ReadResult:
    """Reads the sentence-level JSON format (array or JSON Lines) -> ReadResult of Examples."""
    return read_json_file(path, on_error, _json_example)


# ------------------------------------------------------------------ original lines
def _original_tag_spans(tags):
    """Tags of §1.1 -> (start, end, polarity) spans, as `ts2start_end` (§1.2).

    A span starts at every *-B tag and runs over the following tags of the same
    polarity without -B. A continuation tag (T-XXX) with no open span, or with
    another polarity than its span, is an error (the original asserts the
    latter and ignores the former).
    """
    spans, open_span = [], None
    for i, tag in enumerate(tags):
        if tag == "O":
            open_span = None
            continue
        polarity = SHORT_POLARITY[tag[2:5]]
        if tag.endswith("-B"):
            open_span = [i, i, polarity]
            spans.append(open_span)
        elif open_span is None:
            raise RecordError(f"tag {tag} on word {i} continues no aspect (no preceding {tag}-B)")
        elif open_span[2] != polarity:
            raise RecordError(f"tag {tag} on word {i} inside a {open_span[2]} aspect")
        else:
            open_span[1] = i
    return [tuple(s) for s in spans]


_IMAGE_IDS = re.compile(r"^[^=]*=\[(.*)\]$")


def _original_example(line: str, example_id: str) -> Example:
    parts = line.split("####")
    if len(parts) != 2:
        raise RecordError(f"expected exactly one '####' separator, found {len(parts) - 1}")
    fields = parts[1].split("____")
    if len(fields) != 3:
        raise RecordError(f"expected 3 '____'-separated fields after '####', found {len(fields)}")
    tag_field, label_field, image_field = fields
    words, tags = [], []
    for k, item in enumerate(tag_field.split(" ")):
        # Split on the LAST '=': deliberately fixes §10.13, where any word
        # containing '=' (other than pure '=' runs) was corrupted by the original.
        word, eq, tag = item.rpartition("=")
        if not eq or not word:
            raise RecordError(f"item {k} {item!r} is not 'word=TAG'")
        if tag not in _ORIGINAL_TAGS:
            raise RecordError(f"item {k} {item!r}: tag {tag!r} not in {_ORIGINAL_TAGS}")
        words.append(word)
        tags.append(tag)
    # Image labels are parsed and validated but not kept: the model never uses them (§10.14).
    labels = _IMAGE_IDS.match(label_field.strip())
    if labels is None or not all(re.fullmatch(r"\s*-?\d+\s*", x) for x in labels.group(1).split(",")):
        raise RecordError(f"image-label field {label_field!r} is not 'name=[int, ...]'")
    ids = _IMAGE_IDS.match(image_field.strip())
    if ids is None:
        raise RecordError(f"image-id field {image_field!r} is not \"name=['id']\"")
    image_ids = [x.strip().strip("'\"") for x in ids.group(1).split(",")]
    if len(image_ids) != 1 or not image_ids[0]:
        raise RecordError(f"expected exactly one image id, got {ids.group(1)!r}")  # §1.1
    return make_example(words, _original_tag_spans(tags), image_ids[0], example_id)


def read_original(path, on_error: str = "raise") -> ReadResult:
    """Reads the original JML line format (§1.1-1.2) -> ReadResult of Examples.

    Words keep their case (see examples.py); blank lines are ignored;
    example_id is '<stem>:<line number>'.
    """
    path, text = read_text(path)
    issues = ErrorPolicy(path, on_error)
    examples = []
    for line_no, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            examples.append(_original_example(line, f"{path.stem}:{line_no}"))
        except RecordError as e:
            issues.report(issues.location(line_no), str(e))
    return issues.result(examples, _empty_hint(text))


# ----------------------------------------------------------------------------- CoNLL
def _conll_example(block, image_suffix: str, example_id: str) -> Example:
    """block: list of (line_no, line); first line 'IMGID:<id>'."""
    first_no, first = block[0]
    if not first.startswith("IMGID:") or not first[len("IMGID:"):].strip():
        raise RecordError(f"a block must start with 'IMGID:<id>', got {first!r}", first_no)
    image_id = first[len("IMGID:"):].strip()
    if not image_id.lower().endswith((*_IMAGE_SUFFIXES, image_suffix.lower() or ".jpg")):
        image_id += image_suffix
    words, spans, open_span = [], [], None
    for line_no, line in block[1:]:
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0]:
            raise RecordError(f"expected 'token<TAB>tag', got {line!r}", line_no)
        token, tag = fields[0], fields[1].strip()
        if tag not in _CONLL_TAGS:
            raise RecordError(f"tag {tag!r} not in {_CONLL_TAGS}", line_no)
        i = len(words)
        words.append(token)
        if tag == "O":
            open_span = None
        elif tag.startswith("B-"):
            open_span = [i, i, SHORT_POLARITY[tag[2:]]]
            spans.append(open_span)
        elif open_span is None or open_span[2] != SHORT_POLARITY[tag[2:]]:
            raise RecordError(f"tag {tag} without a preceding B-/I- tag of the same polarity", line_no)
        else:
            open_span[1] = i
    if not words:
        raise RecordError("block has no token lines", first_no)
    return make_example(words, [tuple(s) for s in spans], image_id, example_id)


def read_conll(path, on_error: str = "raise", image_suffix: str = ".jpg") -> ReadResult:
    """Reads CoNLL sentiment-BIO blocks -> ReadResult of Examples.

    Blocks are separated by blank lines; image_id = the IMGID value +
    `image_suffix` (not added when the IMGID already ends in an image suffix
    such as '.jpg'); example_id is '<stem>:<line of the IMGID line>'.
    """
    path, text = read_text(path)
    issues = ErrorPolicy(path, on_error)
    blocks, block = [], []
    for line_no, line in enumerate(split_lines(text), 1):
        if line.strip():
            block.append((line_no, line))
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    examples = []
    for block in blocks:
        try:
            examples.append(_conll_example(block, image_suffix, f"{path.stem}:{block[0][0]}"))
        except RecordError as e:
            issues.report(issues.location(e.line or block[0][0]), str(e))
    return issues.result(examples, _empty_hint(text))


# ------------------------------------------------------------------------------ TSV
def _tsv_row(line: str):
    """-> (image_id, words, (start, end, polarity)) for one per-aspect row."""
    fields = line.split("\t")
    if len(fields) != 5:
        raise RecordError(f"expected 5 tab-separated fields, found {len(fields)}")
    _, label, image_id, sentence, aspect = fields
    polarity = _TSV_LABELS.get(label.strip())
    if polarity is None:
        raise RecordError(f"label {label!r} not in {sorted(_TSV_LABELS)} (0=NEG 1=NEU 2=POS)")
    image_id = image_id.strip()
    if not image_id:
        raise RecordError("empty image id")
    tokens = sentence.split(" ")
    if tokens.count("$T$") != 1:
        raise RecordError(f"the sentence must contain the aspect marker $T$ exactly once as a word, "
                   f"found {tokens.count('$T$')}: {sentence!r}")
    aspect_words = aspect.strip().split(" ")
    if not aspect.strip() or "" in aspect_words:
        raise RecordError(f"bad aspect text {aspect!r}")
    if "" in tokens:
        raise RecordError("empty word (double or edge space) in the sentence")
    at = tokens.index("$T$")
    words = tokens[:at] + aspect_words + tokens[at + 1:]
    return image_id, tuple(words), (at, at + len(aspect_words) - 1, polarity)


def read_tsv(path, on_error: str = "raise") -> ReadResult:
    """Reads the per-aspect TSV format -> ReadResult of Examples (one per sentence).

    Rows with the same image id and the same full sentence (the $T$ replaced by
    the row's aspect) are regrouped into one example, also when other rows come
    between them (logged with their lines). A row joins the latest such
    sentence that lacks its span; a row that repeats a span already there
    starts a new example: that is how a duplicated sentence shows up in this
    format. Examples come in the order of their first rows; example_id is
    '<stem>:<line of the first row>'. The first line is the header when it
    has no `$T$` (the TomBERT files have one); otherwise it is a row.
    """
    path, text = read_text(path)
    issues = ErrorPolicy(path, on_error)
    groups = []  # [first_line, key, spans, line of each span]
    latest = {}  # key -> indices into groups, oldest first
    lines = split_lines(text)
    first_row = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    header = first_row < len(lines) and "$T$" not in lines[first_row]
    regrouped = []
    for line_no, line in enumerate(lines[first_row + header:], first_row + header + 1):
        if not line.strip():
            continue
        try:
            image_id, words, span = _tsv_row(line)
        except RecordError as e:
            issues.report(issues.location(line_no), str(e))
            continue
        key = (image_id, words)
        target = next((g for g in reversed(latest.get(key, ())) if span[:2] not in [s[:2] for s in groups[g][2]]),
                      None)
        if target is None:
            latest.setdefault(key, []).append(len(groups))
            groups.append([line_no, key, [span], [line_no]])
            continue
        if target != len(groups) - 1:
            regrouped.append(f"{line_no}->{groups[target][0]}")
        groups[target][2].append(span)
        groups[target][3].append(line_no)
    if regrouped:
        logger.warning("%s: %d row(s) joined a sentence whose rows are not adjacent (line->first line: %s)",
                       path, len(regrouped), ", ".join(regrouped[:20]) + (" ..." if len(regrouped) > 20 else ""))
    examples = []
    for first, (image_id, words), spans, span_lines in groups:
        kept = []
        for span, line_no in sorted(zip(spans, span_lines)):
            try:  # validate span by span so 'skip' drops only the offending row
                make_example(words, kept + [span], image_id, "")
                kept.append(span)
            except RecordError as e:
                issues.report(issues.location(line_no), str(e))
        examples.append(make_example(words, kept, image_id, f"{path.stem}:{first}"))
    return issues.result(examples, _empty_hint(text) or ("only a header line" if header else ""))


# ------------------------------------------------------------------------- dispatch
READERS = {
    "json": read_json,
    "original": read_original,
    "conll": read_conll,
    "tsv": read_tsv,
    "trc": read_trc,
    "trc_csv": read_trc_csv,
}
SUFFIX_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".txt": "original or conll (by content)",
    ".conll": "conll",
    ".bio": "conll",
    ".tsv": "tsv",
    ".csv": "trc_csv (by its header)",
}


def _first_line(path: pathlib.Path) -> str:
    _, text = read_text(path)
    return next((line.strip() for line in split_lines(text) if line.strip()), "")


def detect_format(path) -> str:
    """The annotation format of `path` from its suffix, and for '.txt' and '.csv'
    from its content: a '.txt' holds the original lines (`...####...`) or
    CoNLL blocks (`IMGID:...`), a '.csv' the TRC release (its header).

    Raises:
      ValueError naming the file and the data.format values to choose from.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        first = _first_line(path)
        if first.startswith("IMGID:"):
            return "conll"
        if "####" in first:
            return "original"
        raise ValueError(f"{path}: a .txt file must hold the original JML lines ('words####word=TAG ...') or "
                         f"CoNLL blocks ('IMGID:<id>' then 'token<TAB>tag'), but its first line is {first[:80]!r}; "
                         "set data.format (format=) to 'original' or 'conll'")
    if suffix == ".csv":
        first = _first_line(path)
        if first.replace('"', "").split(",")[:len(TRC_CSV_HEADER)] == list(TRC_CSV_HEADER):
            return "trc_csv"
        raise ValueError(f"{path}: a .csv file must be the TRC release with the header "
                         f"{','.join(TRC_CSV_HEADER)},...; its first line is {first[:80]!r}; "
                         f"set data.format (format=) to one of {sorted(READERS)}")
    format = SUFFIX_FORMATS.get(suffix)
    if format is None:
        raise ValueError(f"{path}: cannot tell the format from suffix {path.suffix!r}; "
                         f"known suffixes {sorted(SUFFIX_FORMATS)}, or pass format= one of {sorted(READERS)}")
    return format


def read_examples(path, format: str = "auto", on_error: str = "raise", **kwargs) -> ReadResult:
    """Reads annotations in the named format, or detected with format='auto'
    (`detect_format`: by suffix, and by content for '.txt' and '.csv').

    kwargs go to the reader (e.g. image_suffix for 'conll', full_text for
    'trc_csv'). A TRC JSON file must be named explicitly (format='trc'): its
    suffix is '.json' too.
    """
    path = pathlib.Path(path)
    if format == "auto":
        format = detect_format(path)
    reader = READERS.get(format)
    if reader is None:
        raise ValueError(f"unknown annotation format {format!r}; valid: {sorted(READERS)} or 'auto'")
    return reader(path, on_error=on_error, **kwargs)
