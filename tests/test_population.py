"""Many runs in one program (jml_jax/population.py, jml_jax/runs.py).

Fast: the config's runs fields and their errors, and the per-run optimizer
values. Long tier: the compiled step of 8 runs on 8 devices (one run per
device at its full batch, no collective), and whole populations of the shrunk
demo, which equal the same runs trained alone (1 and 8 devices, R = 2 and 3),
resume bit-identically after a crash, stop a non-finite run while the
others go on, and leave run folders `launch.evaluate` reads as any run.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers.runs import (  # noqa: F401  (fixtures)
    TOTAL_STEPS,
    acting_at,
    compilation_cache_dir,
    flat,
    small_demo_config,
    with_changes,
)
from jml_jax import optim, population, train
from jml_jax.checkpointing import BestModel
from jml_jax.experiment import build_experiment
from jml_jax.runs import run_config, runs_axis, runs_spec
from jml_jax.scoring import evaluate_checkpoint
from jml_jax.summary import read_jsonl
from launch import common

SEEDS = (1, 2, 3)


def _population(config, seeds, **per_run):
    return with_changes(config, **{"runs.seeds": tuple(seeds)}, **{f"runs.{k}": v for k, v in per_run.items()})


@pytest.fixture(scope="module")
def config():
    # Evaluations at steps 2 and 4: the best step is chosen between two.
    return with_changes(small_demo_config(images=False), eval_per_epoch=3)


# ---------------------------------------------------------------------------
# The config's runs, fast.


def test_a_config_without_seeds_is_a_single_run(config):
    assert runs_spec(config) is None and not population.is_population(config)


def test_run_configs_carry_each_runs_own_values(config):
    c = _population(config, (5, 7), learning_rate=(1e-5, 3e-5), decode_threshold=(6.0, 9.0))
    spec = runs_spec(c)
    assert spec.names == ["seed_5", "seed_7"]
    second = run_config(c, spec, 1)
    assert second.seed == 7 and second.optimizer.learning_rate == 3e-5 and second.decode.logit_threshold == 9.0
    assert second.optimizer.weight_decay == config.optimizer.weight_decay  # not given per run
    assert runs_spec(second) is None  # an ordinary run's config


@pytest.mark.parametrize("changes,message", [
    ({"runs.seeds": (1, 2), "runs.batch_size": (8, 16)}, r"runs\.batch_size: runs of one population share"),
    ({"runs.seeds": (1, 2), "runs.model": (1, 2)}, r"runs\.model: runs of one population share"),
    ({"runs.seeds": (1, 2, 1)}, r"runs\.seeds=\(1, 2, 1\): seed\(s\) \[1\] appear twice"),
    ({"runs.seeds": (1, 2), "runs.learning_rate": (1e-5,)}, r"runs\.learning_rate has 1 values for 2 seeds"),
    ({"runs.learning_rate": (1e-5, 2e-5)}, r"runs\.learning_rate is set but runs\.seeds is empty"),
    ({"runs.seeds": (1, 2), "runs.weight_decay": (0.0, float("nan"))}, r"runs\.weight_decay=.*not a finite"),
])
def test_bad_runs_fields_fail_at_start_up_naming_the_field(config, changes, message):
    c = config.copy_and_resolve_references()
    c.runs.unlock()
    for dotted, value in changes.items():
        c.runs[dotted.split(".", 1)[1]] = value
    with pytest.raises(ValueError, match=message):
        runs_spec(c)


def test_the_runs_axis_must_divide_the_devices_and_the_runs(config):
    with pytest.raises(ValueError, match=r"runs\.axis=3 does not divide the 8 devices"):
        population.build_population(with_changes(_population(config, SEEDS), **{"runs.axis": 3}))
    with pytest.raises(ValueError, match=r"runs\.axis=2 does not divide the 3 runs"):
        runs_axis(runs_spec(with_changes(_population(config, SEEDS), **{"runs.axis": 2})), 8)
    assert runs_axis(runs_spec(_population(config, SEEDS)), 8) == 1  # auto: gcd
    assert runs_axis(runs_spec(_population(config, range(16))), 8) == 8


def test_launch_checks_the_runs_before_reading_data(config):
    with pytest.raises(ValueError, match=r"runs\.axis=3 does not divide the 8 devices"):
        common.check_inputs(with_changes(_population(config, SEEDS), **{"runs.axis": 3}))


def test_an_optimizer_with_traced_per_run_values_updates_as_the_config_does():
    """Each run's BERTAdam (its learning rate, warmup and weight decay as traced
    scalars inside vmap) makes the updates of a config with its floats (to
    1 ulp: XLA folds the constant schedule's divisions in another order)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)) * 3.0, params) for i in range(4)]
    runs = [dict(learning_rate=2e-5, warmup_proportion=0.1, weight_decay=0.01),
            dict(learning_rate=5e-3, warmup_proportion=0.35, weight_decay=0.0)]
    t_total = 7
    base = {"name": "bert_adam", "learning_rate": 1.0}

    def alone(values):
        @jax.jit
        def run():
            tx = optim.make_optimizer({**base, **values}, params, t_total)
            p, s = params, tx.init(params)
            for g in grads:
                u, s = tx.update(g, s, p)
                p = optax.apply_updates(p, u)
            return p

        return run()

    hyper = {k: jnp.asarray([r[k] for r in runs], jnp.float32) for k in runs[0]}
    hyper["warmup_switch"] = jnp.asarray([optim.first_step_past_warmup(t_total, r["warmup_proportion"])
                                          for r in runs], jnp.int32)

    @jax.jit
    @jax.vmap
    def together(h):
        tx = optim.make_optimizer(base, params, t_total, overrides=h)
        p, s = params, tx.init(params)
        for g in grads:
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
        return p

    mapped = together(hyper)
    for r, values in enumerate(runs):
        for key, expected in alone(values).items():
            np.testing.assert_allclose(np.asarray(mapped[key][r]), np.asarray(expected), rtol=3e-7, atol=0,
                                       err_msg=f"run {r} {key}")


@pytest.mark.long  # a compile of 8 runs (about 35 s here)
def test_eight_runs_on_eight_devices_hold_one_run_each_with_no_collective(config):
    pop = population.build_population(_population(config, range(1, 9)), num_train_steps=TOTAL_STEPS)
    assert dict(pop.mesh.shape) == {"runs": 8, "data": 1, "fsdp": 1, "tensor": 1}
    inputs = pop.inputs()
    compiled = pop.make_train_step().lower(pop.abstract_state, inputs).compile()
    hlo = compiled.as_text()
    collectives = sorted(set(re.findall(r"\b(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)"
                                        r"(?:-start)?\(", hlo)))
    assert collectives == [], f"collectives across runs: {collectives}"
    rows = config.batch_size
    assert inputs["input_ids"].sharding.shard_shape(inputs["input_ids"].shape)[:2] == (1, rows)
    assert f"s32[1,{rows},{config.data.max_seq_length}]" in hlo  # each device: one run's whole batch


# ---------------------------------------------------------------------------
# Whole populations against the same runs alone: the long tier.


def _datas(config, seeds):
    return [common.train_data(with_changes(config, seed=s)) for s in seeds]


@pytest.fixture(scope="module")
def splits(config):
    return common.eval_splits(config, ("dev", "test"))


@pytest.fixture(scope="module")
def alone(tmp_path_factory, config, splits):
    """Each seed trained as a single run on the 8 devices."""
    out = {}
    for seed in SEEDS:
        c = with_changes(config, seed=seed)
        workdir = tmp_path_factory.mktemp(f"alone_{seed}")
        out[seed] = (workdir, train.train_and_evaluate(c, workdir, common.train_data(c), splits))
    return out


def _best(config, run_dir):
    exp = build_experiment(config, num_train_steps=TOTAL_STEPS)
    variables, meta = BestModel(run_dir, create=False).restore_best(exp.abstract_variables)
    return variables, meta["step"]


def _assert_same_run(config, pop_dir, seed, alone_dir, alone_summary, *, rtol=2e-5, atol=1e-6):
    run_dir = pop_dir / "runs" / f"seed_{seed}"
    got, want = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(alone_dir / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=f"seed {seed} step {a['step']} {key}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_step"] == alone_summary["best_step"] and summary["final_step"] == TOTAL_STEPS
    run_cfg = with_changes(config, seed=seed)
    assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
    assert (run_dir / "data_counts.json").is_file() and list((run_dir / "tensorboard").iterdir())
    (got_vars, got_step), (want_vars, want_step) = _best(run_cfg, run_dir), _best(run_cfg, alone_dir)
    assert got_step == want_step
    a, b = flat(got_vars), flat(want_vars)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=f"seed {seed} best {key}")


