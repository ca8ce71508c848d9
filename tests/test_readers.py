"""Readers: the four annotation formats agree, bad input is named or counted, real data counts."""

import collections
import json

import pytest

from conftest import REPO_ROOT
from data_pipeline.examples import Aspect, Example
from data_pipeline.readers import (DataFormatError, ReadResult, read_conll, read_examples, read_json,
                                   read_original, read_trc, read_tsv, split_trc)

FORMATS_DIR = REPO_ROOT / "tests" / "fixtures" / "formats"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def _content(examples):
    """Everything but example_id, which names the source line and so differs by format."""
    return [(ex.words, ex.aspects, ex.image_id) for ex in examples]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ equivalence
def test_all_four_formats_give_identical_examples():
    results = {suffix: read_examples(FORMATS_DIR / f"sample{suffix}")
               for suffix in (".json", ".txt", ".conll", ".tsv")}
    reference = _content(results[".json"])
    assert len(reference) == 5
    for suffix, result in results.items():
        assert isinstance(result, ReadResult) and result.num_skipped == 0
        assert _content(result) == reference, suffix
        assert len({ex.example_id for ex in result}) == 5
    by_image = {ex.image_id: ex for ex in results[".txt"]}
    # Adjacent aspects of the same polarity stay two aspects; non-ASCII kept as is.
    assert by_image["1002.jpg"].aspects == (Aspect(1, 1, "positive"), Aspect(2, 2, "positive"),
                                            Aspect(5, 5, "neutral"))
    assert by_image["1002.jpg"].aspects[1].text(by_image["1002.jpg"].words) == "beyoncé"
    # A multi-word aspect; words keep their case, Aspect.text lower-cases.
    marathon = by_image["1003.jpg"]
    assert marathon.aspects[0] == Aspect(0, 3, "negative")
    assert marathon.aspects[0].text(marathon.words) == "new york city marathon"
    assert by_image["1001.jpg"].words[-1] == "🔥"
    # Split on the LAST '=' (fixes §10.13): 'x=2=O' is the word 'x=2'.
    assert by_image["1004.jpg"].words[1] == "x=2"


def test_read_examples_dispatch_by_name_and_suffix(tmp_path):
    txt = _write(tmp_path, "lines.data", (FORMATS_DIR / "sample.txt").read_text(encoding="utf-8"))
    assert _content(read_examples(txt, format="original")) == _content(read_json(FORMATS_DIR / "sample.json"))
    with pytest.raises(ValueError, match=r"unknown annotation format 'xml'.*'conll'.*'json'.*'original'"):
        read_examples(txt, format="xml")
    with pytest.raises(ValueError, match=r"cannot tell the format from suffix '.data'"):
        read_examples(txt)
    with pytest.raises(ValueError, match="on_error must be one of"):
        read_examples(FORMATS_DIR / "sample.json", on_error="ignore")


def test_conll_image_suffix_is_configurable():
    result = read_conll(FORMATS_DIR / "sample.conll", image_suffix=".png")
    assert [ex.image_id for ex in result] == [f"100{i}.png" for i in range(1, 6)]


# -------------------------------------------------------------------------- JSON
def _record(words, aspects, image="9.jpg"):
    return {"words": words, "image_id": image,
            "aspects": [{"from": s, "to": t, "polarity": p} for s, t, p in aspects]}


def _json_array(tmp_path, records, name="data.json"):
    return _write(tmp_path, name, "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")


@pytest.mark.parametrize("aspects, reason", [
    ([(2, 5, "POS")], r"outside the sentence of 3 words"),
    ([(1, 1, "POS")], r"empty aspect span"),
    ([(0, 2, "POS"), (1, 3, "NEG")], r"overlaps"),
    ([(0, 1, "GOOD")], r"polarity 'GOOD' not in"),
])
def test_json_bad_record_names_file_and_line(tmp_path, aspects, reason):
    good = _record(["a", "b", "c"], [(0, 1, "POS")])
    path = _json_array(tmp_path, [good, _record(["a", "b", "c"], aspects), good])
    with pytest.raises(DataFormatError, match=rf"data.json:3 \(record 1\): .*{reason}"):
        read_json(path)
    result = read_json(path, on_error="skip")
    assert len(result) == 2 and result.num_skipped == 1
    assert result.skipped[0][0].endswith("data.json:3 (record 1)")
    assert [ex.example_id for ex in result] == ["data:0", "data:2"]


