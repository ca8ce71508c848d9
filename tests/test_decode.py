"""Hand-worked decoding and text-projection cases (§6, §7.2 of original-jml-code.md)."""

import numpy as np
import pytest

from jml_jax.decode import DecodeConfig, decode_spans, top_k_indexes
from jml_jax.text_projection import (
    basic_tokenize,
    get_final_text,
    project_span,
    wordpiece_text,
)

BASE = -100.0  # background logit: any pair with an unboosted side stays below 8.0


def make_sentence(word_pieces, length=32):
    """[CLS] + pieces + [SEP]; returns tokens, token_to_word [L], num_tokens, words."""
    tokens, t2w = ["[CLS]"], [-1]
    words = []
    for wi, (word, pieces) in enumerate(word_pieces):
        words.append(word)
        for p in pieces:
            tokens.append(p)
            t2w.append(wi)
    tokens.append("[SEP]")
    t2w.append(-1)
    t2w = np.array(t2w + [-1] * (length - len(t2w)))
    return tokens, t2w, len(tokens), words


def simple_sentence(words, length=32):
    return make_sentence([(w, [w]) for w in words], length)


def decode_one(sentence, boosts, config=DecodeConfig(), dtype=np.float64, length=32):
    """Decode one row whose logits are BASE except start[s] = a, end[e] = b for (s, a, e, b)."""
    tokens, t2w, n, words = sentence
    start = np.full((1, length), BASE, dtype)
    end = np.full((1, length), BASE, dtype)
    for s, a, e, b in boosts:
        start[0, s] = a
        end[0, e] = b
    r = decode_spans(start, end, [n], t2w[None], [tokens], [words], config)
    n_chosen = int(r.span_mask[0].sum())
    spans = list(zip(r.span_starts[0, :n_chosen].tolist(), r.span_ends[0, :n_chosen].tolist()))
    return spans, r.texts[0], r


WORDS = ["w%d" % i for i in range(20)]


def test_top_k_indexes_is_stable_descending():
    assert top_k_indexes(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 3).tolist() == [1, 2, 4]
    batch = np.array([[0.0, 0.0, 0.0], [0.0, -0.0, 1.0]])
    assert top_k_indexes(batch, 2).tolist() == [[0, 1], [2, 0]]
    assert top_k_indexes(np.zeros(5), 20).shape == (5,)  # at most L indexes


