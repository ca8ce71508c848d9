"""The training system on the real JML model (demo config, bundled sample data).

What a user of `jml_jax.train` relies on, with the 8 fake CPU devices of
tests/conftest.py:

* a train step gives the same loss and parameters on every mesh and on one
  device, and leaves params and optimizer state in their intended shardings;
* an interrupted run resumed in its work directory ends exactly where an
  uninterrupted run ends;
* a checkpoint written on 8 devices evaluates on 1 with identical metrics, and
  `evaluate_checkpoint(which='best')` reproduces the metrics logged in training;
* missing, partial or incompatible checkpoints and non-finite losses stop the
  run with a clear error, never a silent fresh start or a corrupt checkpoint.

The demo model is shrunk (sequence length 32, 4 steps). Most runs are
text-only; the step-parity and end-to-end tests keep the images on (main
ResNet BatchNorm in train mode, dropout on). JAX compiles dominate the run
time, so identical programs (same config, same mesh) are compiled once: the
module turns on JAX's persistent compilation cache in a temporary folder.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from helpers.runs import (  # noqa: F401 (fixtures)

    TOTAL_STEPS,
    acting_at,
    compilation_cache_dir,
    flat,
    never,
    restore,
    small_demo_config,
    text_config,
    text_data,
    text_run,
    with_changes,
)
from jml_jax import contract, train
from jml_jax.experiment import build_experiment
from jml_jax.scoring import evaluate_checkpoint, sweep_thresholds
from jml_jax.checkpointing import COMMIT_FILE, Checkpointer, CheckpointError, CheckpointStructureError
from jml_jax.sharding import global_batch_from_process_local
from jml_jax.summary import read_jsonl
from launch import common

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long

SELECT = "dev/joint_orig/f1"


class _Preempted(Exception):
    """Stands for the process being stopped (SIGTERM, a lost TPU host)."""


def _interrupted(data: train.TrainData, at_step: int) -> train.TrainData:
    """The same stream, stopping the run when step ``at_step`` asks for its batch."""

    def stop():
        raise _Preempted(f"stopped before step {at_step}")

    return acting_at(data, at_step, stop)


def _assert_trees_close(got, want, *, tol, what):
    got, want = flat(got), flat(want)
    assert got.keys() == want.keys(), what
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=tol, atol=tol, err_msg=f"{what}: {key}")


def _model_batch(batch, setup):
    """What the training loop sends: exactly the task's training inputs (jml_jax/contract.py)."""
    return contract.take(batch, setup.inputs(train=True))


def _logged_evals(workdir) -> dict[int, dict[str, float]]:
    """The eval scores that training wrote to metrics.jsonl, by step."""
    return {
        r["step"]: {k: v for k, v in r.items() if k not in ("step", "wall_time", "epoch")}
        for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") if SELECT in r
    }


def text_run_splits(config):
    return common.eval_splits(config, ("dev", "test"))


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def image_config():
    # Evals at steps 2 and 4 (7 steps per epoch // 3), so 'best' is a choice.
    return with_changes(small_demo_config(images=True), mesh_shape=(2, 4, 1), eval_per_epoch=3)


@pytest.fixture(scope="module")
def image_data(image_config):
    return common.train_data(image_config), common.eval_splits(image_config, ("dev", "test"))


# --------------------------------------------------------------------------- 1. meshes


@pytest.fixture(scope="module")
def module_config(image_config):
    """The image config with the relation module inside the step (model.relation_cache='off'):
    the mesh-parity tests cover the whole model, frozen relation module included."""
    return with_changes(image_config, **{"model.relation_cache": "off"})


@pytest.fixture(scope="module")
def step_parity(module_config, image_data):
    """The initial state (host copy) and the first 3 global batches of the image config."""
    s = build_experiment(module_config, num_train_steps=TOTAL_STEPS)
    train_data, _ = image_data
    it = train_data.make_iter(0)
    try:
        batches = [_model_batch(next(it), s) for _ in range(3)]
    finally:
        it.close()
    assert "image" in batches[0] and batches[0]["image"].shape == (8, 224, 224, 3)
    return {"initial": jax.device_get(s.initial_state()), "batches": batches, "results": {}}