def test_json_term_must_match_the_span(tmp_path):
    record = _record(["Big", "Apple"], [(0, 2, "NEU")])
    record["aspects"][0]["term"] = ["Big"]
    with pytest.raises(DataFormatError, match=r"data.json:2 \(record 0\): aspect 0: term"):
        read_json(_json_array(tmp_path, [record]))


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = _write(tmp_path, "broken.json", '[\n{"words": ["a"], "image_id": "x.jpg", "aspects": []},\n{"words": [}\n]')
    with pytest.raises(DataFormatError, match=r"broken.json:3:\d+: invalid JSON"):
        read_json(path, on_error="skip")  # an array cannot be resynchronised


def test_json_lines_bad_line_is_skipped_and_counted(tmp_path, caplog):
    good = json.dumps(_record(["x", "y"], [(1, 2, "NEG")]))
    path = _write(tmp_path, "data.jsonl", f"{good}\n{{not json\n\n{good}\n")
    with pytest.raises(DataFormatError, match=r"data.jsonl:2 \(record 1\): invalid JSON"):
        read_examples(path)
    result = read_examples(path, on_error="skip")
    assert len(result) == 2 and result.num_skipped == 1
    assert "data.jsonl:2" in caplog.text


def test_json_keeps_aspect_free_sentences_and_sorts_aspects(tmp_path):
    path = _json_array(tmp_path, [_record(["a", "b", "c"], [(2, 3, "NEG"), (0, 1, "POS")]),
                                  _record(["d"], [])])
    result = read_json(path)
    assert result[0].aspects == (Aspect(0, 0, "positive"), Aspect(2, 2, "negative"))
    assert result[1] == Example(("d",), (), "9.jpg", "data:1")


# ---------------------------------------------------------------- original lines
_GOOD_LINE = "a b c####a=T-POS-B b=T-POS c=O____image_labels=[0]____image_ids=['7.jpg']"


@pytest.mark.parametrize("line, reason", [
    ("a b####a=O b=T-NEG____image_labels=[0]____image_ids=['7.jpg']", r"T-NEG on word 1 continues no aspect"),
    ("a b####a=T-POS-B b=T-NEG____image_labels=[0]____image_ids=['7.jpg']", r"inside a positive aspect"),
    ("a b####a=O b=B-POS____image_labels=[0]____image_ids=['7.jpg']", r"tag 'B-POS' not in"),
    ("a b####a=O b____image_labels=[0]____image_ids=['7.jpg']", r"is not 'word=TAG'"),
    ("a b a=O b=O____image_labels=[0]____image_ids=['7.jpg']", r"exactly one '####'"),
    ("a####a=O____image_labels=[0]", r"expected 3 '____'-separated fields"),
    ("a####a=O____image_labels=[0]____image_ids=['7.jpg','8.jpg']", r"exactly one image id"),
    ("a####a=O____image_labels=[x]____image_ids=['7.jpg']", r"image-label field"),
])
def test_original_bad_line_names_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path, "train.txt", f"{_GOOD_LINE}\n\n{line}\n{_GOOD_LINE}\n")
    with pytest.raises(DataFormatError, match=rf"train.txt:3: .*{reason}"):
        read_original(path)
    result = read_original(path, on_error="skip")
    assert [ex.example_id for ex in result] == ["train:1", "train:4"]
    assert result.num_skipped == 1 and result.skipped[0][0].endswith("train.txt:3")


def test_original_tags_to_spans():
    from data_pipeline.readers import _original_example
    line = ("x####w0=T-NEU-B w1=T-NEU w2=T-NEG-B w3=O w4=T-POS-B w5=T-POS-B w6=T-POS"
            "____image_labels=[1, 0]____image_ids=['5.jpg']")
    ex = _original_example(line, "t:1")
    assert ex.aspects == (Aspect(0, 1, "neutral"), Aspect(2, 2, "negative"), Aspect(4, 4, "positive"),
                          Aspect(5, 6, "positive"))
    assert ex.image_id == "5.jpg"
    # Pure '=' runs, handled by the original too, still parse.
    assert _original_example("x####===T-POS-B____l=[0]____i=['1.jpg']", "t:2").words == ("==",)