@pytest.mark.long
@pytest.mark.parametrize("seeds,devices", [((1, 2), 8), ((1, 2, 3), 8), ((1, 2, 3), 1)],
                         ids=["R2-8dev", "R3-8dev", "R3-1dev"])
def test_a_population_equals_its_runs_trained_alone(tmp_path, config, splits, alone, seeds, devices):
    pop_cfg = _population(config, seeds)
    summary = population.train_population(pop_cfg, tmp_path, _datas(config, seeds), splits,
                                          devices=jax.devices()[:devices])
    assert list(summary["runs"]) == [f"seed_{s}" for s in seeds]
    for seed in seeds:
        _assert_same_run(config, tmp_path, seed, *alone[seed])


@pytest.mark.long
def test_a_run_folder_is_an_ordinary_run_for_launch_evaluate(tmp_path, config, splits, alone):
    seeds = (1, 2)
    population.train_population(_population(config, seeds, decode_threshold=(8.0, 4.0)), tmp_path,
                                _datas(config, seeds), splits)
    for seed, threshold in zip(seeds, (8.0, 4.0)):
        run_dir = tmp_path / "runs" / f"seed_{seed}"
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["decode"]["logit_threshold"] == threshold and saved["runs"]["seeds"] == []
        run_cfg = with_changes(config, seed=seed, **{"decode.logit_threshold": threshold})
        scores = evaluate_checkpoint(run_cfg, run_dir, splits)
        best = json.loads((run_dir / "summary.json").read_text())["best_scores"]
        assert {k: scores[k] for k in best} == best


