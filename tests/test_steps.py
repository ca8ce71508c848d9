"""The jitted train/eval steps give the same numbers on every mesh shape."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from helpers import toy_model
from jml_jax import losses
from jml_jax.mesh import make_mesh
from jml_jax.sharding import batch_sharding, global_batch_from_process_local
from jml_jax.steps import check_groups_fit_mesh, make_eval_step, make_train_step
from jml_jax.train_state import create_sharded_state

BATCH = 16
SEED = 3


def _setup(mesh, *, batch_norm=True, accum=1, lr=0.05):
    model = toy_model.ToyMLP(batch_norm=batch_norm)
    tx = toy_model.make_tx(lr)
    state, shardings = create_sharded_state(
        toy_model.init_fn(model), tx, mesh, None, jax.random.PRNGKey(SEED)
    )
    step = make_train_step(
        toy_model.loss_fn(model), tx, shardings, batch_sharding(mesh),
        grad_accum_steps=accum,
    )
    return model, state, shardings, step


class Run:
    """Three steps on one mesh; the jitted step is kept for further tests."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.model, state, self.shardings, self.step = _setup(mesh)
        self.initial = jax.device_get(state)
        self.losses, self.snapshots = [], {}
        for i, batch in enumerate(toy_model.make_batches(3, BATCH), start=1):
            state, metrics = self.step(state, self.batch(batch))
            assert bool(metrics["is_finite"])
            self.losses.append(float(metrics["loss"]))
            self.snapshots[i] = jax.device_get((state.params, state.batch_stats))
        self.final = state

    def batch(self, batch):
        return global_batch_from_process_local(batch, self.mesh)

    def fresh_state(self):
        """The initial state again, placed in its shardings (steps donate their input)."""
        return jax.device_put(self.initial, self.shardings)


_runs = {}


def run_on(shape):
    if shape not in _runs:
        devices = jax.devices()[:1] if shape == (1, 1, 1) else None
        _runs[shape] = Run(make_mesh(shape, devices=devices))
    return _runs[shape]


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_one_and_three_steps_match_a_single_device(shape):
    ref, run = run_on((1, 1, 1)), run_on(shape)
    np.testing.assert_allclose(run.losses, ref.losses, rtol=1e-5, atol=1e-5)
    for n in (1, 3):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
            run.snapshots[n], ref.snapshots[n],
        )


def test_training_reduces_loss():
    run = run_on((1, 1, 1))
    state = run.fresh_state()
    batch = run.batch(toy_model.make_batches(1, BATCH)[0])
    losses = []
    for _ in range(20):
        state, metrics = run.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 20


def test_state_keeps_its_shardings_after_a_step():
    run = run_on((2, 2, 2))
    state = run.final
    assert int(state.step) == 3
    assert state.params["up"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert state.params["down"]["kernel"].sharding.spec == P("tensor", "fsdp")
    # Adam moments follow their parameters; the frozen Dense has no moments.
    adam_state = state.opt_state.inner_states["train"].inner_state[0]
    assert adam_state.mu["up"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert adam_state.nu["down"]["kernel"].sharding.spec == P("tensor", "fsdp")
    assert not hasattr(adam_state.mu["frozen"]["kernel"], "sharding")
    jax.tree.map(
        lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(x.sharding)),
        state, run.shardings,
    )


def test_frozen_params_do_not_move():
    run = run_on((2, 2, 2))
    np.testing.assert_array_equal(
        np.asarray(run.final.params["frozen"]["kernel"]), run.initial.params["frozen"]["kernel"]
    )
    assert not np.allclose(np.asarray(run.final.params["up"]["kernel"]), run.initial.params["up"]["kernel"])


def grouped(loss_fn):
    """A toy loss that takes ``groups``: without BatchNorm, the per-example-mean
    loss of equal groups is the mean over all rows, so groups change nothing."""

    def fn(params, batch_stats, batch, rng, train, *, groups=1):
        return loss_fn(params, batch_stats, batch, rng, train)

    return fn


@pytest.mark.parametrize("accumulation", ["one_pass", "scan"])
def test_grad_accumulation_matches_full_batch(accumulation):
    """4 micro-batches of 4 == one batch of 16 for a per-example-mean loss."""
    mesh = make_mesh((2, 2, 2))
    model = toy_model.ToyMLP(batch_norm=False)
    tx = optax.sgd(0.1)  # the parameter change is proportional to the gradient
    state, shardings = create_sharded_state(
        toy_model.init_fn(model), tx, mesh, None, jax.random.PRNGKey(SEED)
    )
    initial = jax.device_get(state)
    batch = global_batch_from_process_local(toy_model.make_batches(1, BATCH)[0], mesh)
    results = {}
    for accum in (1, 4):
        step = make_train_step(
            grouped(toy_model.loss_fn(model)), tx, shardings, batch_sharding(mesh),
            grad_accum_steps=accum, accumulation=accumulation,
        )
        new_state, metrics = step(jax.device_put(initial, shardings), batch)
        results[accum] = (jax.device_get(new_state.params), jax.device_get(metrics))
    (p1, m1), (p4, m4) = results[1], results[4]
    for key in ("loss", "grad_norm", "mse"):
        np.testing.assert_allclose(m4[key], m1[key], rtol=1e-6, atol=1e-6)
    assert int(m4["examples"]) == int(m1["examples"]) == BATCH  # integer aux metrics add up
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), p4, p1)