# ------------------------------------------------------------------------- CoNLL
@pytest.mark.parametrize("body, bad_line, reason", [
    ("IMGID:5\na\tO\nb\tI-POS\n", 3, r"I-POS without a preceding B-/I- tag of the same polarity"),
    ("IMGID:5\na\tB-NEG\nb\tI-POS\n", 3, r"I-POS without a preceding"),
    ("IMGID:5\na\tO\nb\tT-POS\n", 3, r"tag 'T-POS' not in"),
    ("IMGID:5\na O\n", 2, r"expected 'token<TAB>tag'"),
    ("a\tO\nb\tO\n", 1, r"must start with 'IMGID:<id>'"),
])
def test_conll_bad_block_names_file_and_line(tmp_path, body, bad_line, reason):
    good = "IMGID:4\nx\tB-POS\ny\tI-POS\n"
    path = _write(tmp_path, "dev.conll", f"{good}\n{body}\n{good}")
    with pytest.raises(DataFormatError, match=rf"dev.conll:{bad_line + 4}: .*{reason}"):
        read_conll(path)
    result = read_conll(path, on_error="skip")
    assert result.num_skipped == 1 and len(result) == 2
    assert result[0].aspects == (Aspect(0, 1, "positive"),) and result[0].image_id == "4.jpg"


# --------------------------------------------------------------------------- TSV
_HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n"


def test_tsv_row_without_marker_names_file_and_line(tmp_path):
    path = _write(tmp_path, "test.tsv", _HEADER + "0\t2\t1.jpg\t$T$ wins\tAcme\n"
                  "1\t0\t2.jpg\tno marker here\tAcme\n2\t1\t3.jpg\tgo $T$\tBig Co\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:3: .*aspect marker \$T\$ exactly once"):
        read_tsv(path)
    result = read_tsv(path, on_error="skip")
    assert result.num_skipped == 1
    assert _content(result) == [(("Acme", "wins"), (Aspect(0, 0, "positive"),), "1.jpg"),
                                (("go", "Big", "Co"), (Aspect(1, 2, "neutral"),), "3.jpg")]


@pytest.mark.parametrize("row, reason", [
    ("0\t3\t1.jpg\t$T$ x\tA", r"label '3' not in"),
    ("0\t1\t1.jpg\t$T$ x", r"expected 5 tab-separated fields"),
    ("0\t1\t1.jpg\t$T$ x $T$\tA", r"exactly once"),
])
def test_tsv_bad_rows(tmp_path, row, reason):
    with pytest.raises(DataFormatError, match=rf"t.tsv:2: .*{reason}"):
        read_tsv(_write(tmp_path, "t.tsv", _HEADER + row + "\n"))


def test_tsv_regroups_rows_and_splits_duplicated_sentences(tmp_path):
    rows = ["0\t2\t1.jpg\t$T$ met Bo\tAl", "1\t0\t1.jpg\tAl met $T$\tBo",
            # the same sentence again (a duplicated sentence of the data set)
            "2\t2\t1.jpg\t$T$ met Bo\tAl", "3\t0\t1.jpg\tAl met $T$\tBo",
            "4\t1\t2.jpg\t$T$ met Bo\tAl"]
    result = read_tsv(_write(tmp_path, "t.tsv", _HEADER + "\n".join(rows) + "\n"))
    two = (Aspect(0, 0, "positive"), Aspect(2, 2, "negative"))
    assert _content(result) == [(("Al", "met", "Bo"), two, "1.jpg"), (("Al", "met", "Bo"), two, "1.jpg"),
                                (("Al", "met", "Bo"), (Aspect(0, 0, "neutral"),), "2.jpg")]
    assert [ex.example_id for ex in result] == ["t:2", "t:4", "t:6"]


def test_tsv_overlapping_rows_are_named(tmp_path):
    rows = ["0\t2\t1.jpg\t$T$ met Bo\tAl", "1\t0\t1.jpg\t$T$ Bo\tAl met"]
    with pytest.raises(DataFormatError, match=r"t.tsv:3: .*overlaps"):
        read_tsv(_write(tmp_path, "t.tsv", _HEADER + "\n".join(rows) + "\n"))


