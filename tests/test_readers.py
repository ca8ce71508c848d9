"""Readers: the four annotation formats agree, bad input is named or counted, real data counts."""

import collections
import json

import pytest

from conftest import REPO_ROOT
from data_pipeline.examples import Aspect, Example
from data_pipeline.readers import (DataFormatError, ReadResult, detect_format, read_conll, read_examples,
                                   read_json, read_original, read_trc, read_trc_csv, read_tsv, split_trc)

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


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, text, fmt, why", [
    ("empty.json", "", "auto", "the file is empty"),
    ("blank.json", "  \n\n", "auto", "the file is empty"),
    ("empty_list.json", "[]\n", "auto", "an empty JSON array"),
    ("empty.jsonl", "", "auto", "the file is empty"),
    ("empty.txt", "\n", "original", "the file is empty"),
    ("empty.conll", "", "auto", "the file is empty"),
    ("header.tsv", "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n", "auto", "only a header line"),
    ("trc.json", "[]", "trc", "an empty JSON array"),
    ("header.csv", '"tweet_id","user_id","tweet","text_is_represented","image_adds"\n', "auto",
     "only a header line"),
])
def test_a_file_without_examples_is_refused_naming_it(tmp_path, name, text, fmt, why):
    path = _write(tmp_path, name, text)
    with pytest.raises(DataFormatError, match=rf"{name}: no examples \({why}\)"):
        read_examples(path, format=fmt)


def test_a_file_whose_records_are_all_skipped_is_refused(tmp_path):
    path = _write(tmp_path, "bad.tsv", _HEADER + "0\t7\t1.jpg\t$T$ x\tA\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv: no examples \(all 1 records were malformed"):
        read_tsv(path, on_error="skip")


def test_tsv_without_header_keeps_its_first_row(tmp_path):
    rows = (FORMATS_DIR / "sample.tsv").read_text(encoding="utf-8").split("\n", 1)[1]
    with_header = read_tsv(FORMATS_DIR / "sample.tsv")
    without = read_tsv(_write(tmp_path, "noheader.tsv", rows))
    assert _content(without) == _content(with_header) == _content(read_json(FORMATS_DIR / "sample.json"))
    assert without[0].example_id == "noheader:1"
    # A malformed first row is an error, not a header that silently vanishes.
    with pytest.raises(DataFormatError, match=r"bad.tsv:1: .*label '9'"):
        read_tsv(_write(tmp_path, "bad.tsv", "0\t9\t1.jpg\t$T$ x\tA\n" + rows))


def test_tsv_rows_of_one_sentence_that_are_not_adjacent_are_regrouped(tmp_path, caplog):
    header, *rows = [r for r in (FORMATS_DIR / "sample.tsv").read_text(encoding="utf-8").split("\n") if r]
    shuffled = [rows[i] for i in (0, 2, 5, 1, 3, 7, 6, 4, 8)]  # every sentence's rows torn apart
    result = read_tsv(_write(tmp_path, "torn.tsv", "\n".join([header, *shuffled]) + "\n"))
    reference = _content(read_json(FORMATS_DIR / "sample.json"))
    order = ["1001.jpg", "1002.jpg", "1003.jpg", "1004.jpg", "1005.jpg"]
    assert [c[2] for c in _content(result)] == order  # in the order of each sentence's first row
    assert _content(result) == reference
    assert "torn.tsv: 4 row(s) joined a sentence whose rows are not adjacent" in caplog.text
    assert "5->2" in caplog.text  # line 5 (Riverside's 2nd aspect) joined the sentence of line 2


def test_tsv_duplicated_sentence_stays_two_examples_when_torn_apart(tmp_path):
    rows = ["0\t2\t1.jpg\t$T$ met Bo\tAl", "1\t1\t2.jpg\t$T$ ran\tCy", "2\t2\t1.jpg\t$T$ met Bo\tAl",
            "3\t0\t1.jpg\tAl met $T$\tBo", "4\t0\t1.jpg\tAl met $T$\tBo"]
    result = read_tsv(_write(tmp_path, "t.tsv", _HEADER + "\n".join(rows) + "\n"))
    two = (Aspect(0, 0, "positive"), Aspect(2, 2, "negative"))
    assert [(ex.image_id, ex.aspects) for ex in result] == [
        ("1.jpg", two), ("2.jpg", (Aspect(0, 0, "neutral"),)), ("1.jpg", two)]