@pytest.mark.parametrize("accumulation", ["one_pass", "scan"])
def test_grad_accumulation_normalises_each_mini_batch_like_the_original(accumulation):
    """8 mini-batches of 4 sentences (§5.3, §5.4): the mean of per-mini-batch JML losses.

    Each mini-batch loss is normalised on its own mini-batch, so the update is
    not that of one batch of 32. One pass: mini-batch i is the contiguous rows
    4i..4i+3, the loss is called once with groups=8, randomness
    fold_in(fold_in(state.rng, step), 0). Scan: micro-batch i holds rows i,
    i + 8, ... (the original's contiguous mini-batch i is laid out that way
    here) and draws from fold_in(fold_in(state.rng, step), i).
    """
    rng = np.random.default_rng(5)
    accum, micro, length, spans = 8, 4, 12, 3
    n = accum * micro
    batch = {
        "start_positions": (rng.random((n, length)) < 0.15).astype(np.int32),
        "end_positions": (rng.random((n, length)) < 0.15).astype(np.int32),
        "labels": rng.integers(1, 4, (n, spans)).astype(np.int32),
        "span_mask": (rng.random((n, spans)) < 0.5).astype(np.int32),
        "features": rng.normal(size=(n, length)).astype(np.float32),
    }
    batch["start_positions"][:, 1] = 1
    batch["end_positions"][:, 2] = 1

    def jml(params, b, groups=1):
        start = b["features"] * params["a"]
        end = b["features"] * params["a"] ** 2
        pol = b["features"][:, :spans, None] * params["c"]
        return losses.jml_loss(start, end, b["start_positions"], b["end_positions"],
                               pol, b["labels"], b["span_mask"], groups=groups)

    def loss_fn(params, batch_stats, b, key, train, *, groups=1):
        loss, aux = jml(params, b, groups)
        aux = {k: v for k, v in aux.items() if k != "loss"}  # the step reports the loss itself
        return loss, ({**aux, "noise": jax.random.uniform(key)}, batch_stats)

    params = {"a": jnp.float32(0.7), "c": jnp.linspace(-1, 1, 4).astype(jnp.float32)}
    tx = optax.sgd(1.0)  # new params = params - gradient
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state, shardings = create_sharded_state(lambda key: {"params": params}, tx, mesh, None,
                                            jax.random.PRNGKey(SEED))
    step = make_train_step(loss_fn, tx, shardings, batch_sharding(mesh), grad_accum_steps=accum,
                           accumulation=accumulation)
    minis = [{k: v[micro * i:micro * (i + 1)] for k, v in batch.items()} for i in range(accum)]
    laid_out = batch if accumulation == "one_pass" else {
        k: np.stack([mb[k] for mb in minis], axis=1).reshape((n,) + v.shape[1:])
        for k, v in batch.items()}
    step_rng = jax.random.fold_in(state.rng, 0)
    new_state, metrics = step(state, global_batch_from_process_local(laid_out, mesh))

    original = lambda p: sum(jml(p, mb)[0] / accum for mb in minis)  # loss / 8, summed
    want_loss, want_grads = jax.jit(jax.value_and_grad(original))(params)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["masc_loss"] + metrics["mate_loss"], want_loss, rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(params[k] - new_state.params[k], want_grads[k], rtol=1e-5, atol=1e-7)
    draws = range(accum) if accumulation == "scan" else range(1)
    want_noise = np.mean([jax.random.uniform(jax.random.fold_in(step_rng, i)) for i in draws])
    np.testing.assert_allclose(metrics["noise"], want_noise, rtol=1e-6)
    # Not the loss of one batch of 32: per-mini-batch normalisation matters.
    assert abs(float(jml(params, batch)[0]) - float(want_loss)) > 1e-3