# --------------------------------------------------------------------------- TRC
def test_trc_reader_and_bad_pairs(tmp_path):
    rows = [{"words": ["hi", "there"], "image_id": "T1.jpg", "ifpairs": [1, 0]},
            {"words": [], "image_id": "T2.jpg", "ifpairs": [0, 2]},
            {"words": [], "image_id": "T3.jpg", "ifpairs": [0, 1]}]
    path = _json_array(tmp_path, rows, "trc.json")
    with pytest.raises(DataFormatError, match=r"trc.json:3 \(record 1\): 'ifpairs'"):
        read_trc(path)
    result = read_examples(path, format="trc", on_error="skip")
    assert result.num_skipped == 1
    assert [(ex.words, ex.image_id, ex.text_represented, ex.image_adds) for ex in result] == [
        (("hi", "there"), "T1.jpg", 1, 0), ((), "T3.jpg", 0, 1)]


def test_split_trc_is_deterministic_disjoint_and_covering():
    items = list(range(101))
    train, test = split_trc(items)
    assert len(test) == 21 and len(train) == 80  # ceil(0.2 * 101) as sklearn's ShuffleSplit
    assert sorted(train + test) == items and not set(train) & set(test)
    assert split_trc(items) == (train, test)
    # sklearn 1.9.1: train_test_split(range(20), test_size=0.2, random_state=1234)
    assert split_trc(range(20)) == ([14, 5, 4, 0, 8, 18, 17, 11, 10, 9, 7, 1, 19, 12, 6, 15], [3, 13, 2, 16])
    assert split_trc(items, seed=1) != (train, test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_trc(items, test_fraction=1.0)


# --------------------------------------------------------------------- real data
REAL_TABLE = {  # /work/shared/data/README.md: sentences, aspects, (POS, NEU, NEG)
    "twitter2015/train.json": (2101, 3179, (928, 1883, 368)),
    "twitter2015/dev.json": (727, 1122, (303, 670, 149)),
    "twitter2015/test.json": (674, 1037, (317, 607, 113)),
    "twitter2017/train.json": (1746, 3562, (1508, 1638, 416)),
    "twitter2017/dev.json": (577, 1176, (515, 517, 144)),
}


@pytest.mark.parametrize("name", sorted(REAL_TABLE))
def test_real_split_counts_match_the_paper(real_data_dir, name):
    result = read_examples(real_data_dir / name)
    sentences, aspects, (pos, neu, neg) = REAL_TABLE[name]
    polarities = collections.Counter(a.polarity for ex in result for a in ex.aspects)
    assert (len(result), sum(len(ex.aspects) for ex in result)) == (sentences, aspects)
    assert (polarities["positive"], polarities["neutral"], polarities["negative"]) == (pos, neu, neg)
    assert result.num_skipped == 0 and all(ex.aspects for ex in result)


def test_real_trc_counts_and_split(real_data_dir):
    result = read_trc(real_data_dir / "trc" / "trc.json")
    assert len(result) == 4471
    pairs = collections.Counter((ex.text_represented, ex.image_adds) for ex in result)
    assert pairs == {(0, 0): 1513, (0, 1): 1147, (1, 0): 981, (1, 1): 830}
    train, test = split_trc(result)
    assert (len(train), len(test)) == (3576, 895)
    ids = lambda xs: [ex.example_id for ex in xs]  # noqa: E731
    assert sorted(ids(train) + ids(test)) == sorted(ids(result)) and not set(ids(train)) & set(ids(test))
    assert ids(split_trc(result)[1]) == ids(test)


# ------------------------------------------------------------------- sample data
def test_bundled_sample_data_reads_cleanly():
    splits = {name: read_examples(SAMPLE_DIR / f"{name}.json") for name in ("train", "dev", "test")}
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [60, 20, 20]
    every = [ex for result in splits.values() for ex in result]
    assert all(1 <= len(ex.aspects) <= 3 for ex in every)
    assert {a.polarity for ex in every for a in ex.aspects} == {"positive", "neutral", "negative"}
    assert any(a.end > a.start for ex in every for a in ex.aspects)
    assert any(b.start == a.end + 1 for ex in every for a, b in zip(ex.aspects, ex.aspects[1:]))
    assert any(not w.isascii() for ex in every for w in ex.words)
    trc = read_trc(SAMPLE_DIR / "trc.json")
    assert len(trc) == 40 and {(ex.text_represented, ex.image_adds) for ex in trc} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    images = {p.name for p in (SAMPLE_DIR / "images").iterdir()}
    assert {ex.image_id for ex in every} | {ex.image_id for ex in trc} <= images