@pytest.mark.parametrize("imgid, suffix, image_id", [
    ("1", ".jpg", "1.jpg"), ("1.jpg", ".jpg", "1.jpg"), ("1.JPG", ".jpg", "1.JPG"), ("1.png", ".jpg", "1.png"),
    ("17_06_4705", ".jpg", "17_06_4705.jpg"), ("1.png", ".png", "1.png"), ("1", ".png", "1.png"),
])
def test_conll_image_suffix_is_never_doubled(tmp_path, imgid, suffix, image_id):
    path = _write(tmp_path, "s.conll", f"IMGID:{imgid}\nAl\tB-POS\nruns\tO\n")
    assert read_conll(path, image_suffix=suffix)[0].image_id == image_id


_NOT_UTF8 = {
    "utf-16": lambda text: text.encode("utf-16"),  # with its byte-order mark
    "utf-16-le": lambda text: text.encode("utf-16-le"),  # without one
    "latin-1": lambda text: text.encode("latin-1"),
}


@pytest.mark.parametrize("encoding", sorted(_NOT_UTF8))
@pytest.mark.parametrize("name, fmt", [("d.json", "auto"), ("d.tsv", "auto"), ("d.txt", "original"),
                                       ("d.conll", "auto"), ("d.csv", "trc_csv")])
def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path, encoding, name, fmt):
    source = {"d.json": "sample.json", "d.tsv": "sample.tsv", "d.txt": "sample.txt", "d.conll": "sample.conll"}
    if name == "d.csv":
        text = '"tweet_id","user_id","tweet","text_is_represented","image_adds"\n"1","2","Café https:x","0","1"\n'
    else:
        text = (FORMATS_DIR / source[name]).read_text(encoding="utf-8")
        text = text.replace("Beyoncé", "Beyonce").replace("🔥", "!")  # encodable in Latin-1 ...
    text = text.replace("Rovers", "Rovérs")  # ... with one non-ASCII letter left in
    path = tmp_path / name
    path.write_bytes(_NOT_UTF8[encoding](text))
    with pytest.raises(DataFormatError, match=rf"{name}(:\d+)?: .*(UTF-16|not UTF-8|NUL).*save the file as UTF-8|"
                                              rf"{name}: the file is UTF-16"):
        read_examples(path, format=fmt)


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.tsv"
    path.write_bytes((FORMATS_DIR / "sample.tsv").read_text(encoding="utf-8").encode("utf-8-sig"))
    assert _content(read_tsv(path)) == _content(read_json(FORMATS_DIR / "sample.json"))


@pytest.mark.parametrize("separator", ["\u2028", "\u0085", "\x0c", "\u2029", "\x1e"])
def test_line_separators_inside_tokens_do_not_break_lines(tmp_path, separator):
    word = f"Al{separator}Bo"
    files = {
        "s.txt": f"x####{word}=T-POS-B runs=O____image_labels=[0]____image_ids=['1.jpg']\r\n",
        "s.conll": f"IMGID:1\r\n{word}\tB-POS\r\nruns\tO\r\n",
        "s.tsv": _HEADER + f"0\t2\t1.jpg\t$T$ runs\t{word}\r\n",
        "s.jsonl": json.dumps(_record([word, "runs"], [(0, 1, "POS")], "1.jpg"), ensure_ascii=False) + "\n",
    }
    for name, text in files.items():
        result = read_examples(_write(tmp_path, name, text))
        assert _content(result) == [((word, "runs"), (Aspect(0, 0, "positive"),), "1.jpg")], name


def test_conll_content_in_a_txt_file_is_detected(tmp_path):
    conll = _write(tmp_path, "train.txt", (FORMATS_DIR / "sample.conll").read_text(encoding="utf-8"))
    assert detect_format(conll) == "conll"
    assert _content(read_examples(conll)) == _content(read_json(FORMATS_DIR / "sample.json"))
    assert detect_format(FORMATS_DIR / "sample.txt") == "original"
    other = _write(tmp_path, "notes.txt", "some words\n")
    with pytest.raises(ValueError, match=r"notes.txt: .*set data.format \(format=\) to 'original' or 'conll'"):
        read_examples(other)


# ------------------------------------------------------------------- TRC CSV
_TRC_CSV_HEADER = ('"tweet_id","user_id","tweet","text_is_represented","image_adds","image_adds_text_repr",'
                   '"image_adds_text_notrepr","image_notadds_text_repr","image_notadds_text_notrepr"')
