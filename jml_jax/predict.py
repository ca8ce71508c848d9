"""Prediction for raw sentences with a trained run: `predict(config, workdir, inputs)`.

The command line is ``python -m launch.predict --config=... --workdir=DIR
--input=IN.jsonl --output=OUT.jsonl [--image_dir=FOLDER] [--checkpoint=best]``.
It reads and prepares the input with `data_pipeline.predict_inputs` (this
module imports no data pipeline: it takes the prepared split as an `EvalSplit`)
and writes what `predict` returns.

Input: one JSON object per line (blank lines are skipped)::

    {"text": "RT @user : Great game by Messi tonight", "image": "123.jpg", "id": "any"}
    {"words": ["Great", "game", "by", "Messi"], "image": "/abs/path/123.jpg"}

``text`` is split on whitespace; ``words`` is taken as given. ``image`` is a
file name inside ``image_dir`` (default: the config's data.image_dir) or a
path; it is required when the model uses images and ignored when it is
text-only. ``id`` (optional) is copied to the output.

Output: one JSON object per input line, in order::

    {"id": ..., "words": [...], "image": ...,
     "aspects": [{"word_start": 3, "word_end": 3, "text": "Messi",
                  "polarity": "positive", "span_score": 17.2, "polarity_prob": 0.91,
                  "polarity_probs": {"other": ..., "neutral": ..., "positive": ..., "negative": ...}}],
     "p_text_represented": 0.7, "p_image_adds": 0.4, "truncated": false}

``span_score`` is the span's start logit plus its end logit (what decoding
ranks by, §6); ``polarity_prob`` the softmax probability of the predicted
polarity. ``truncated`` is true when the sentence had more WordPieces than
``data.max_seq_length - 2``: the words past the cut were not read, so no
aspect is found there. Spans are decoded exactly as in evaluation (jml_jax.evaluators:
extraction -> host decoding -> classification); images get the evaluation
preprocessing of the config's data section (its fixed crop, or the centre
crop for 'random'), so a sentence seen in training gets the same pixels.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def prediction_split(features, make_iter: Callable) -> "EvalSplit":
    """The prepared inputs as the evaluation split `predict` decodes.

    Args:
      features: the inputs' FeatureSet (data_pipeline.predict_inputs.prepare_inputs).
      make_iter: () -> iterator of padded batches of them (data_pipeline.pipeline.make_eval_iter).
    """
    from jml_jax.evaluators import EvalSplit

    return EvalSplit(name="predict", make_iter=make_iter, features=features)


def restore_for_prediction(config, workdir, which: str | int = "best"):
    """(experiment, evaluator, state) of a run's checkpoint, restored into this
    machine's mesh (jml_jax.scoring.restore_for_eval). Batches of a split must
    pass through ``experiment.task.prepare_inputs`` before the evaluator reads them."""
    from jml_jax.scoring import restore_for_eval
    from jml_jax.tasks import task_class

    task = task_class(config)
    if not task.decodes_spans:
        raise ValueError("prediction decodes aspect spans: it needs a joint-model config, "
                         f"not the {task.name} task")
    exp, state = restore_for_eval(config, workdir, which)
    return exp, exp.make_evaluator(), state


def format_predictions(inputs: Sequence, split, pred: dict) -> list[dict]:
    """One output record per input (see the module docstring). ``inputs``:
    data_pipeline.predict_inputs.PredictInput (words, image, record_id, truncated)."""
    from jml_jax.metrics import POLARITY_NAMES

    arrays = split.features.arrays
    records = []
    for r, inp in enumerate(inputs):
        t2w = arrays["token_to_word"][r]
        texts = pred["texts"][r]
        aspects = []
        for j in np.nonzero(pred["span_mask"][r])[0]:
            s, e = int(pred["span_starts"][r, j]), int(pred["span_ends"][r, j])
            ws, we = int(t2w[s]), int(t2w[e])
            pol = int(pred["polarity"][r, j])
            probs = pred["polarity_probs"][r, j]
            aspects.append({
                "word_start": ws, "word_end": we,
                "text": " ".join(inp.words[ws : we + 1]),
                "decoded_text": texts[len(aspects)] if len(aspects) < len(texts) else "",
                "polarity": POLARITY_NAMES[pol],
                "span_score": float(pred["span_scores"][r, j]),
                "polarity_prob": float(probs[pol]),
                "polarity_probs": {name: float(p) for name, p in zip(POLARITY_NAMES, probs)},
            })
        record: dict[str, Any] = {}
        if inp.record_id is not None:
            record["id"] = inp.record_id
        record["words"] = list(inp.words)
        if inp.image is not None:
            record["image"] = inp.image
        record["aspects"] = aspects
        if "relation_probs" in pred:
            record["p_text_represented"], record["p_image_adds"] = map(float, pred["relation_probs"][r])
        record["truncated"] = bool(getattr(inp, "truncated", False))
        records.append(record)
    return records


def predict(config, workdir, inputs: Sequence, split, *, which: str | int = "best") -> list[dict]:
    """Restores ``which`` checkpoint of ``workdir`` and predicts every input.

    ``split``: the inputs prepared as an EvalSplit (`prediction_split`)."""
    exp, evaluator, state = restore_for_prediction(config, workdir, which)
    _, splits = exp.task.prepare_inputs(exp, None, {split.name: split}, workdir=workdir)
    pred = evaluator.predict_split(state, splits[split.name])
    return format_predictions(inputs, split, pred)


def write_jsonl(path: str | pathlib.Path, records: Sequence[dict]) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
