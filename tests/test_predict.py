"""launch/predict.py: raw sentences in, decoded aspects with polarity out
(input: data_pipeline/predict_inputs.py; restore and decode: jml_jax/predict.py).

The end-to-end tests train configs/demo.py for two steps, then check that
predicting the test split's sentences from raw words gives exactly what the
evaluation of that split gives (same spans, polarities and scores), and that
bad input lines are reported with their file and line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from data_pipeline import predict_inputs
from jml_jax import predict as predict_lib


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- input parsing


def test_read_inputs_accepts_text_and_words(tmp_path):
    path = _write(tmp_path / "in.jsonl", [
        '{"text": "Great  game by Messi", "image": "a.jpg", "id": 7}',
        "",
        '{"words": ["Barça", "lost"]}',
    ])
    inputs = predict_inputs.read_inputs(path)
    assert [i.words for i in inputs] == [("Great", "game", "by", "Messi"), ("Barça", "lost")]
    assert [i.image for i in inputs] == ["a.jpg", None]
    assert [i.record_id for i in inputs] == [7, None]
    assert [i.where for i in inputs] == [f"{path}:1", f"{path}:3"]


@pytest.mark.parametrize("bad, reason", [
    ('{"text": "ok"', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"text": "a b", "words": ["a"]}', "exactly one of"),
    ('{"image": "a.jpg"}', "exactly one of"),
    ('{"words": "a b"}', "'words' must be a list"),
    ('{"words": ["a", ""]}', "'words' must be a list"),
    ('{"text": "   "}', "no words"),
    ('{"text": "a", "img": "x.jpg"}', "unknown field"),
    ('{"text": "a", "image": 3}', "'image' must be"),
])
def test_bad_input_line_is_named_by_file_and_line(tmp_path, bad, reason):
    path = _write(tmp_path / "in.jsonl", ['{"text": "fine"}', bad])
    with pytest.raises(predict_inputs.PredictInputError, match=reason) as err:
        predict_inputs.read_inputs(path)
    assert str(err.value).startswith(f"{path}:2:")


def test_empty_input_file_is_an_error(tmp_path):
    with pytest.raises(predict_inputs.PredictInputError, match="no input sentences"):
        predict_inputs.read_inputs(_write(tmp_path / "in.jsonl", ["", "  "]))


def _demo_config(variant=None):
    from configs import demo
    from launch import common

    config = demo.get_config(variant)
    common.resolve_config_paths(config)
    return config


def test_image_model_needs_an_image_on_every_line(tmp_path):
    from launch import common

    inputs = predict_inputs.read_inputs(_write(tmp_path / "in.jsonl", [
        '{"text": "a b", "image": "train_000.jpg"}', '{"text": "c d"}',
    ]))
    with pytest.raises(predict_inputs.PredictInputError, match=f"{tmp_path / 'in.jsonl'}:2: no 'image'"):
        common.predict_split(_demo_config(), inputs)


def test_missing_image_file_is_named_by_line(tmp_path):
    from launch import common

    inputs = predict_inputs.read_inputs(_write(tmp_path / "in.jsonl", [
        '{"text": "a b", "image": "train_000.jpg"}', '{"text": "c d", "image": "nope.jpg"}',
    ]))
    with pytest.raises(predict_inputs.PredictInputError, match=r"in\.jsonl:2: image 'nope.jpg' is missing"):
        common.predict_split(_demo_config(), inputs)


def test_a_truncated_text_is_flagged_and_logged_by_file_and_line(tmp_path, caplog):
    """A text longer than data.max_seq_length - 2 WordPieces is cut: the log
    names its input line (not 'text:1') and its record says so."""
    config = _demo_config("text_only")
    path = _write(tmp_path / "in.jsonl", [
        '{"text": "Great game by Messi"}',
        '{"text": "%s"}' % " ".join(["tonight"] * (config.data.max_seq_length + 5)),
    ])
    with caplog.at_level("WARNING"):
        inputs, prepared = predict_inputs.prepare_inputs(config, predict_inputs.read_inputs(path))
    assert [inp.truncated for inp in inputs] == [False, True]
    assert f"{path}:2: " in caplog.text and "text:1" not in caplog.text
    pred = {k: np.zeros((2, 1), np.int32) for k in ("span_mask", "span_starts", "span_ends", "polarity")}
    pred["texts"] = [[], []]
    split = predict_lib.prediction_split(prepared.features, make_iter=None)
    records = predict_lib.format_predictions(inputs, split, pred)
    assert [r["truncated"] for r in records] == [False, True]


# ----------------------------------------------------------------------------- end to end


def _train_demo(workdir, variant):
    from jml_jax.train import train_and_evaluate
    from launch import common

    config = _demo_config(variant)
    config.max_steps = 2
    config.eval_splits = ("dev",)
    train_and_evaluate(config, workdir, common.train_data(config), common.eval_splits(config, ["dev"]))
    return config


@pytest.fixture(scope="module", params=[
    pytest.param("text_only", id="text_only"),
    pytest.param(None, id="images", marks=pytest.mark.slow),
])
def trained(request, tmp_path_factory):
    """(config, workdir, evaluator, state) of a demo run trained for two steps.

    The decoding threshold is lowered so that the barely trained model still
    proposes spans (it does not change what is restored)."""
    workdir = tmp_path_factory.mktemp(f"demo_{request.param}")
    config = _train_demo(workdir, request.param)
    config.decode.logit_threshold = -1e4
    exp, evaluator, state = predict_lib.restore_for_prediction(config, workdir, "best")
    return config, workdir, (exp, evaluator), state


@pytest.mark.long  # second tier (tests/README.md)
def test_prediction_from_raw_words_equals_evaluation(trained):
    from launch import common

    config, _, (exp, evaluator), state = trained
    _, splits = exp.task.prepare_inputs(exp, None, common.eval_splits(config, ["test"]))
    test = splits["test"]
    expected = evaluator.predict_split(state, test)
    examples = test.features.examples
    inputs = [
        predict_inputs.PredictInput(tuple(ex.words), ex.image_id, ex.example_id, f"test:{i}")
        for i, ex in enumerate(examples)
    ]
    inputs, split = common.predict_split(config, inputs)
    got = evaluator.predict_split(state, exp.task.prepare_inputs(exp, None, {"predict": split})[1]["predict"])
    for key in ("span_starts", "span_ends", "span_mask", "polarity"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    for key in ("span_scores", "polarity_probs") + (("relation_probs",) if "relation_probs" in expected else ()):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5, rtol=1e-5, err_msg=key)
    assert got["texts"] == expected["texts"]
    assert expected["span_mask"].sum(1).min() >= 1  # the lowered threshold yields spans

    records = predict_lib.format_predictions(inputs, split, got)
    assert len(records) == len(examples)
    for r, (record, ex) in enumerate(zip(records, examples)):
        assert record["id"] == ex.example_id and record["words"] == list(ex.words)
        assert len(record["aspects"]) == int(got["span_mask"][r].sum())
        for j, a in enumerate(record["aspects"]):
            assert 0 <= a["word_start"] <= a["word_end"] < len(ex.words)
            assert a["text"] == " ".join(ex.words[a["word_start"] : a["word_end"] + 1])
            assert a["decoded_text"] == got["texts"][r][j]
            assert a["polarity"] in a["polarity_probs"]
            assert a["polarity_prob"] == max(a["polarity_probs"].values())
            assert abs(sum(a["polarity_probs"].values()) - 1.0) < 1e-5
            np.testing.assert_allclose(a["span_score"], got["span_scores"][r, j])
        assert ("p_image_adds" in record) == config.model.use_images
        assert record["truncated"] is False


@pytest.mark.slow
def test_cli_writes_one_record_per_line(trained, tmp_path):
    config, workdir, _, _ = trained
    variant = "demo.py:text_only" if not config.model.use_images else "demo.py"
    src = _write(tmp_path / "in.jsonl", [
        '{"text": "RT @user : Great game by Messi", "image": "train_000.jpg", "id": "a"}',
        '{"words": ["Northwind", "merger", "talks", "collapse"], "image": "train_001.jpg"}',
    ])
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.predict", f"--config=configs/{variant}", f"--workdir={workdir}",
         f"--input={src}", f"--output={out}", "--checkpoint=latest"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id") for r in records] == ["a", None]
    assert records[1]["words"] == ["Northwind", "merger", "talks", "collapse"]
    assert all(isinstance(r["aspects"], list) for r in records)
