"""jml_jax/relation_cache.py: the frozen relation module's outputs computed once.

On the tiny demo model: the joint model without a relation module, reading
``relation_probs`` from the batch, gives the outputs, loss, gradients and
BatchNorm statistics of the whole model (whose frozen relation module runs in
the step, §2.5); its random relation init is the whole model's; a short run
with the cache writes checkpoints without relation parameters, evaluates as
the run without it and refuses to evaluate with another relation module;
'auto' turns the cache off for random crops and says why.
"""

from __future__ import annotations

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jml_jax import relation_cache
from jml_jax.checkpointing import Checkpointer, CheckpointStructureError
from jml_jax.evaluators import EvalSplit
from jml_jax.scoring import evaluate_checkpoint
from jml_jax.experiment import build_experiment
from jml_jax.tasks import JointTask
from jml_jax.train import TrainData, train_and_evaluate
from launch import common
from helpers.small_demo import small_demo_config

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


# float32 on the CPU; the two paths run the same arithmetic, compiled in
# different programs (XLA may fuse and order reductions differently).
OUT_TOL = 2e-6
GRAD_TOL = 2e-6


def _config(cache: str = "auto", crop_mode: str = "fixed"):
    c = small_demo_config(images=True)
    c.mesh_shape = (1, 1, 1)
    c.data.crop_size = 64
    c.data.prefetch = 0
    c.data.crop_mode = crop_mode
    c.model.relation_cache = cache
    return c


def _one_device():
    return jax.devices()[:1]


# ----------------------------------------------------------------------------- the choice


@pytest.mark.parametrize("crop_mode, cache, images, on, why", [
    ("fixed", "auto", True, True, "crop_mode='fixed'"),
    ("center", "auto", True, True, "crop_mode='center'"),
    ("random", "auto", True, False, "crop_mode='random' gives the relation module a new input every epoch"),
    ("fixed", "off", True, False, "relation_cache='off'"),
    ("fixed", "auto", False, False, "text-only"),
])
def test_auto_choice_and_its_reason_is_logged(crop_mode, cache, images, on, why, caplog):
    c = _config(cache, crop_mode)
    if not images:
        c.model.use_images = False
        c.data.image_dir = None
    with caplog.at_level(logging.INFO, logger="jml_jax.tasks"):
        task = JointTask(c)
    assert task.relation_cached is on
    assert task.jml.relation_inputs == ("batch" if on else "module")
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("relation cache")]
    assert len(line) == 1 and line[0].startswith(f"relation cache {'on' if on else 'off'}:") and why in line[0]
    assert ("relation_probs" in task.batch_keys) is on and ("relation_probs" in task.eval_keys) is on
    assert ("relation" in task.frozen_prefixes) is (images and not on)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="model.relation_cache='always'"):
        relation_cache.decide(_config("always"))


# ----------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def pair():
    """The whole model's experiment and state ('off') and the cached one, the
    cache's relation module, and two real training batches of the demo data."""
    off = build_experiment(_config("off"), devices=_one_device())
    on = build_experiment(_config(), devices=_one_device())
    state = off.initial_state()
    relation = {c: jax.device_get(getattr(state, c)["relation"]) for c in ("params", "batch_stats")}
    it = common.train_data(_config()).make_iter(0)
    try:
        batches = [next(it) for _ in range(2)]
    finally:
        it.close()
    return {"off": off, "on": on, "state": state, "relation": relation, "batches": batches,
            "cache": relation_cache.RelationCache(on.task.jml, relation)}


def _without_relation(tree):
    return {k: v for k, v in tree.items() if k != "relation"}


def _assert_close(a, b, tol, what):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for path, x in jax.tree_util.tree_flatten_with_path(a)[0]:
        y = b
        for key in path:
            y = y[key.key]
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


def test_random_relation_init_is_the_whole_models(pair):
    """No relation_init: the cache's module equals the whole model's random relation subtree."""
    drawn = relation_cache.random_variables(_config(), pair["on"].task.jml)
    _assert_close(drawn, pair["relation"], 0.0, "random relation init ")


def test_outputs_loss_and_gradients_match_the_whole_model(pair):
    off, on, state = pair["off"], pair["on"], pair["state"]
    assert "relation" not in on.abstract_state.params and "relation" not in on.abstract_state.batch_stats
    assert "relation" in state.params
    for batch in pair["batches"]:
        probs = pair["cache"].probs(batch)
        assert probs.shape == (len(batch["input_ids"]), 2) and np.all((probs > 0) & (probs < 1))
        keys = off.task.batch_keys + ("image",)
        b_off = {k: jnp.asarray(batch[k]) for k in keys}
        b_on = {**b_off, "relation_probs": jnp.asarray(probs)}
        p_off, s_off = state.params, state.batch_stats
        p_on, s_on = _without_relation(p_off), _without_relation(s_off)

        # Eval-mode outputs of every entry point's dict (extract + classify).
        out_off = off.task.model.apply({"params": p_off, "batch_stats": s_off}, b_off["input_ids"],
                                       b_off["input_mask"], b_off["span_starts"], b_off["span_ends"],
                                       b_off["image"])
        out_on = on.task.model.apply({"params": p_on, "batch_stats": s_on}, b_on["input_ids"], b_on["input_mask"],
                                     b_on["span_starts"], b_on["span_ends"], b_on["image"],
                                     relation_probs=b_on["relation_probs"])
        _assert_close(out_on, out_off, OUT_TOL, "eval outputs ")
        np.testing.assert_allclose(np.asarray(out_on["relation_probs"]), probs, rtol=0, atol=0)

        # Training: loss, aux, new BatchNorm statistics and gradients (dropout on).
        rng = jax.random.PRNGKey(7)

        def grads(task, params, stats, b):
            fn = jax.value_and_grad(lambda p: task.loss_fn(p, stats, b, rng, True), has_aux=True)
            return jax.jit(fn)(params)

        (loss_off, (aux_off, bs_off)), g_off = grads(off.task, p_off, s_off, b_off)
        (loss_on, (aux_on, bs_on)), g_on = grads(on.task, p_on, s_on, b_on)
        assert math.isfinite(float(loss_off))
        np.testing.assert_allclose(float(loss_on), float(loss_off), rtol=OUT_TOL, atol=OUT_TOL)
        _assert_close(aux_on, aux_off, OUT_TOL, "aux ")
        _assert_close(bs_on, _without_relation(bs_off), OUT_TOL, "new batch_stats ")
        _assert_close(g_on, _without_relation(g_off), GRAD_TOL, "gradients ")
        assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_on["resnet"])) > 0  # the image path trains