def _run_steps(config, parity, mesh_shape, devices=None):
    """Losses and host params after steps 1 and 3, and the final state, on one mesh."""
    key = tuple(mesh_shape)
    if key in parity["results"]:
        return parity["results"][key]
    cfg = with_changes(config, mesh_shape=tuple(mesh_shape))
    s = build_experiment(cfg, num_train_steps=TOTAL_STEPS, devices=devices)
    state = jax.device_put(parity["initial"], s.shardings)
    step = s.make_train_step()
    losses, after = [], {}
    for i, batch in enumerate(parity["batches"], start=1):
        state, metrics = step(state, global_batch_from_process_local(batch, s.mesh))
        assert bool(metrics["is_finite"])
        losses.append(float(metrics["loss"]))
        if i in (1, 3):
            after[i] = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    result = {"losses": losses, "after": after, "state": state, "setup": s}
    parity["results"][key] = result
    return result


@pytest.mark.parametrize(
    "mesh_shape",
    [
        pytest.param((2, 4, 1), marks=pytest.mark.slow),
        (2, 2, 2),  # data, fsdp and tensor at once: the one CI runs
        pytest.param((8, 1, 1), marks=pytest.mark.slow),
    ],
)
def test_train_steps_match_one_device_on_every_mesh(module_config, step_parity, mesh_shape):
    image_config = module_config
    assert image_config.model.use_images and image_config.model.train_main_resnet
    assert image_config.model.dropout_rate > 0
    one = _run_steps(image_config, step_parity, (1, 1, 1), devices=jax.devices()[:1])
    many = _run_steps(image_config, step_parity, mesh_shape)
    assert many["setup"].mesh.devices.size == 8
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    for i in (1, 3):
        got, want, what = many["after"][i], one["after"][i], f"{mesh_shape} after step {i}"
        # Sums reduced in a mesh-dependent order differ in their last bits, and
        # on some CPUs (AMD EPYC without AVX-512) a 'tensor' mesh moves them
        # most. Adam turns a near-zero gradient into a step of about lr either
        # way, so a few weights end up to ~3e-5 apart after 3 steps at lr 1e-3;
        # 1e-4 is still a tenth of one step, far below what a wrong gradient or
        # a missing shard would give. BatchNorm statistics (means of squares
        # over batch x H x W, updated twice per step, §10.8) get the same bound.
        _assert_trees_close(got, want, tol=1e-4, what=what)
    # The step did train: BERT moved, the main ResNet's BatchNorm statistics
    # moved (train mode), the frozen relation module did not.
    initial, after = step_parity["initial"], one["after"][3]
    assert not np.allclose(after["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"],
                           initial.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(after["batch_stats"]["resnet"]), jax.tree.leaves(initial.batch_stats["resnet"])))
    _assert_trees_close(after["params"]["relation"], initial.params["relation"], tol=0, what="frozen relation")
    _assert_trees_close(after["batch_stats"]["relation"], initial.batch_stats["relation"], tol=0,
                        what="frozen relation statistics")


def _opt_leaves(opt_state):
    return {
        "/".join(str(getattr(e, "key", getattr(e, "name", getattr(e, "idx", e)))) for e in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
    }


def test_state_keeps_its_shardings_after_steps(module_config, step_parity):
    run = _run_steps(module_config, step_parity, (2, 2, 2))
    state = run["state"]
    query = state.params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]
    # ('embed', 'heads') -> ('fsdp', 'tensor') under jml_jax.axes.DEFAULT_RULES.
    assert query["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")
    assert query["bias"].sharding.spec == PartitionSpec("tensor")
    assert query["kernel"].sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
    # Every leaf is where the step's out_shardings put it.
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(run["setup"].shardings)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
    # The Adam moments follow their parameters; the frozen relation has none.
    leaves = _opt_leaves(state.opt_state)
    kernel_path = "bert/encoder/layer_0/attention/self/query/kernel"
    moments = [v for k, v in leaves.items() if k.endswith(kernel_path)]
    assert len(moments) == 2, sorted(leaves)[:20]
    for m in moments:
        assert m.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert not [k for k in leaves if "relation" in k.split("/")]
    assert [k for k in leaves if "resnet" in k.split("/")], "the main ResNet trains in the demo"


