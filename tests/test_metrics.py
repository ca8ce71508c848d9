"""Metric definitions on hand-worked cases (docs/metrics.md)."""

import numpy as np
import pytest

from jml_jax.metrics import (
    POLARITY_NAMES,
    evaluate_predictions,
    exact_match,
    joint_counts_original,
    joint_counts_position,
    masc_gold_span_metrics,
    masc_metrics_from_labels,
    masc_on_extracted,
    mate_counts_position,
    mate_counts_string,
    normalize_answer,
    original_joint_metric,
    precision_recall_f1,
    token_f1,
    word_spans_from_token_spans,
)


def test_normalize_answer():
    assert normalize_answer("#Trump") == "trump"
    assert normalize_answer("The  Apple!") == "apple"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("@") == ""
    assert normalize_answer("the") == ""
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("trump's") == "trumps"
    assert exact_match("#trump", "trump") and exact_match("the apple", "apple")
    assert not exact_match("trump", "trump's")


def test_token_f1():
    assert token_f1("new york city", "new york") == pytest.approx(0.8)
    assert token_f1("@", "@") == 0.0  # nothing left after normalising
    assert token_f1("apple", "pear") == 0.0


def test_polarity_names():
    assert POLARITY_NAMES == ("other", "neutral", "positive", "negative")


def test_original_counts_duplicate_gold_texts():
    # Two gold aspects with the same text: one prediction gives at most one hit,
    # and both count as relevant.
    assert joint_counts_original(["apple"], ["positive"], ["apple", "apple"], ["positive", "positive"]) == (1, 1, 2)
    # No one-to-one assignment: the metric credits each prediction on its own.
    assert joint_counts_original(["apple", "#apple"], [2, 2], ["apple"], ["positive"]) == (2, 2, 1)
    # Polarity must agree; text matches anywhere in the sentence.
    assert joint_counts_original(["the apple"], ["negative"], ["apple"], ["positive"]) == (0, 1, 1)