@pytest.mark.parametrize("accumulation", ["one_pass", "scan"])
def test_grad_accumulation_rejects_indivisible_batch(accumulation):
    run = run_on((1, 1, 1))
    step = make_train_step(
        grouped(toy_model.loss_fn(run.model)), toy_model.make_tx(), run.shardings,
        batch_sharding(run.mesh), grad_accum_steps=3, accumulation=accumulation,
    )
    with pytest.raises(ValueError, match="micro-batches"):
        step(run.fresh_state(), run.batch(toy_model.make_batches(1, BATCH)[0]))


def test_one_pass_needs_a_loss_function_that_takes_groups():
    run = run_on((1, 1, 1))
    with pytest.raises(ValueError, match="no `groups` keyword.*accumulation='scan'"):
        make_train_step(toy_model.loss_fn(run.model), toy_model.make_tx(), run.shardings,
                        batch_sharding(run.mesh), grad_accum_steps=2)
    with pytest.raises(ValueError, match="unknown accumulation"):
        make_train_step(grouped(toy_model.loss_fn(run.model)), toy_model.make_tx(), run.shardings,
                        batch_sharding(run.mesh), grad_accum_steps=2, accumulation="sequential")
    # Without accumulation, or in scan mode, such a loss function is a groups=1 one.
    for accum, accumulation in ((1, "one_pass"), (2, "scan")):
        make_train_step(toy_model.loss_fn(run.model), toy_model.make_tx(), run.shardings,
                        batch_sharding(run.mesh), grad_accum_steps=accum, accumulation=accumulation)


@pytest.mark.parametrize("shape, groups, ok", [
    ((2, 2, 2), 8, True),    # batch axes of 4 devices: two whole groups each
    ((8, 1, 1), 8, True),    # one group each
    ((2, 4, 1), 4, False),   # 8 devices, 4 groups
    ((2, 2, 2), 6, False),   # 4 devices do not divide 6 groups
])
def test_one_pass_groups_must_be_whole_on_every_device(shape, groups, ok):
    mesh = make_mesh(shape)
    if ok:
        check_groups_fit_mesh(groups, batch_sharding(mesh), batch_size=4 * groups)
        return
    with pytest.raises(ValueError) as err:
        check_groups_fit_mesh(groups, batch_sharding(mesh), batch_size=4 * groups)
    msg = str(err.value)
    assert f"grad_accum_steps={groups}" in msg and f"batch_size={4 * groups}" in msg
    assert str(dict(mesh.shape)) in msg
    assert "larger effective batch" in msg and "smaller groups" in msg


