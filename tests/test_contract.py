"""The task owns its batch contract (jml_jax/contract.py), and scores have one key rule.

Covers: the shared synthetic batch has exactly a task's inputs (both tasks,
train and eval, the relation-cache variant); the training loop sends exactly
those inputs to the devices; a missing input is named; the joint evaluator is
traced under the train step's activation constraints; training and
`launch.evaluate` (jml_jax/scoring.py) name the TRC training set's scores alike.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from helpers import small_demo
from configs import trc_relation
from jml_jax import contract, scoring
from jml_jax import train as train_lib
from jml_jax.experiment import build_experiment
from jml_jax.tasks import get_task
from launch import common as launch_common


def _joint(cache: str, images: bool = True):
    c = small_demo.small_demo_config(images=images)
    c.model.relation_cache = cache
    return c


def _relation(arg: str):
    c = trc_relation.get_config(arg)
    c.data.relation_resize = 64
    c.data.prefetch = 0
    return c


CASES = {
    "joint_images_cached": lambda: _joint("auto"),  # on: the fixed crop
    "joint_images_module": lambda: _joint("off"),
    "joint_text_only": lambda: _joint("auto", images=False),
    "relation_images": lambda: _relation("sample"),
    "relation_text_only": lambda: _relation("sample,text_only"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("train", [True, False])
def test_synthetic_batch_is_exactly_the_task_inputs(case, train):
    task = get_task(CASES[case]())
    inputs = task.inputs(6, train=train)
    batch = contract.synthetic_batch(inputs, seed=1)
    assert list(batch) == list(inputs)
    for name, spec in inputs.items():
        assert batch[name].shape == spec.shape and batch[name].dtype == spec.dtype, name
    assert ("relation_probs" in inputs) == (case == "joint_images_cached")
    assert ("image" in inputs) == ("text_only" not in case)
    assert ("mask" in inputs and "row" in inputs) == (not train)
    assert task.batch_keys == tuple(task.inputs(1, train=True))
    assert task.eval_keys == tuple(task.inputs(1, train=False))


def test_synthetic_batch_spans_are_inside_their_rows():
    inputs = contract.joint_inputs(16, length=24, spans=5, train=True, image_size=8)
    b = contract.synthetic_batch(inputs, seed=3, aspects=3, overrun_every=4)
    lengths = b["input_mask"].sum(1)
    for r in range(16):
        slots = np.nonzero(b["span_mask"][r])[0]
        assert len(slots) >= 1
        first = 1 if r % 4 == 3 else 0  # rows 3, 7, ...: slot 0 runs past the row's tokens
        if r % 4 == 3:
            assert b["span_ends"][r, 0] == lengths[r] + 1
        for j in slots[first:]:
            assert 1 <= b["span_starts"][r, j] <= b["span_ends"][r, j] <= lengths[r] - 2
        assert b["start_positions"][r].sum() == len(slots)
    assert (b["input_ids"][b["input_mask"] == 0] == 0).all()


def test_take_sends_exactly_the_inputs_and_names_what_is_missing():
    inputs = contract.relation_inputs(2, length=4, train=True, image_size=8)
    batch = contract.synthetic_batch(inputs)
    assert list(contract.take({**batch, "example_index": np.arange(2)}, inputs)) == list(inputs)
    del batch["image"]
    with pytest.raises(ValueError, match=r"\['image'\].*data.image_dir"):
        contract.take(batch, inputs, "the relation module")


class _Sent(Exception):
    pass


@pytest.mark.long  # second tier (tests/README.md)
@pytest.mark.parametrize("case", ["joint_images_cached", "relation_text_only"])
def test_the_loop_sends_the_task_contract(case, tmp_path, monkeypatch):
    """The training loop's first global batch holds exactly the task's
    training inputs at the per-process batch size."""
    config = CASES[case]()
    launch_common.resolve_config_paths(config)
    sent = {}

    def record(batch, mesh):
        sent.update({k: (v.shape, v.dtype) for k, v in batch.items()})
        raise _Sent

    monkeypatch.setattr(train_lib, "global_batch_from_process_local", record)
    with pytest.raises(_Sent):
        train_lib.train_and_evaluate(config, tmp_path / "run", launch_common.train_data(config),
                                     launch_common.eval_splits(config, tuple(config.eval_splits)))
    want = get_task(config).inputs(int(config.batch_size), train=True)
    assert list(sent) == list(want)
    assert {k: (s.shape, s.dtype) for k, s in want.items()} == sent


def _count_constraints(text: str) -> int:
    return text.count("sharding_constraint")


def test_joint_evaluator_is_traced_with_the_activation_constraints():
    """Like the train step, the joint model's eval functions pin their
    activations by the config's rules; without rules they do not."""
    config = small_demo.small_demo_config(images=False)
    exp = build_experiment(config)
    bsh = jax.sharding.NamedSharding(exp.mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in exp.inputs(train=False).items()}
    state = exp.abstract_state
    counts = {}
    for name, rules in (("on", exp.rules), ("off", None)):
        evaluator = exp.task.make_evaluator(exp.mesh, exp.shardings, rules)
        extract = _count_constraints(evaluator._extract.lower(state.params, state.batch_stats, batch).as_text())
        _, kept = jax.eval_shape(evaluator._extract, state.params, state.batch_stats, batch)
        kept = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=bsh), kept)
        classify = _count_constraints(evaluator._classify.lower(
            state.params, state.batch_stats, kept, batch["input_mask"], batch["span_starts"],
            batch["span_ends"]).as_text())
        counts[name] = (extract, classify)
    train_text = exp.make_train_step().lower(
        state, {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
                for k, v in exp.inputs(train=True).items()}).as_text()
    assert _count_constraints(train_text) > 0
    # The extraction runs BERT, whose activations are pinned; the classification
    # is traced in the same context (its heads pin nothing of their own today).
    assert counts["on"][0] > counts["off"][0] and counts["on"][1] >= counts["off"][1], counts


@pytest.mark.long  # second tier (tests/README.md)
def test_training_and_evaluation_name_the_trc_training_set_alike(tmp_path):
    """configs/trc_relation.py:full scores the training set: training logs it
    as 'train_set/...' and launch.evaluate's evaluate_checkpoint reports the
    same keys (and values) for the same step."""
    config = _relation("sample,full,text_only")
    config.num_epochs = 1
    launch_common.resolve_config_paths(config)
    workdir = tmp_path / "run"
    splits = launch_common.eval_splits(config, ("train",))
    summary = train_lib.train_and_evaluate(config, workdir, launch_common.train_data(config), splits)
    trained = summary["final_scores"]
    assert trained and all(k.startswith("train_set/") for k in trained)
    scores = scoring.evaluate_checkpoint(config, workdir, launch_common.eval_splits(config, ("train",)),
                                         which="latest")
    assert scores["step"] == summary["final_step"]
    evaluated = {k: v for k, v in scores.items() if k != "step" and "/data/" not in k}
    assert evaluated.keys() == trained.keys()
    for key, value in trained.items():
        assert evaluated[key] == pytest.approx(value, abs=1e-6), key
    assert scoring.score_key("train", "f1") == "train_set/f1" and scoring.score_key("dev", "f1") == "dev/f1"