# --------------------------------------------------------------------------- 2. resume


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, text_config, text_data, text_run):
    full_dir, full_summary = text_run
    train_data, splits = text_data
    workdir = tmp_path / "interrupted"
    with pytest.raises(_Preempted):
        train.train_and_evaluate(text_config, workdir, _interrupted(train_data, at_step=3), splits)
    with Checkpointer(workdir, create=False) as ckpt:
        assert ckpt.all_steps() == [2]  # checkpoint_every_steps=2; step 3 never finished
    summary = train.train_and_evaluate(text_config, workdir, train_data, splits)

    full, _ = restore(text_config, full_dir)
    resumed, meta = restore(text_config, workdir)
    assert int(resumed.step) == int(full.step) == TOTAL_STEPS
    _assert_trees_close(resumed.params, full.params, tol=1e-6, what="params")
    _assert_trees_close(resumed.opt_state, full.opt_state, tol=1e-6, what="optimizer state")
    np.testing.assert_array_equal(np.asarray(resumed.rng), np.asarray(full.rng))
    # The same losses at the same steps, and the same scores at the final eval.
    def losses(d):
        return {r["step"]: r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "train/loss" in r}

    resumed_losses, full_losses = losses(workdir), losses(full_dir)
    assert sorted(full_losses) == [1, 2, 3, 4] and sorted(resumed_losses) == [1, 2, 3, 4]
    np.testing.assert_allclose([resumed_losses[s] for s in range(1, 5)], [full_losses[s] for s in range(1, 5)],
                               rtol=1e-6, atol=1e-6)
    assert summary["best_step"] == full_summary["best_step"] == TOTAL_STEPS
    assert summary["best_scores"] == full_summary["best_scores"]
    assert meta["best"]["step"] == TOTAL_STEPS


# --------------------------------------------------------------------------- 3, 4. evaluation


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_config, image_data):
    """The demo (images on) trained 4 steps on a (2, 4, 1) mesh, evaluated at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("image_run")
    summary = train.train_and_evaluate(image_config, workdir, *image_data)
    return workdir, summary


@pytest.fixture(scope="module")
def image_run_eval(image_run, image_config, image_data):
    """`launch.evaluate`'s call on the training mesh: best checkpoint, predictions written."""
    workdir, _ = image_run
    scores = evaluate_checkpoint(image_config, workdir, image_data[1], which="best",
                                       predictions_dir=workdir / "predictions")
    return scores


def test_demo_run_best_checkpoint_reproduces_the_logged_metrics(image_run, image_run_eval, image_data):
    workdir, summary = image_run
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert summary["total_steps"] == TOTAL_STEPS and summary["best_step"] in (2, 4)
    logged = _logged_evals(workdir)
    assert sorted(logged) == [2, 4]
    best = summary["best_step"]
    assert summary["best_scores"] == logged[best]
    # 'best' strictly improves on earlier evals (§7.4): step 4 wins only if better.
    assert (best == 4) == (logged[4][SELECT] > logged[2][SELECT])

    scores = dict(image_run_eval)
    assert scores.pop("step") == best
    data = {k: scores.pop(k) for k in list(scores) if "/data/" in k}  # what preparation cut, per split
    assert data["dev/data/gold_aspects_truncated"] == summary["data_counts"]["dev"]["gold_aspects_truncated"]
    assert any(k.startswith("test/") for k in scores) and any(k.startswith("dev/") for k in scores)
    assert scores == summary["best_scores"]

    # One JSON line per sentence, in split order.
    _, splits = image_data
    for name, split in splits.items():
        lines = (workdir / "predictions" / f"{name}_predictions.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(split.features.examples) == 20
        records = [json.loads(line) for line in lines]
        assert [r["example_id"] for r in records] == [ex.example_id for ex in split.features.examples]
        for r, ex in zip(records, split.features.examples):
            assert r["words"] == list(ex.words)
            assert len(r["gold"]) == len(ex.aspects)
            assert 0.0 <= r["p_image_adds"] <= 1.0
            for a in r["predicted"]:
                assert 0 <= a["word_start"] <= a["word_end"] < len(ex.words)


def test_checkpoint_from_eight_devices_evaluates_identically_on_one(image_run, image_run_eval, image_config,
                                                                   image_data):
    workdir, _ = image_run
    one = with_changes(image_config, mesh_shape=(1, 1, 1))
    for which in ("best", "latest"):
        scores = evaluate_checkpoint(one, workdir, image_data[1], which=which, devices=jax.devices()[:1])
        if which == "best":
            assert scores == image_run_eval
        else:
            assert scores.pop("step") == TOTAL_STEPS
            scores = {k: v for k, v in scores.items() if "/data/" not in k}  # the data counts, not logged
            assert scores == _logged_evals(workdir)[TOTAL_STEPS]
    state, _ = restore(one, workdir, devices=jax.devices()[:1])
    assert all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree.leaves(state))