def test_each_example_runs_once_and_padding_rows_are_looked_up(pair):
    """Train batches compute a batch only when it holds an unseen example;
    eval splits run once, here, and later passes only look up."""
    cache = relation_cache.RelationCache(pair["on"].task.jml, pair["relation"])
    b0, b1 = pair["batches"]
    direct = {int(k): p for b in (b0, b1) for k, p in zip(b["example_index"], pair["cache"].probs(b))}
    stream = [b0, b1, b0, b1, b1]
    train = TrainData(make_iter=lambda start: iter(stream[start:]), num_examples=60)
    wrapped = cache.wrap_train(train)
    got = list(wrapped.make_iter(0))
    assert cache.batches_run == 2  # b0 and b1 once each
    for b, g in zip(stream, got):
        np.testing.assert_array_equal(g["relation_probs"], np.stack([direct[int(k)] for k in b["example_index"]]))

    # An eval split of the two batches' examples as rows 0..15, the last batch padded.
    rows = np.arange(16)
    merged = {k: np.concatenate([b0[k], b1[k]]) for k in ("input_ids", "input_mask", "image")}
    padded = []
    for start in (0, 6, 12):  # batches of 6: the last has 4 real rows, 2 padding rows repeating row 0
        real = np.arange(start, start + 6) < len(rows)
        idx = np.where(real, np.arange(start, start + 6), 0)
        padded.append({**{k: v[idx] for k, v in merged.items()}, "row": idx.astype(np.int32),
                       "mask": real.astype(np.int32)})
    split = EvalSplit(name="dev", make_iter=lambda: iter(padded), num_examples=16)
    before = cache.batches_run
    wrapped_split = cache.wrap_eval(split)
    assert cache.batches_run == before + 3
    for _ in range(2):
        for b, g in zip(padded, wrapped_split.make_iter()):
            expect = np.stack([direct[int(b0["example_index"][r]) if r < 8 else int(b1["example_index"][r - 8])]
                               for r in b["row"]])
            np.testing.assert_allclose(g["relation_probs"], expect, rtol=0, atol=1e-7)
    assert cache.batches_run == before + 3


# ----------------------------------------------------------------------------- a run


def test_run_with_cache_saves_no_relation_and_scores_as_without(tmp_path):
    """Two steps and an evaluation, with and without the cache: the same
    losses and scores; the cached run's checkpoints hold no relation module."""
    summaries, losses = {}, {}
    for mode in ("auto", "off"):
        c = _config(mode)
        c.max_steps = 2
        c.checkpoint_every_steps = 1
        workdir = tmp_path / mode
        summaries[mode] = train_and_evaluate(c, workdir, common.train_data(c),
                                             common.eval_splits(c, ("dev",)), devices=_one_device())
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses["auto"]) == 2
    np.testing.assert_allclose(losses["auto"], losses["off"], rtol=1e-5, atol=1e-6)
    cached, whole = summaries["auto"]["final_scores"], summaries["off"]["final_scores"]
    assert "dev/relation/image_adds_frac" in cached
    for key, value in whole.items():
        np.testing.assert_allclose(cached[key], value, rtol=1e-5, atol=1e-6, err_msg=key)

    c = _config()
    exp_on = build_experiment(c, devices=_one_device())
    exp_off = build_experiment(_config("off"), devices=_one_device())
    with Checkpointer(tmp_path / "auto", keep=c.keep_checkpoints, create=False) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        for step in (1, 2):
            state, _ = ckpt.restore(step, exp_on.abstract_state)  # strict: nothing unexpected saved
            assert "relation" not in state.params and "relation" not in state.batch_stats
        with pytest.raises(CheckpointStructureError, match="relation"):
            ckpt.restore(2, exp_off.abstract_state)

    # Evaluation alone (prepare_inputs without train data) scores the checkpoint as the run did.
    scores = evaluate_checkpoint(c, tmp_path / "auto", common.eval_splits(c, ("dev",)), which="latest",
                                 devices=_one_device())
    np.testing.assert_allclose(scores["dev/joint_orig/f1"], cached["dev/joint_orig/f1"], rtol=0, atol=1e-9)

    # The run recorded its relation module; a config that loads another one
    # (here: another seed's random init) is refused, not silently scored.
    record = json.loads((tmp_path / "auto" / relation_cache.FINGERPRINT_FILE).read_text())
    assert record["source"].startswith("the random init of seed=") and record["arrays"]
    assert not (tmp_path / "off" / relation_cache.FINGERPRINT_FILE).exists()
    other = _config()
    other.seed += 1
    with pytest.raises(ValueError, match=r"not the one .* was trained with .* arrays differ"):
        evaluate_checkpoint(other, tmp_path / "auto", common.eval_splits(other, ("dev",)), which="latest",
                            devices=_one_device())