_TRC_CSV_ROWS = [
    '"698197155698184192","540310244","happy birthday ily @victoriaIeigh https://t.co/K86xqfc3g3","0","0","0","0","0","1"',
    '"745103435532427264","1","RT @eRewardsUS: Happy Flag Day! https://t.co/a https://t.co/b","1","1","1","0","0","0"',
    '"689161440901607424","2","This is my \\"I am done\\" face https://t.co/SzK","1","0","0","0","1","0"',
    '"7","3","#veganprobs http://t.co/8BpxwgQB5J","0","1","0","1","0","0"',
]


def _trc_csv(tmp_path, rows=_TRC_CSV_ROWS, name="textimage-data.csv"):
    return _write(tmp_path, name, "\n".join([_TRC_CSV_HEADER, *rows]) + "\n")


def test_trc_csv_reader_cuts_links_like_the_original(tmp_path):
    result = read_trc_csv(_trc_csv(tmp_path))
    assert [(ex.words, ex.image_id, ex.text_represented, ex.image_adds) for ex in result] == [
        (("happy", "birthday", "ily", "@victoriaIeigh"), "T698197155698184192.jpg", 0, 0),
        (("RT", "@eRewardsUS:", "Happy", "Flag", "Day!", "https://t.co/a"), "T745103435532427264.jpg", 1, 1),
        (("This", "is", "my", '\\"I', "am", 'done\\"', "face"), "T689161440901607424.jpg", 1, 0),
        # no 'https:': the original's rfind gives -1 and drops the last character (§10.13)
        (("#veganprobs", "http://t.co/8BpxwgQB5"), "T7.jpg", 0, 1),
    ]
    assert [ex.example_id for ex in result] == [f"textimage-data:{i}" for i in range(4)]
    full = read_trc_csv(_trc_csv(tmp_path), full_text=True)
    assert full[0].words[-1] == "https://t.co/K86xqfc3g3" and full[3].words[-1] == "http://t.co/8BpxwgQB5J"
    # read_examples finds the format by the header, and passes full_text on.
    assert list(read_examples(_trc_csv(tmp_path))) == list(result)
    assert list(read_examples(_trc_csv(tmp_path), full_text=True)) == list(full)


@pytest.mark.parametrize("row, reason", [
    ('"1","2","x","2","0","0","0","0","1"', r"text_is_represented/image_adds must be 0 or 1, got '2'/'0'"),
    ('"1x","2","x","0","0","0","0","0","1"', r"tweet_id '1x' is not a number"),
    ('"1","2","a","b","0","0","0","0","0","1"', r"expected 9 fields"),
    ('1,2,x,0,0,0,0,0,1', r"a row must start and end with a quote"),
])
def test_trc_csv_bad_rows_are_named(tmp_path, row, reason):
    path = _trc_csv(tmp_path, [_TRC_CSV_ROWS[0], row])
    with pytest.raises(DataFormatError, match=rf"textimage-data.csv:3: {reason}"):
        read_trc_csv(path)
    assert read_trc_csv(path, on_error="skip").num_skipped == 1


def test_trc_csv_needs_its_header(tmp_path):
    path = _write(tmp_path, "t.csv", "\n".join(_TRC_CSV_ROWS) + "\n")
    with pytest.raises(DataFormatError, match=r"t.csv:1: the header must start with \"tweet_id\""):
        read_trc_csv(path)
    with pytest.raises(ValueError, match=r"t.csv: a .csv file must be the TRC release"):
        read_examples(path)


# --------------------------------------------------------------------- real data
REAL_TABLE = {  # the paper's Table 2: sentences, aspects, (POS, NEU, NEG)
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


def test_real_trc_csv_reads_like_the_trc_json(real_data_dir):
    """The released CSV gives the canonical TRC JSON, except 32 tweets whose
    quotes (written \\") the JSON's source copy carried differently."""
    csv_path = real_data_dir / "trc" / "textimage-data.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} is not there (python -m data_pipeline.download writes it)")
    from_csv = read_examples(csv_path)
    from_json = read_trc(real_data_dir / "trc" / "trc.json")
    assert len(from_csv) == len(from_json) == 4471
    key = lambda ex: (ex.image_id, ex.text_represented, ex.image_adds)  # noqa: E731
    assert [key(ex) for ex in from_csv] == [key(ex) for ex in from_json]
    differ = [a for a, b in zip(from_csv, from_json) if a.words != b.words]
    assert len(differ) == 32 and all(any('\\"' in w for w in ex.words) for ex in differ)