def test_threshold_sweep_rescores_one_checkpoint(image_run, image_run_eval, image_config, image_data):
    workdir, _ = image_run
    threshold = image_config.decode.logit_threshold
    rows = sweep_thresholds(image_config, workdir, image_data[1], [threshold, 1e9, -1e9])
    assert [r["threshold"] for r in rows] == [threshold, 1e9, -1e9]
    at_config = {k: v for k, v in rows[0].items() if k != "threshold"}
    scored = {k: v for k, v in image_run_eval.items() if "/data/" not in k}
    assert at_config == scored  # the config's threshold: what evaluate gives
    for split in ("dev", "test"):
        assert rows[1][f"{split}/joint_orig/retrieved"] == 0  # nothing clears 1e9
        # With no threshold every sentence keeps its best spans, up to the cap.
        assert rows[2][f"{split}/joint_orig/retrieved"] > rows[0][f"{split}/joint_orig/retrieved"]


def test_threshold_sweep_leaves_the_evaluator_as_it_was(image_run, image_config, image_data, monkeypatch):
    """Each threshold's decoding is an argument of the evaluation: the sweep
    never sets the evaluator's own decode settings from outside."""
    from jml_jax.experiment import Experiment

    made = []
    make_evaluator = Experiment.make_evaluator

    def recording(self):
        evaluator = make_evaluator(self)
        made.append((evaluator, evaluator.decode_config))
        return evaluator

    monkeypatch.setattr(Experiment, "make_evaluator", recording)
    rows = sweep_thresholds(image_config, image_run[0], {"dev": image_data[1]["dev"]}, [1e9])
    assert rows[0]["dev/joint_orig/retrieved"] == 0  # the swept threshold was used
    (evaluator, before), = made
    assert evaluator.decode_config is before
    assert before.logit_threshold == image_config.decode.logit_threshold


# --------------------------------------------------------------------------- 5. bad checkpoints