def test_one_pass_on_several_groups_per_device_matches_one_device():
    """BatchNorm per group of 4 rows, 4 groups over the (2, 2, 2) mesh's 4
    batch devices and over 1 device: the same loss, update and statistics."""
    model = toy_model.ToyMLP()

    def loss_fn(params, batch_stats, batch, rng, train, *, groups=1):
        # The toy's BatchNorm normalises a group when applied to it alone.
        m = batch["x"].shape[0] // groups
        x = batch["x"].reshape(groups, m, -1)
        y = batch["y"].reshape(groups, m, -1)
        stats, total = batch_stats, 0.0
        for g in range(groups):
            pred, upd = model.apply({"params": params, "batch_stats": stats}, x[g], train=True,
                                    mutable=["batch_stats"])
            stats = upd["batch_stats"]
            total = total + jnp.mean((pred - y[g]) ** 2) / groups
        return total, ({}, stats)

    results = {}
    for shape in ((1, 1, 1), (2, 2, 2)):
        mesh = make_mesh(shape, devices=jax.devices()[:1] if shape == (1, 1, 1) else None)
        tx = toy_model.make_tx()
        state, shardings = create_sharded_state(
            toy_model.init_fn(model), tx, mesh, None, jax.random.PRNGKey(SEED))
        step = make_train_step(loss_fn, tx, shardings, batch_sharding(mesh), grad_accum_steps=4)
        batch = global_batch_from_process_local(toy_model.make_batches(1, BATCH)[0], mesh)
        new_state, metrics = step(state, batch)
        results[shape] = jax.device_get((metrics["loss"], new_state.params, new_state.batch_stats))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 results[(2, 2, 2)], results[(1, 1, 1)])


def test_non_finite_loss_skips_the_update():
    run = run_on((2, 2, 2))
    batch = toy_model.make_batches(1, BATCH)[0]
    batch["x"][3, 2] = np.nan
    new_state, metrics = run.step(run.fresh_state(), run.batch(batch))
    assert not bool(metrics["is_finite"])
    assert not np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state), run.initial)
    assert int(new_state.step) == 0


def test_randomness_is_folded_with_the_step():
    run = run_on((1, 1, 1))
    batch = run.batch(toy_model.make_batches(1, BATCH)[0])
    state, noise = run.fresh_state(), []
    for _ in range(2):
        state, metrics = run.step(state, batch)
        noise.append(float(metrics["noise"]))
    assert noise[0] != noise[1]
    # The same state at the same step draws the same numbers (a resumed run
    # repeats an uninterrupted one).
    _, metrics = run.step(run.fresh_state(), batch)
    assert float(metrics["noise"]) == noise[0]


@pytest.mark.parametrize("outputs", ["replicated", "batch"])
def test_eval_step_outputs(outputs):
    run = run_on((2, 2, 2))
    eval_step = make_eval_step(
        toy_model.forward_fn(run.model), run.shardings, batch_sharding(run.mesh), outputs=outputs
    )
    batch = toy_model.make_batches(1, BATCH)[0]
    out = eval_step(run.final, run.batch(batch))
    spec = P() if outputs == "replicated" else P(("data", "fsdp"))
    assert out["pred"].sharding.spec == spec
    host_state = jax.device_get(run.final)
    expected = run.model.apply(
        {"params": host_state.params, "batch_stats": host_state.batch_stats},
        jnp.asarray(batch["x"]), train=False,
    )
    np.testing.assert_allclose(np.asarray(out["pred"]), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # The state was not donated: it can still be read.
    assert np.isfinite(np.asarray(run.final.params["up"]["kernel"])).all()


def test_activation_constraints_follow_the_rules():
    """With rules, the model's `constrain` calls pin activations; without, they vanish."""
    run = run_on((2, 2, 2))
    batch = run.batch(toy_model.make_batches(1, BATCH)[0])
    texts = {}
    for name, rules in (("off", None), ("on", (("batch", ("data", "fsdp")), ("mlp", "tensor")))):
        step = make_train_step(
            toy_model.loss_fn(run.model), toy_model.make_tx(), run.shardings,
            batch_sharding(run.mesh), rules=rules,
        )
        texts[name] = step.lower(run.final, batch).as_text()
    # The [batch, mlp] activation after the ReLU (Shardy's notation).
    pinned = '[{"data", "fsdp"}, {"tensor"}]'
    assert pinned in texts["on"]
    assert pinned not in texts["off"]