def test_top_k_rejects_nan_and_non_numeric():
    with pytest.raises(ValueError, match="NaN"):
        top_k_indexes(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="numeric"):
        top_k_indexes(np.array(["a", "b"]), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_is_inclusive(dtype):
    sent = simple_sentence(WORDS[:5])
    spans, texts, _ = decode_one(sent, [(2, 4.0, 2, 4.0)], dtype=dtype)
    assert spans == [(2, 2)] and texts == ["w1"]
    spans, texts, _ = decode_one(sent, [(2, 4.0, 2, 4.0 - 2.0**-10)], dtype=dtype)
    assert spans == [] and texts == []


def test_threshold_uses_float64_sums_of_float32_logits():
    # 5 + (3 - 2^-22): float32 addition rounds the sum up to 8.0, but the
    # exact sum (what the original gets adding Python floats) is below 8.
    a, b = np.float32(5.0), np.nextafter(np.float32(3.0), np.float32(0.0))
    assert np.float64(a) + np.float64(b) < 8.0 and a + b == np.float32(8.0)
    spans, _, _ = decode_one(simple_sentence(WORDS[:5]), [(2, a, 2, b)], dtype=np.float32)
    assert spans == []


def test_length_limit_12_kept_13_dropped():
    sent = simple_sentence(WORDS[:16])
    spans, texts, _ = decode_one(sent, [(1, 10.0, 12, 10.0)])
    assert spans == [(1, 12)] and texts == [" ".join(WORDS[:12])]
    spans, _, _ = decode_one(sent, [(1, 10.0, 13, 10.0)])
    assert spans == []
    spans, _, _ = decode_one(sent, [(1, 10.0, 13, 10.0)], config=DecodeConfig(max_answer_length=13))
    assert spans == [(1, 13)]


def test_end_before_start_dropped():
    spans, _, _ = decode_one(simple_sentence(WORDS[:6]), [(4, 10.0, 2, 10.0)])
    assert spans == []


def test_cls_sep_and_padding_never_boundaries():
    sent = simple_sentence(WORDS[:5])  # [CLS]=0, words 1..5, [SEP]=6, padding 7..
    boosts = [
        (0, 30.0, 0, 30.0),  # [CLS]
        (6, 30.0, 6, 30.0),  # [SEP]
        (8, 30.0, 9, 30.0),  # padding
        (2, 5.0, 3, 5.0),  # the only real span
    ]
    spans, texts, r = decode_one(sent, boosts)
    assert spans == [(2, 3)] and texts == ["w1 w2"]
    # The special positions are still in the top-k lists (ranked over all positions).
    assert r.top_start[0, :3].tolist() == [0, 6, 8]
    assert r.span_mask[0].tolist() == [1] + [0] * 19
    assert r.span_starts.shape == (1, 20)


def test_padding_with_a_word_index_is_still_excluded_by_num_tokens():
    tokens, t2w, n, words = simple_sentence(WORDS[:4])
    t2w = t2w.copy()
    t2w[n + 1] = 0  # a stale map entry past the real tokens must not matter
    spans, _, _ = decode_one((tokens, t2w, n, words), [(n + 1, 30.0, n + 1, 30.0)])
    assert spans == []


def test_ties_keep_start_major_candidate_order():
    sent = simple_sentence(WORDS[:10])
    # (1,8): 12 + 5 - 8 = 9 and (4,5): 5 + 6 - 2 = 9 tie. Start-major order
    # generates (1,8) first (start 1 ranks above start 4); end-major would put
    # (4,5) first (end 5 ranks above end 8).
    boosts = [(1, 12.0, 5, 6.0), (4, 5.0, 8, 5.0)]
    spans, _, _ = decode_one(sent, boosts, config=DecodeConfig(use_nms=False))
    assert spans == [(1, 5), (1, 8), (4, 5), (4, 8)]


def test_length_penalty_orders_candidates():
    sent = simple_sentence(WORDS[:10])
    boosts = [(2, 5.0, 2, 5.0), (3, 5.5, 7, 5.5)]
    # Scores with the penalty: (2,2) 10 - 1 = 9, (3,7) 11 - 5 = 6, (2,7) 10.5 - 6 = 4.5.
    spans, _, _ = decode_one(sent, boosts, config=DecodeConfig(use_nms=False))
    assert spans == [(2, 2), (3, 7), (2, 7)]
    # Without it: 11, 10.5, 10.
    spans, _, _ = decode_one(sent, boosts, config=DecodeConfig(use_nms=False, use_heuristics=False))
    assert spans == [(3, 7), (2, 7), (2, 2)]


def isolated_boosts(spans, bonuses):
    """Boosts for non-overlapping spans (in position order) so that each span
    scores 8 + bonus - length and no cross pair (s_k, e_l), k != l, survives:
    for l > k the sum is below 8, for l < k the end precedes the start."""
    return [(s, 4.0 + 10.0 * k + c, e, 4.0 - 10.0 * k) for k, ((s, e), c) in enumerate(zip(spans, bonuses))]


def test_exact_text_dedup():
    sent = simple_sentence(["apple", "and", "apple", "pie"])
    boosts = isolated_boosts([(1, 1), (3, 3)], [2.0, 1.0])
    spans, texts, _ = decode_one(sent, boosts, config=DecodeConfig(use_nms=False))
    assert spans == [(1, 1)] and texts == ["apple"]
    # With a cross span allowed, a longer text containing the word is not a duplicate.
    spans, texts, _ = decode_one(sent, [(1, 6.0, 1, 6.0), (3, 5.0, 3, 5.0)], config=DecodeConfig(use_nms=False))
    assert texts == ["apple", "apple and apple"]


def test_text_normalising_to_empty_neither_suppresses_nor_is_suppressed():
    sent = simple_sentence(["@", "apple", "@", "the"])
    boosts = isolated_boosts([(1, 1), (2, 2), (3, 3), (4, 4)], [4.0, 3.0, 2.0, 1.0])
    spans, texts, _ = decode_one(sent, boosts)
    # '@' is chosen and does not suppress 'apple'; the second '@' is removed
    # only by the exact-text check; 'the' normalises to '' and survives NMS.
    assert texts == ["@", "apple", "the"]
    assert spans == [(1, 1), (2, 2), (4, 4)]


def test_nms_is_textual_and_suppresses_the_same_word_elsewhere():
    sent = simple_sentence(["trump", "meets", "donald", "trump", "today"])
    boosts = [(1, 8.0, 1, 8.0), (3, 7.0, 4, 7.0), (5, 6.0, 5, 6.0)]
    spans, texts, _ = decode_one(sent, boosts)
    # 'donald trump' (positions 3-4) overlaps 'trump' (1) in no position, but
    # shares the normalised word 'trump', so it is deleted.
    assert texts == ["trump", "today"]
    spans_no_nms, texts_no_nms, _ = decode_one(sent, boosts, config=DecodeConfig(use_nms=False))
    assert "donald trump" in texts_no_nms


def test_ten_span_cap():
    sent = simple_sentence(WORDS[:14])
    boosts = [(p, 20.0 - p * 0.5, p, 20.0 - p * 0.5) for p in range(1, 15)]
    spans, texts, r = decode_one(sent, boosts)
    assert spans == [(p, p) for p in range(1, 11)]
    assert texts == WORDS[:10]
    assert r.span_mask[0].tolist() == [1] * 10 + [0] * 10
    spans, _, _ = decode_one(sent, boosts, config=DecodeConfig(max_spans=3))
    assert spans == [(1, 1), (2, 2), (3, 3)]


def test_subword_spans_give_substrings():
    sent = make_sentence([
        ("rt", ["rt"]),
        ("trump's", ["trump", "'", "s"]),
        ("findmybikeyyc", ["find", "##my", "##bi", "##key", "##y", "##c"]),
    ])
    # positions: 1 rt, 2 trump, 3 ', 4 s, 5 find, 6 ##my, 7 ##bi, 8 ##key, 9 ##y, 10 ##c
    spans, texts, _ = decode_one(sent, [(2, 9.0, 2, 9.0), (5, 8.0, 7, 8.0)])
    assert texts == ["trump", "findmybi"]
    spans, texts, _ = decode_one(sent, [(2, 9.0, 4, 9.0), (6, 8.0, 10, 8.0)])
    assert texts == ["trump's", "mybikeyyc"]


def test_empty_result():
    sent = simple_sentence(WORDS[:5])
    spans, texts, r = decode_one(sent, [])
    assert spans == [] and texts == []
    assert not r.span_mask.any() and not r.span_starts.any() and not r.span_ends.any()


def test_batch_rows_are_independent():
    a = simple_sentence(["apple", "pie"])
    b = simple_sentence(["great", "game", "tonight"])
    start = np.full((2, 32), BASE)
    end = np.full((2, 32), BASE)
    start[0, 1], end[0, 2] = 5.0, 5.0
    start[1, 3], end[1, 3] = 6.0, 6.0
    r = decode_spans(start, end, [a[2], b[2]], np.stack([a[1], b[1]]), [a[0], b[0]], [a[3], b[3]])
    assert r.texts == [["apple pie"], ["tonight"]]
    assert r.span_starts[:, 0].tolist() == [1, 3] and r.span_ends[:, 0].tolist() == [2, 3]


def test_bad_shapes_are_reported():
    tokens, t2w, n, words = simple_sentence(WORDS[:3])
    with pytest.raises(ValueError, match="same"):
        decode_spans(np.zeros((1, 32)), np.zeros((1, 31)), [n], t2w[None], [tokens], [words])
    with pytest.raises(ValueError, match="num_tokens"):
        decode_spans(np.zeros((1, 32)), np.zeros((1, 32)), [n + 1], t2w[None], [tokens], [words])
    with pytest.raises(ValueError, match="max_spans"):
        DecodeConfig(max_spans=21)


def test_basic_tokenize():
    assert basic_tokenize("Trump's #MAGA!") == ["trump", "'", "s", "#", "maga", "!"]
    assert basic_tokenize("Café\tNaïve") == ["cafe", "naive"]
    assert basic_tokenize("a^b$c") == ["a", "^", "b", "$", "c"]  # ASCII non-P* punctuation
    assert basic_tokenize("x\u00a0y\x00z\u200b") == ["x", "yz"]  # Zs -> space; NUL, Cf dropped
    assert basic_tokenize("北京") == ["北", "京"]
    assert basic_tokenize("«hi»") == ["«", "hi", "»"]
    assert basic_tokenize("ABC", do_lower_case=False) == ["ABC"]


def test_basic_tokenize_matches_transformers_on_nfc_text():
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    # transformers' copy adds an NFC step the original lacks; on NFC text both agree.
    ref = legacy.BasicTokenizer(do_lower_case=True)
    for text in ["RT @FindMyBikeYYC: Is this your frame?", "Café—crème « brûlée »", "emoji 😀 ok",
                 "tab\tnew\nline", "ＡＢＣ１２３", "don't stop-believing...", "北京大学 Ｑ", "\u0130stanbul"]:
        assert basic_tokenize(text) == ref.tokenize(text), text


def test_get_final_text():
    assert get_final_text("trump", "trump's") == "trump"
    assert get_final_text("cafe", "café") == "café"
    assert get_final_text("caf", "café au lait") == "caf"
    assert get_final_text("au lait", "café au lait") == "au lait"
    assert get_final_text("xyz", "abc") == "abc"  # not found -> orig
    assert get_final_text("", "abc") == "abc"
    # Upper case in orig is kept (do_lower_case tokenizes; the slice is of orig).
    assert get_final_text("new york", "New York") == "New York"
    # Space-free lengths differ (BasicTokenizer drops the NUL): orig comes back whole.
    assert get_final_text("ab", "a\x00b") == "a\x00b"
    # A match that starts on a space-separated boundary inside tok_text.
    assert get_final_text("s", "trump's") == "s"


def _squad_get_final_text(pred_text, orig_text):
    """SQuAD's get_final_text written out literally (index maps as dicts)."""

    def strip_spaces(text):
        ns_chars, ns_to_s = [], {}
        for i, c in enumerate(text):
            if c == " ":
                continue
            ns_to_s[len(ns_chars)] = i
            ns_chars.append(c)
        return "".join(ns_chars), ns_to_s

    tok_text = " ".join(basic_tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_map = strip_spaces(orig_text)
    tok_ns, tok_map = strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {v: k for k, v in tok_map.items()}
    if start not in tok_s_to_ns or tok_s_to_ns[start] not in orig_map:
        return orig_text
    if end not in tok_s_to_ns or tok_s_to_ns[end] not in orig_map:
        return orig_text
    return orig_text[orig_map[tok_s_to_ns[start]] : orig_map[tok_s_to_ns[end]] + 1]


def test_get_final_text_matches_literal_squad_version_on_random_text():
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ'#@.-é") + ["\u0301", "\x00", "\u00a0", "北"]
    for _ in range(3000):
        words = ["".join(rng.choice(alphabet, rng.integers(1, 6))) for _ in range(rng.integers(1, 4))]
        orig = " ".join(words)
        tok = " ".join(basic_tokenize(orig))
        if tok and rng.random() < 0.8:
            i, j = sorted(rng.integers(0, len(tok) + 1, 2))
            pred = tok[i:j]
        else:
            pred = "".join(rng.choice(alphabet, rng.integers(0, 3)))
        assert get_final_text(pred, orig) == _squad_get_final_text(pred, orig), (pred, orig)


def test_project_span():
    sent = make_sentence([("rt", ["rt"]), ("trump's", ["trump", "'", "s"]), ("café", ["cafe"])])
    tokens, t2w, n, words = sent
    assert project_span(tokens, t2w, words, 2, 2) == "trump"
    assert project_span(tokens, t2w, words, 3, 4) == "'s"
    assert project_span(tokens, t2w.tolist(), words, 1, 5) == "rt trump's café"
    assert project_span(tokens, t2w, words, 5, 5) == "café"
    assert wordpiece_text(["find", "##my", "bike", "##s"]) == "findmy bikes"
    with pytest.raises(ValueError, match="no word"):
        project_span(tokens, t2w, words, 0, 1)
    with pytest.raises(ValueError, match="outside"):
        project_span(tokens, t2w, words, 3, 2)
