"""Evaluation reads the device once per batch (jml_jax/evaluators.py Evaluator)."""

from __future__ import annotations

import jax
import numpy as np

from configs import demo
from jml_jax.experiment import build_experiment
from launch import common


def test_one_blocking_read_per_eval_batch(monkeypatch):
    config = demo.get_config("text_only")
    config.data.max_seq_length = 32
    config.data.prefetch = 0
    config.eval_batch_size = 8
    config.mesh_shape = (1, 1, 1)
    config.decode.logit_threshold = -1e4  # the random model proposes spans, so classification runs
    exp = build_experiment(config, devices=jax.devices()[:1])
    state = exp.random_state()
    evaluator = exp.make_evaluator()
    split = common.eval_splits(config, ["dev"])["dev"]
    expected = evaluator.predict_split(state, split)  # compiles; the reference result
    num_batches = -(-split.num_examples // config.eval_batch_size)
    assert num_batches > 2

    reads = []
    real_get = jax.device_get

    def counting_get(tree):
        reads.append(len(jax.tree.leaves(tree)))
        return real_get(tree)

    monkeypatch.setattr(jax, "device_get", counting_get)
    evaluator.transfers = 0
    got = evaluator.predict_split(state, split)

    # One read of each batch's extraction, one of all classifications at the end.
    assert len(reads) == evaluator.transfers == num_batches + 1
    assert reads[-1] == num_batches  # the classifications of every batch, together
    for key in ("span_starts", "span_ends", "span_mask", "polarity", "gold_polarity"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert expected["span_mask"].sum() > 0
