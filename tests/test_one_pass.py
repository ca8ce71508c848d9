"""One pass per effective batch equals the sequential accumulation (§5.3, §5.4, §10.8).

The faithful effective batch is G mini-batches of m sentences, each with its
own loss normalisation and its own BatchNorm batch statistics in the main
ResNet, the running statistics updated mini-batch after mini-batch. One-pass
accumulation runs the G groups in one forward/backward with ``groups=G``; these
tests hold `jml_jax.steps.make_train_step`'s one-pass mode to its sequential
``lax.scan`` mode (one micro-batch per group) on the tiny JML model, dropout
off so both are deterministic: loss, gradients and running statistics, on one
device and on 8 fake devices with whole groups per device.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jml_jax import contract
from jml_jax.mesh import make_mesh
from jml_jax.models.bert import BertConfig
from jml_jax.models import spans as spans_lib
from jml_jax.models.jml import JMLConfig, JMLModel
from jml_jax.sharding import batch_sharding, global_batch_from_process_local
from jml_jax.steps import make_train_step
from jml_jax.tasks import joint_loss
from jml_jax.train_state import abstract_sharded_state, create_sharded_state

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


RTOL, ATOL = 1e-5, 1e-6  # float32, fixed
LENGTH, SPANS, IMAGE = 24, 5, 64
SEED = 7


def tiny_config(**overrides) -> JMLConfig:
    """The demo config's model (tiny BERT, ResNet-50 (1,1,1,1) of width 8), no dropout."""
    bert = BertConfig(100, 32, 2, 2, 64, 64, 2, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    kwargs = dict(bert=bert, resnet_depth=50, resnet_blocks=(1, 1, 1, 1), resnet_width=8,
                  num_heads=2, dropout_rate=0.0)
    kwargs.update(overrides)
    return JMLConfig(**kwargs)


def make_loss_fn(model: JMLModel, jml_config: JMLConfig):
    """The trainer's joint loss (`tasks.joint_loss`) for ``model``."""
    return functools.partial(joint_loss, model, jml_config)


def make_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random training rows: the shared synthetic batch of the joint task's
    inputs (jml_jax/contract.py). The last row of every 4 has a span running
    past its row's last token, which 'batch' span packing reads from the next
    row (so packing across a group boundary would show)."""
    inputs = contract.joint_inputs(n, length=LENGTH, spans=SPANS, train=True, image_size=IMAGE)
    return contract.synthetic_batch(inputs, seed=seed, aspects=3, overrun_every=4)


def init_fn(model: JMLModel):
    ids = jnp.zeros((1, LENGTH), jnp.int32)
    spans = jnp.zeros((1, SPANS), jnp.int32)
    image = jnp.zeros((1, IMAGE, IMAGE, 3), jnp.uint8)
    return lambda rng: model.init(rng, ids, ids, spans, spans, image)


def perturbed_stats(batch_stats, seed: int = 1):
    """Running statistics away from (0, 1), so that the m**G r_0 term counts."""
    leaves, treedef = jax.tree.flatten(batch_stats)
    rs = np.random.RandomState(seed)
    new = [jnp.asarray(rs.uniform(0.5, 1.5, x.shape), jnp.float32) for x in leaves]
    return jax.tree.unflatten(treedef, new)


def close(a, b, what):
    jax.tree_util.tree_map_with_path(
        lambda path, x, y: np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL,
            err_msg=f"{what}{jax.tree_util.keystr(path)}"),
        a, b,
    )


def recording_tx() -> optax.GradientTransformation:
    """Leaves the parameters alone and keeps the step's gradients as its state."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def build_step(model, config, mesh, accumulation, groups, *, init=True, **kwargs):
    """(state with running statistics away from (0, 1), jitted step); the state
    is None without ``init`` (only its shardings are computed)."""
    tx = recording_tx()
    if not init:
        _, shardings = abstract_sharded_state(init_fn(model), tx, mesh, None)
        state = None
    else:
        state, shardings = create_sharded_state(init_fn(model), tx, mesh, None, jax.random.PRNGKey(SEED))
        state = state.replace(batch_stats=jax.device_put(
            perturbed_stats(state.batch_stats), shardings.batch_stats))
    step = make_train_step(make_loss_fn(model, config), tx, shardings, batch_sharding(mesh),
                           grad_accum_steps=groups, accumulation=accumulation, **kwargs)
    return state, step


def strided(batch, groups):
    """The layout whose scan micro-batch a (rows a, a + G, ...) is contiguous group a."""
    def one(x):
        m = x.shape[0] // groups
        return x.reshape((groups, m) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
    return {k: one(v) for k, v in batch.items()}


GROUPS, MICRO = 8, 4  # the faithful effective batch: 8 mini-batches of 4 (§5.4)
CONFIGS = {
    # the original: 'batch' span packing, one running-statistic update per group
    "faithful": {},
    # the original's double update (§10.8), with the row-packing and mask fixes
    "double_bn_update_row_packing": {"main_resnet_bn_updates": 2, "span_packing": "row",
                                     "mask_attention": True},
}
_runs: dict = {}


def run_step(name: str, accumulation: str, devices: int):
    """One step on batch 32 = 8 groups x 4: (metrics, gradients, new running
    statistics, state before, compiled HLO text), cached across tests."""
    key = (name, accumulation, devices)
    if key not in _runs:
        config = tiny_config(**CONFIGS[name])
        model = JMLModel(config)
        mesh = (make_mesh((1, 1, 1), devices=jax.devices()[:1]) if devices == 1
                else make_mesh((devices, 1, 1)))
        state, step = build_step(model, config, mesh, accumulation, GROUPS)
        before = jax.device_get(state.batch_stats)
        batch = make_batch(GROUPS * MICRO, seed=3)
        if accumulation == "scan":
            batch = strided(batch, GROUPS)
        gbatch = global_batch_from_process_local(batch, mesh)
        text = step.lower(state, gbatch).compile().as_text() if devices > 1 else None
        new_state, metrics = step(state, gbatch)
        _runs[key] = jax.device_get((metrics, new_state.opt_state, new_state.batch_stats)) + (
            before, text)
    return _runs[key]


@pytest.mark.parametrize("name", [
    "faithful",
    # ~2 min on a 2-core CPU, so in the slow set: two BatchNorm updates per
    # group are checked against torch in test_resnet.py, and 'row' packing
    # reads only its own row, which groups cannot change.
    pytest.param("double_bn_update_row_packing", marks=pytest.mark.slow),
])
def test_one_pass_equals_the_sequential_scan(name):
    """Loss, gradients (not parameters: they would hide a zero first learning
    rate) and running statistics of the one-pass step equal the scan's, each
    group of the one pass being the scan's micro-batch."""
    m1, g1, s1, before, _ = run_step(name, "one_pass", 1)
    m2, g2, s2, _, _ = run_step(name, "scan", 1)
    for key in ("loss", "grad_norm", "mate_loss", "masc_loss"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=RTOL, atol=ATOL, err_msg=key)
    close(g1, g2, "grad")
    close(s1, s2, "batch_stats")
    # The main ResNet's statistics moved; the frozen relation ResNet's did not.
    assert not np.allclose(s1["resnet"]["bn1"]["var"], before["resnet"]["bn1"]["var"])
    close(s1["relation"], before["relation"], "relation batch_stats")
    assert float(m1["grad_norm"]) > 0


def _hlo_batch_dims(text: str, tail: str) -> set[int]:
    """Leading dimensions of the compiled module's arrays of shape [*, tail]."""
    return {int(d) for d in re.findall(r"\[(\d+)," + re.escape(tail) + r"\]", text)}


def test_eight_devices_hold_one_group_each():
    """Mesh (8,1,1), batch 32 = 8 groups x 4: every device computes its own group
    of 4 (no replication) and the gradients equal one device's."""
    m1, g1, s1, _, _ = run_step("faithful", "one_pass", 1)
    m8, g8, s8, _, text = run_step("faithful", "one_pass", 8)
    # The per-device program works on 4 rows: the stem conv output
    # [4, 32, 32, 8] and the token states [4, 24, 32]; never on 32 rows.
    assert _hlo_batch_dims(text, f"{IMAGE // 2},{IMAGE // 2},8") == {MICRO}
    assert MICRO in _hlo_batch_dims(text, f"{LENGTH},32")
    assert GROUPS * MICRO not in _hlo_batch_dims(text, f"{LENGTH},32")
    for key in ("loss", "grad_norm", "mate_loss", "masc_loss"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=RTOL, atol=ATOL, err_msg=key)
    close(g8, g1, "grad")
    close(s8, s1, "batch_stats")


def test_groups_that_do_not_fill_the_devices_are_refused():
    """4 groups on 8 devices would split groups (or replicate): an error at build time."""
    config = tiny_config()
    model = JMLModel(config)
    with pytest.raises(ValueError) as err:
        build_step(model, config, make_mesh((8, 1, 1)), "one_pass", 4, init=False, batch_size=32)
    msg = str(err.value)
    for part in ("grad_accum_steps=4", "batch_size=32", "'data': 8", "larger effective batch",
                 "batch_size=64 with grad_accum_steps=8", "smaller groups",
                 "grad_accum_steps=8 with batch_size=32"):
        assert part in msg, (part, msg)


def test_batch_span_packing_per_group_equals_separate_calls():
    """'batch' packing with groups packs each group alone; a span running past
    its row reads the next row of its own group, and the last row of a group
    clamps inside the group instead of reading the next group."""
    rs = np.random.RandomState(2)
    groups, rows, length, spans, width = 3, 2, 7, 2, 4
    n = groups * rows
    mask = np.zeros((n, length), np.int32)
    for r in range(n):
        mask[r, :rs.randint(3, length + 1)] = 1
    lengths = mask.sum(1)
    starts = np.stack([np.ones(n, np.int32), lengths - 2], 1).astype(np.int32)
    ends = np.stack([np.ones(n, np.int32) + 1, lengths + 1], 1).astype(np.int32)  # slot 1 runs past
    scores = rs.normal(size=(n, length)).astype(np.float32)
    tokens = rs.normal(size=(n, length, width)).astype(np.float32)

    weights = spans_lib.span_pool_weights(scores, mask, starts, ends, groups=groups)
    pooled = spans_lib.pool_spans(tokens, weights, groups=groups)
    assert weights.shape == (n, spans, rows * length)
    for g in range(groups):
        part = slice(g * rows, (g + 1) * rows)
        w = spans_lib.span_pool_weights(scores[part], mask[part], starts[part], ends[part])
        np.testing.assert_allclose(weights[part], w, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(pooled[part], spans_lib.pool_spans(tokens[part], w),
                                   rtol=1e-6, atol=1e-6)
    # With one pack over all rows, the last row of group 0 reads group 1's tokens.
    whole = spans_lib.pool_spans(tokens, spans_lib.span_pool_weights(scores, mask, starts, ends))
    assert np.max(np.abs(np.asarray(whole[rows - 1]) - np.asarray(pooled[rows - 1]))) > 1e-3
    np.testing.assert_allclose(whole[0], pooled[0], rtol=1e-6, atol=1e-6)