def test_evaluating_an_empty_workdir_raises(tmp_path, text_config, text_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        evaluate_checkpoint(text_config, empty, text_data[1])
    assert list(empty.iterdir()) == []  # nothing created in a mistyped folder


def test_resuming_with_another_model_names_the_mismatched_keys(tmp_path, text_config, text_run):
    workdir = tmp_path / "run"
    shutil.copytree(text_run[0], workdir)
    other = with_changes(text_config, **{"model.bert": "minilm-l6"})  # hidden 384 instead of 32, 6 layers
    with pytest.raises(CheckpointStructureError) as err:
        train.train_and_evaluate(other, workdir, train.TrainData(make_iter=never, num_examples=60),
                                 text_run_splits(text_config))
    message = str(err.value)
    assert "does not fit the target state" in message and "wrong shape" in message
    assert "bert/embeddings/word_embeddings/embedding target (436, 384) checkpoint (436, 32)" in message
    assert ("params/bert/embeddings/word_embeddings/embedding", (436, 384), (436, 32)) in err.value.mismatched
    assert "params/bert/encoder/layer_5/attention/self/query/kernel" in err.value.missing
    with Checkpointer(workdir, create=False) as ckpt:
        assert ckpt.all_steps() == [2, 4]  # the run's checkpoints are untouched


def test_a_run_with_only_partial_checkpoints_does_not_restart(tmp_path, text_config, text_run):
    workdir = tmp_path / "run"
    shutil.copytree(text_run[0], workdir)
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            (step_dir / COMMIT_FILE).unlink()  # as if every save had been cut short
    with pytest.raises(CheckpointError, match="only incomplete checkpoints"):
        train.train_and_evaluate(text_config, workdir, train.TrainData(make_iter=never, num_examples=60),
                                 text_run_splits(text_config))
    with pytest.raises(CheckpointError, match="incomplete"):
        evaluate_checkpoint(text_config, workdir, {}, which=TOTAL_STEPS)


# --------------------------------------------------------------------------- 6. non-finite


def _poisoned(data: train.TrainData, at_step: int) -> train.TrainData:
    """Step ``at_step`` gets token ids past the vocabulary: NaN embeddings, NaN loss."""

    def make_iter(start):
        inner = data.make_iter(start)

        def gen():
            step = start
            try:
                for batch in inner:
                    step += 1
                    if step == at_step:
                        batch = dict(batch, input_ids=np.full_like(batch["input_ids"], 10**6))
                    yield batch
            finally:
                inner.close()

        return gen()

    return train.TrainData(make_iter=make_iter, num_examples=data.num_examples)


def _assert_saved_states_finite(config, workdir):
    with Checkpointer(workdir, create=False) as ckpt:
        steps = ckpt.all_steps()
    for step in steps:
        state, _ = restore(config, workdir, which=step)
        for key, value in flat({"params": state.params, "batch_stats": state.batch_stats}).items():
            assert np.isfinite(value).all(), f"step {step}: {key} is not finite"
    return steps


def test_nan_loss_stops_the_run_and_saves_nothing_from_it(tmp_path, text_config, text_data):
    train_data, splits = text_data
    workdir = tmp_path / "run"
    with pytest.raises(train.NonFiniteLossError, match="at step 3"):
        train.train_and_evaluate(text_config, workdir, _poisoned(train_data, at_step=3), splits)
    assert _assert_saved_states_finite(text_config, workdir) == [2]
    assert not (workdir / "summary.json").exists()


def _damage(state):
    """The state as flipped bytes in a data file leave it: NaN in one parameter."""
    params = jax.tree.map(lambda x: x, state.params)
    emb = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    params["bert"]["embeddings"]["word_embeddings"]["embedding"] = emb.at[0, 0].set(np.nan)
    return state.replace(params=params)


def test_a_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, text_config, text_data, text_run, caplog):
    full_dir, full_summary = text_run
    workdir = tmp_path / "run"
    shutil.copytree(full_dir, workdir)
    state, meta = restore(text_config, workdir, which=4)
    shutil.rmtree(workdir / "checkpoints" / "4")
    with Checkpointer(workdir) as ckpt:
        ckpt.save(4, _damage(state), metadata=meta)
    with pytest.raises(CheckpointError, match="non-finite parameters"):
        evaluate_checkpoint(text_config, workdir, text_data[1], which=4)

    summary = train.train_and_evaluate(text_config, workdir, *text_data)
    assert "resuming from step 2" in caplog.text and "not finite" in caplog.text
    assert (workdir / "damaged_checkpoints" / "4").is_dir()
    resumed, _ = restore(text_config, workdir)
    full, _ = restore(text_config, full_dir)
    _assert_trees_close(resumed.params, full.params, tol=1e-6, what="params after the fallback")
    assert summary["best_scores"] == full_summary["best_scores"]


def test_a_kill_during_the_first_save_restarts_afresh(tmp_path, text_config, text_data, text_run):
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)
    summary = train.train_and_evaluate(text_config, workdir, *text_data)
    assert summary["best_scores"] == text_run[1]["best_scores"]


def test_bad_selection_and_batch_settings_fail_before_training(tmp_path, text_config, text_data):
    no_training = train.TrainData(make_iter=never, num_examples=60)
    cases = [
        ({"select_metric": "joint_orig/f"}, r"select_metric='joint_orig/f' is not a metric"),
        ({"select_split": "tets"}, r"select_split='tets' is not among the eval splits"),
        ({"eval_batch_size": 6}, r"eval_batch_size=6 does not divide over the mesh's 8 batch devices"),
        ({"optimizer.grad_accum_steps": 3}, r"optimizer.grad_accum_steps=3 must be >= 1 and divide batch_size=8"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            train.train_and_evaluate(with_changes(text_config, **changes), tmp_path / "run", no_training, text_data[1])
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_data_counts_are_saved_with_the_run(text_run):
    workdir, summary = text_run
    counts = json.loads((workdir / "data_counts.json").read_text())
    assert set(counts) == {"train", "dev", "test"} and counts == summary["data_counts"]
    for split in counts.values():
        assert {"image_fallbacks", "gold_aspects_truncated", "sentences_kept_without_gold_targets"} <= set(split)


def test_nan_learning_rate_never_reaches_a_checkpoint(tmp_path, text_config, text_data):
    # Finite loss and gradients but NaN updates: the parameters go bad first.
    config = with_changes(text_config, **{"optimizer.learning_rate": math.nan, "checkpoint_every_steps": 1})
    workdir = tmp_path / "run"
    with pytest.raises(train.NonFiniteLossError, match="step 1"):
        train.train_and_evaluate(config, workdir, *text_data)
    assert _assert_saved_states_finite(config, workdir) == []