@pytest.mark.long
def test_a_crashed_population_resumes_bit_identically(tmp_path, config, splits):
    seeds = (1, 2)
    pop_cfg = _population(config, seeds)
    full = population.train_population(pop_cfg, tmp_path / "full", _datas(config, seeds), splits)

    def lost_host():
        raise RuntimeError("host lost")

    datas = _datas(config, seeds)
    datas[1] = acting_at(datas[1], 3, lost_host)
    with pytest.raises(RuntimeError, match="host lost"):
        population.train_population(pop_cfg, tmp_path / "cut", datas, splits)
    resumed = population.train_population(pop_cfg, tmp_path / "cut", _datas(config, seeds), splits)
    for name in full["runs"]:
        a, b = ([{k: v for k, v in r.items() if k != "wall_time"} for r in read_jsonl(tmp_path / w / "runs" / name / "metrics.jsonl")]
                for w in ("full", "cut"))
        assert a == b, name
        assert resumed["runs"][name]["best_scores"] == full["runs"][name]["best_scores"]
    pop = population.build_population(pop_cfg, num_train_steps=TOTAL_STEPS)
    from jml_jax.checkpointing import Checkpointer

    states = []
    for w in ("full", "cut"):
        with Checkpointer(tmp_path / w, create=False) as ckpt:
            states.append(ckpt.restore("latest", pop.abstract_state)[0])
    a, b = flat(states[0]), flat(states[1])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.long
@pytest.mark.parametrize("eval_per_epoch,step,reason", [
    (3, 2, r"evaluation at step 2 gave NaN logits"),  # huge but finite weights, evaluated at step 2
    (1, 3, r"non-finite loss or gradient at step 3; the update was not applied"),  # first evaluation at 4
], ids=["at-an-evaluation", "at-a-step"])
def test_a_run_that_goes_non_finite_stops_and_the_others_go_on(tmp_path, config, splits, alone, eval_per_epoch,
                                                               step, reason):
    seeds = (1, 2)
    lr = config.optimizer.learning_rate
    pop_cfg = with_changes(_population(config, seeds, learning_rate=(lr, 1e38)), eval_per_epoch=eval_per_epoch)
    summary = population.train_population(pop_cfg, tmp_path, _datas(config, seeds), splits)
    stopped = summary["runs"]["seed_2"]["stopped"]
    assert stopped["step"] == step and re.search(reason, stopped["reason"]), stopped
    assert json.loads((tmp_path / "runs" / "seed_2" / "summary.json").read_text())["stopped"] == stopped
    assert [r["step"] for r in read_jsonl(tmp_path / "runs" / "seed_2" / "metrics.jsonl")
            if "train/loss" in r] == list(range(1, step + (eval_per_epoch == 3)))
    assert "stopped" not in summary["runs"]["seed_1"]
    if eval_per_epoch == 3:
        _assert_same_run(config, tmp_path, 1, *alone[1])
    else:  # the run going on is the one alone, seen at its step metrics
        assert summary["runs"]["seed_1"]["final_step"] == TOTAL_STEPS


def test_evaluating_a_population_folder_names_its_runs(tmp_path, config):
    from jml_jax.checkpointing import CheckpointError

    (tmp_path / "runs" / "seed_1").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"holds a population.*--workdir=.*runs/seed_1"):
        evaluate_checkpoint(config, tmp_path, {})
