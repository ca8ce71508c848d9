"""Decoder and joint metric against the original code's outputs on 200 cases.

orig_decode_metric.json (fixtures README §2) holds real Twitter-2015
sentences with random logits, decoded and scored by the authors' functions.
Every logit is on a 2^-10 grid, so float32 and float64 must both match
exactly.
"""

import json

import numpy as np
import pytest

from jml_jax.decode import DecodeConfig, decode_spans
from jml_jax.metrics import POLARITY_NAMES, joint_counts_original, original_joint_metric

L = 96


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    with open(fixtures_dir / "orig_decode_metric.json") as f:
        data = json.load(f)
    assert data["schema"] == "orig_decode_metric/v1"
    assert len(data["cases"]) == 200
    return data


def _token_to_word(cases):
    t2w = np.full((len(cases), L), -1, np.int64)
    for i, case in enumerate(cases):
        for pos, word in case["token_to_orig_map"]:
            t2w[i, pos] = word
    return t2w


def _decode(cases, dtype):
    return decode_spans(
        np.array([c["start_logits"] for c in cases], dtype),
        np.array([c["end_logits"] for c in cases], dtype),
        np.array([c["n_tokens"] for c in cases]),
        _token_to_word(cases),
        [c["tokens"] for c in cases],
        [c["sent_tokens"] for c in cases],
        DecodeConfig(),
    )


def test_settings_are_the_defaults(fixture):
    s, cfg = fixture["settings"], DecodeConfig()
    assert (cfg.n_best_size, cfg.max_answer_length, cfg.logit_threshold, cfg.max_spans) == (
        s["n_best_size"], s["max_answer_length"], s["logit_threshold"], s["max_spans_kept"])
    assert cfg.use_heuristics == s["use_heuristics"] and cfg.use_nms == s["use_nms"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decoder_matches_original_exactly(fixture, dtype):
    cases = fixture["cases"]
    result = _decode(cases, dtype)
    mismatches = {"top_start": [], "top_end": [], "spans": [], "texts": []}
    for i, case in enumerate(cases):
        if result.top_start[i].tolist() != case["top_start_indexes"]:
            mismatches["top_start"].append(i)
        if result.top_end[i].tolist() != case["top_end_indexes"]:
            mismatches["top_end"].append(i)
        if (result.span_starts[i].tolist(), result.span_ends[i].tolist(), result.span_mask[i].tolist()) != (
            case["span_starts"], case["span_ends"], case["span_masks"]
        ):
            mismatches["spans"].append(i)
        if result.texts[i] != [d["text"] for d in case["decoded"]]:
            mismatches["texts"].append(i)
    assert mismatches == {"top_start": [], "top_end": [], "spans": [], "texts": []}


def test_joint_metric_matches_original(fixture):
    cases = fixture["cases"]
    result = _decode(cases, np.float32)
    pred_texts, pred_pols, gold_texts, gold_pols = [], [], [], []
    wrong = []
    for i, case in enumerate(cases):
        n = int(result.span_mask[i].sum())
        texts = result.texts[i]
        pols = [POLARITY_NAMES[p] for p in case["cls_pred"][:n]]
        golds = [g["term"] for g in case["gold_aspects"]]
        gpols = [g["polarity"] for g in case["gold_aspects"]]
        counts = joint_counts_original(texts, pols, golds, gpols)
        if counts != (case["common"], case["retrieved"], case["relevant"]):
            wrong.append((i, counts))
        pred_texts.append(texts)
        pred_pols.append(pols)
        gold_texts.append(golds)
        gold_pols.append(gpols)
    assert wrong == []
    totals = fixture["totals"]
    m = original_joint_metric(pred_texts, pred_pols, gold_texts, gold_pols)
    assert (m["common"], m["retrieved"], m["relevant"]) == (155, 691, 298)
    assert (m["common"], m["retrieved"], m["relevant"]) == (totals["common"], totals["retrieved"], totals["relevant"])
    assert m["precision"] == pytest.approx(totals["p"], abs=1e-12)
    assert m["recall"] == pytest.approx(totals["r"], abs=1e-12)
    assert m["f1"] == pytest.approx(totals["f1"], abs=1e-12)


def test_polarity_ids_give_the_same_counts_as_names(fixture):
    cases = fixture["cases"]
    result = _decode(cases[:40], np.float64)
    for i, case in enumerate(cases[:40]):
        n = int(result.span_mask[i].sum())
        golds = [g["term"] for g in case["gold_aspects"]]
        gpols = [g["polarity"] for g in case["gold_aspects"]]
        by_id = joint_counts_original(result.texts[i], case["cls_pred"][:n], golds, gpols)
        assert by_id == (case["common"], case["retrieved"], case["relevant"])
