"""tools/significance.py on synthetic predictions whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jml_jax import metrics as metrics_lib
from tools import significance as sig

N = 150
POLS = ("positive", "negative", "neutral")


def gold_records(n=N, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        words = [f"w{i}_{k}" for k in range(8)]
        gold = []
        for s in sorted(rng.choice(8, size=int(rng.integers(1, 3)), replace=False)):
            gold.append({"word_start": int(s), "word_end": int(s), "polarity": POLS[int(rng.integers(3))],
                         "text": words[s]})
        records.append({"example_id": f"s{i}", "words": words, "gold": gold, "predicted": []})
    return records


def predict(records, correct):
    """A copy of ``records`` predicting every gold aspect of sentence i when
    correct(i), else a wrong span with a wrong polarity."""
    out = []
    for i, r in enumerate(records):
        if correct(i):
            pred = [dict(g, span_score=1.0, polarity_prob=0.9) for g in r["gold"]]
        else:
            g = r["gold"][0]
            s = (g["word_start"] + 1) % 8 if all(x["word_start"] != (g["word_start"] + 1) % 8 for x in r["gold"]) \
                else (g["word_start"] + 2) % 8
            pol = POLS[(POLS.index(g["polarity"]) + 1) % 3]
            pred = [{"word_start": s, "word_end": s, "polarity": pol, "text": r["words"][s]}]
        out.append(dict(r, predicted=pred))
    return out


@pytest.mark.parametrize("test", sig.TESTS)
def test_identical_runs_differ_by_zero_with_p_one(test):
    a = predict(gold_records(), lambda i: i % 3 != 0)
    for r in sig.compare_records(a, [dict(x) for x in reversed(a)], resamples=2000, test=test):
        assert r.diff == 0.0 and r.ci_low == 0.0 and r.ci_high == 0.0
        assert r.p_value == 1.0


@pytest.mark.parametrize("test", sig.TESTS)
def test_better_on_every_sentence_is_significant(test):
    gold = gold_records()
    a, b = predict(gold, lambda i: True), predict(gold, lambda i: False)
    for r in sig.compare_records(a, b, resamples=2000, test=test):
        assert r.a == 1.0 and r.b == 0.0 and r.diff == 1.0
        assert r.p_value < 0.01
        assert r.ci_low > 0.9 and r.ci_high == 1.0
    # The other way round: the same p, the difference and interval negated.
    rev = sig.compare_records(b, a, resamples=2000, test=test)
    assert all(r.diff == -1.0 and r.ci_high < -0.9 and r.p_value < 0.01 for r in rev)


@pytest.mark.parametrize("test", sig.TESTS)
def test_one_discordant_sentence_is_not_significant(test):
    gold = gold_records()
    a = predict(gold, lambda i: i % 2 == 0)
    b = predict(gold, lambda i: i % 2 == 0 and i != 0)  # B misses sentence 0 only
    joint, mate = sig.compare_records(a, b, resamples=4000, test=test)
    assert joint.diff > 0 and joint.ci_low <= 0 <= joint.ci_high
    assert joint.p_value > 0.2


def test_point_estimates_are_the_metric_modules():
    gold = gold_records()
    a = predict(gold, lambda i: i % 4 != 1)
    counts = sig.sentence_counts(a)
    expected = metrics_lib.original_joint_metric(
        [[p["text"] for p in r["predicted"]] for r in a], [[p["polarity"] for p in r["predicted"]] for r in a],
        [[g["text"] for g in r["gold"]] for r in a], [[g["polarity"] for g in r["gold"]] for r in a])
    r = sig.compare_counts(counts["joint_orig/f1"], counts["mate/f1"], resamples=10)
    assert r.a == pytest.approx(expected["f1"], abs=1e-12)
    rng = np.random.default_rng(1)
    # Valid sums: common <= retrieved, and no hit without gold (common may
    # exceed relevant under the original metric: two equal predictions can
    # both hit one gold aspect, §7.1).
    r, g = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    c = np.where(g > 0, rng.integers(0, 6, 200) % (r + 1), 0)
    sums = np.stack([c, r, g], axis=1)
    ref = [metrics_lib.precision_recall_f1(*map(int, s))["f1"] for s in sums]
    np.testing.assert_allclose(sig._f1(sums), ref, atol=1e-12)


def test_refuses_different_sentences_or_gold():
    gold = gold_records()
    a = predict(gold, lambda i: True)
    with pytest.raises(ValueError, match="different sentences"):
        sig.compare_records(a, a[1:])
    other = [dict(r) for r in a]
    other[3] = dict(other[3], gold=[])
    with pytest.raises(ValueError, match="gold aspects"):
        sig.compare_records(a, other)


def test_command_line_on_run_folders(tmp_path, capsys):
    gold = gold_records()
    for name, correct in (("a", lambda i: True), ("b", lambda i: i % 2 == 0)):
        folder = tmp_path / name / "predictions"
        folder.mkdir(parents=True)
        with (folder / "test_predictions.jsonl").open("w") as f:
            for r in predict(gold, correct):
                f.write(json.dumps(r) + "\n")
    assert sig.main([str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    assert "joint_orig/f1" in out and "mate/f1" in out and "paired bootstrap" in out
    row = next(line for line in out.splitlines() if line.startswith("joint_orig/f1")).split()
    assert float(row[1]) == 100.0 and float(row[3]) > 0 and float(row[-1]) < 0.01
    with pytest.raises(FileNotFoundError, match="launch.evaluate"):
        sig.main([str(tmp_path / "a"), str(tmp_path / "b"), "--split", "dev"])