def test_original_metric_empty_predictions():
    m = original_joint_metric([[], []], [[], []], [["apple"], ["pie"]], [["positive"], ["neutral"]])
    assert m == {"common": 0, "retrieved": 0, "relevant": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_original_metric_totals():
    m = original_joint_metric(
        [["apple", "pie"], ["trump"]],
        [["positive", "neutral"], ["negative"]],
        [["apple"], ["#trump", "obama"]],
        [["positive"], ["negative", "neutral"]],
    )
    assert (m["common"], m["retrieved"], m["relevant"]) == (2, 3, 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_bad_polarity_is_reported():
    with pytest.raises(ValueError, match="unknown polarity"):
        joint_counts_original(["a"], ["pos"], ["a"], ["positive"])
    with pytest.raises(ValueError, match="sentence 1"):
        original_joint_metric([[], ["a"]], [[], [7]], [[], ["a"]], [[], ["positive"]])


def test_precision_recall_f1_edge_cases():
    assert precision_recall_f1(0, 0, 0) == {"p": 0.0, "r": 0.0, "f1": 0.0}
    assert precision_recall_f1(1, 2, 4) == pytest.approx({"p": 0.5, "r": 0.25, "f1": 1 / 3})


def test_position_level_counts_are_one_to_one_sets():
    gold = [(0, 1, "positive"), (4, 4, "negative")]
    pred = [(0, 1, 2), (0, 1, "positive"), (4, 4, "neutral"), (6, 6, "neutral")]
    assert joint_counts_position(pred, gold) == (1, 3, 2)  # the repeated triple counts once
    assert mate_counts_position([(0, 1), (4, 4), (5, 5)], [(0, 1), (4, 4)]) == (2, 3, 2)


def test_mate_string_level_counts():
    assert mate_counts_string(["#apple", "pie", "@"], ["apple", "apple", "tart"]) == (1, 3, 3)


def test_word_spans_from_token_spans_cover_words():
    # [CLS] trump ' s speech [SEP]; word 0 = trump's (3 pieces), word 1 = speech
    t2w = np.array([[-1, 0, 0, 0, 1, -1, -1]])
    spans = word_spans_from_token_spans([[1, 2, 0]], [[1, 4, 0]], [[1, 1, 0]], t2w)
    assert spans == [[(0, 0), (0, 1)]]
    with pytest.raises(ValueError, match="does not map"):
        word_spans_from_token_spans([[0]], [[1]], [[1]], t2w)


def test_masc_hand_worked():
    m = masc_metrics_from_labels([2, 2, 3, 1, 0], [2, 3, 3, 1, 2])
    # neutral: tp 1, 1 predicted, 1 gold -> 1; positive: tp 1, 2 pred, 2 gold -> 0.5;
    # negative: tp 1, 1 pred, 2 gold -> 2/3. 'other' is wrong and no class's positive.
    assert m["acc"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["n"] == 5
    assert masc_metrics_from_labels([], []) == {"acc": 0.0, "macro_f1": 0.0, "n": 0}


def test_masc_gold_span_metrics_uses_the_mask():
    pred = np.array([[2, 3, 0, 0], [1, 1, 3, 2]])
    gold = np.array([[2, 2, 0, 0], [1, 3, 3, 0]])
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    m = masc_gold_span_metrics(pred, gold, mask)
    # pairs (2,2) (3,2) (1,1) (1,3) (3,3): acc 3/5;
    # neutral: tp1 p2 g1 -> 2/3; positive: tp1 p1 g2 -> 2/3; negative: tp1 p2 g2 -> 1/2.
    assert m["acc"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert m["n"] == 5


def test_masc_on_extracted_takes_first_prediction_per_span():
    pred = [(0, 0, "positive"), (0, 0, "negative"), (3, 4, "neutral"), (6, 6, "negative")]
    gold = [(0, 0, "positive"), (3, 3, "neutral"), (6, 6, "positive")]
    assert masc_on_extracted(pred, gold) == ([2, 3], [2, 2])


def _crafted():
    """Two sentences where position- and string-level metrics differ.

    Sentence 0: words  trump's speech about apple and apple pie
                gold   (0,0) trump's positive, (3,3) apple negative
                preds  'trump' (sub-word of word 0) positive -> position hit, string miss;
                       'apple' at word 5 negative -> string hit, position miss.
    Sentence 1: words  the obama show
                gold   (1,2) obama show neutral
                preds  'the obama show' (0..2) neutral -> string hit ('the' dropped), position miss;
                       nothing else.
    """
    words = [["trump's", "speech", "about", "apple", "and", "apple", "pie"], ["the", "obama", "show"]]
    # Feature positions: s0: [CLS] trump ' s speech about apple and apple pie [SEP]
    t2w = np.full((2, 12), -1)
    t2w[0, 1:10] = [0, 0, 0, 1, 2, 3, 4, 5, 6]
    t2w[1, 1:4] = [0, 1, 2]
    span_starts = np.array([[1, 8, 0], [1, 0, 0]])
    span_ends = np.array([[1, 8, 0], [3, 0, 0]])
    span_mask = np.array([[1, 1, 0], [1, 0, 0]])
    texts = [["trump", "apple"], ["the obama show"]]
    polarity = np.array([[2, 3, 0], [1, 0, 0]])
    gold = [[(0, 0, "positive"), (3, 3, "negative")], [(1, 2, "neutral")]]
    return span_starts, span_ends, span_mask, texts, polarity, t2w, gold, words


def test_evaluate_predictions_position_vs_string():
    out = evaluate_predictions(*_crafted())
    # String level (original): 'apple' hits gold 'apple' (other occurrence),
    # 'the obama show' == 'obama show'; 'trump' != "trump's".
    assert (out["joint_orig/common"], out["joint_orig/retrieved"], out["joint_orig/relevant"]) == (2, 3, 3)
    assert out["joint_orig/f1"] == pytest.approx(2 / 3)
    # Position level: only (0,0,positive) from the sub-word 'trump' span.
    assert (out["joint_pos/common"], out["joint_pos/retrieved"], out["joint_pos/relevant"]) == (1, 3, 3)
    assert out["joint_pos/p"] == pytest.approx(1 / 3) and out["joint_pos/r"] == pytest.approx(1 / 3)
    assert (out["mate/common"], out["mate_str/common"]) == (1, 2)
    # MASC on correctly extracted aspects: only (0,0): predicted positive, gold positive.
    assert out["masc/acc"] == 1.0 and out["masc/n"] == 1
    assert out["masc/macro_f1"] == pytest.approx(1 / 3)
    assert "masc_gold/acc" not in out


def test_evaluate_predictions_keys_and_gold_span_masc():
    out = evaluate_predictions(*_crafted(), gold_span_polarity_ids=[[2, 2], [1]])
    expected = {f"{m}/{k}" for m in ("joint_orig", "joint_pos", "mate", "mate_str")
                for k in ("p", "r", "f1", "common", "retrieved", "relevant")}
    expected |= {f"{m}/{k}" for m in ("masc", "masc_gold") for k in ("acc", "macro_f1", "n")}
    assert set(out) == expected
    assert all(isinstance(v, float) for v in out.values())
    # gold-span predictions: positive/positive ok, positive for negative wrong, neutral ok.
    assert out["masc_gold/acc"] == pytest.approx(2 / 3)


def test_evaluate_predictions_checks_text_counts():
    args = list(_crafted())
    args[3] = [["trump"], ["the obama show"]]
    with pytest.raises(ValueError, match="row 0"):
        evaluate_predictions(*args)
