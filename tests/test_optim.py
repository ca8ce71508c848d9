"""BERTAdam, schedules, optimizer groups and gradient accumulation (§2.4, §5.4, §8)."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jml_jax import optim


# ---------------------------------------------------------------- schedule
def original_warmup_linear_factor(step, t_total, warmup):
    """BERT's warmup_linear(x, warmup) with x = state['step'] / t_total, in Python floats."""
    x = step / t_total
    if x < warmup:
        return x / warmup
    return 1.0 - x


def test_warmup_linear_key_steps():
    sched = optim.warmup_linear_schedule(2e-5, t_total=20, warmup=0.1)
    # count 0 is the first update: the original uses state['step'] == 0 there.
    np.testing.assert_allclose(sched(0), 0.0)
    np.testing.assert_allclose(sched(1), 2e-5 * 0.5, rtol=1e-6)  # inside warmup
    np.testing.assert_allclose(sched(2), 2e-5 * 0.9, rtol=1e-6)  # x == 0.1: the drop to 0.9
    np.testing.assert_allclose(sched(3), 2e-5 * 0.85, rtol=1e-6)
    np.testing.assert_allclose(sched(20), 0.0, atol=1e-12)


@pytest.mark.parametrize("t_total", [7, 20, 30, 2728, 3282])
def test_warmup_linear_matches_original_formula_at_every_step(t_total):
    sched = jax.jit(optim.warmup_linear_schedule(1.0, t_total, 0.1))
    steps = np.arange(t_total + 1)
    got = np.asarray(jax.vmap(sched)(jnp.asarray(steps)))
    want = np.array([original_warmup_linear_factor(int(k), t_total, 0.1) for k in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_warmup_linear_rejects_missing_t_total():
    with pytest.raises(ValueError, match="t_total"):
        optim.warmup_linear_schedule(1e-3, 0)


# ---------------------------------------------------------------- BERTAdam
def numpy_bert_adam(params, grads_seq, lr_at, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, max_norm=1.0):
    """BERTAdam's update written out in float64 (§8)."""
    p = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    history = []
    for step, grads in enumerate(grads_seq):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            coef = max_norm / (np.sqrt((g * g).sum()) + 1e-6)  # clip_grad_norm_ on this tensor
            if coef < 1:
                g = g * coef
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            update = m[k] / (np.sqrt(v[k]) + eps) + wd * p[k]
            p[k] = p[k] - lr_at(step) * update
        history.append({k: x.copy() for k, x in p.items()})
    return history


def test_bert_adam_matches_numpy_over_warmup_and_drop():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32)}
    # 'w' gradients have norm ~35 (clipped every step), 'b' norm ~0.02 (never clipped).
    grads_seq = [{"w": 10 * rng.normal(size=(3, 4)).astype(np.float32),
                  "b": 0.01 * rng.normal(size=(4,)).astype(np.float32)} for _ in range(12)]
    peak, t_total = 1e-2, 20
    tx = optim.bert_adam(optim.warmup_linear_schedule(peak, t_total, 0.1))
    state = tx.init(params)
    step_fn = jax.jit(lambda g, s, p: tx.update(g, s, p))
    want = numpy_bert_adam(
        params, grads_seq, lambda k: peak * original_warmup_linear_factor(k, t_total, 0.1))
    p = jax.tree.map(jnp.asarray, params)
    for step, grads in enumerate(grads_seq):
        updates, state = step_fn(grads, state, p)
        p = optax.apply_updates(p, updates)
        if step == 0:  # rate 0 on the first update: BERTAdam counts the step after it
            for k in p:
                np.testing.assert_array_equal(p[k], params[k])
        for k in p:
            np.testing.assert_allclose(p[k], want[step][k], rtol=1e-6, atol=1e-7,
                                       err_msg=f"param {k} after update {step}")
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_per_tensor_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    grads = {"big": 5 * rng.normal(size=(6, 3)).astype(np.float32),
             "small": 0.05 * rng.normal(size=(5,)).astype(np.float32),
             "edge": np.full((4,), 0.5, np.float32)}  # norm exactly 1.0: coefficient 1/(1+1e-6)
    clipped, _ = optim.clip_by_tensor_norm(1.0).update(grads, optax.EmptyState())
    for name, g in grads.items():
        t = torch.nn.Parameter(torch.zeros(g.shape))
        t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(t, 1.0)
        np.testing.assert_allclose(clipped[name], t.grad.numpy(), rtol=1e-6, atol=0, err_msg=name)


def test_bert_adam_weight_decay_mask_and_no_decay_switch():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    faithful = optim.bert_adam(0.1)
    updates, _ = faithful.update(zeros, faithful.init(params), params)
    # Zero gradient: only the decay moves parameters, on every tensor (§10.9).
    np.testing.assert_allclose(updates["dense"]["bias"], -0.1 * 0.01, rtol=1e-6)
    fixed = optim.bert_adam(0.1, weight_decay_mask=optim.decay_mask_no_bias_norm)
    updates, _ = fixed.update(zeros, fixed.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.01, rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)


# ---------------------------------------------------------------- fixed AdamW
def test_fixed_adamw_skips_decay_on_biases_and_norm_scales():
    params = {
        "encoder": {"LayerNorm": {"scale": jnp.ones(3), "bias": jnp.ones(3)},
                    "query": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}},
        "resnet": {"bn1": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
                   "conv1": {"kernel": jnp.ones((1, 1, 2, 4))}},
        "tf_style_ln": {"gamma": jnp.ones(3), "beta": jnp.ones(3)},
        "embeddings": {"embedding": jnp.ones((5, 3))},
    }
    tx = optim.fixed_adamw(1e-2, weight_decay=0.1)
    state = tx.init(params)
    step = jax.jit(tx.update)
    p = params
    for _ in range(3):
        updates, state = step(jax.tree.map(jnp.zeros_like, p), state, p)
        p = optax.apply_updates(p, updates)
    moved = {"/".join(str(getattr(k, "key", k)) for k in path): bool(np.any(np.asarray(x) != 1.0))
             for path, x in jax.tree_util.tree_leaves_with_path(p)}
    assert moved == {
        "encoder/LayerNorm/scale": False, "encoder/LayerNorm/bias": False,
        "encoder/query/kernel": True, "encoder/query/bias": False,
        "resnet/bn1/scale": False, "resnet/bn1/bias": False, "resnet/conv1/kernel": True,
        "tf_style_ln/gamma": False, "tf_style_ln/beta": False,
        "embeddings/embedding": True,
    }


def test_fixed_adamw_matches_torch_adamw():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    params = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                        "bias": rng.normal(size=(3,)).astype(np.float32)}}
    grads_seq = [jax.tree.map(lambda x: 3 * rng.normal(size=x.shape).astype(np.float32), params)
                 for _ in range(5)]
    tx = optim.fixed_adamw(1e-2, weight_decay=0.01, max_grad_norm=1.0)
    state, p = tx.init(params), params
    for g in grads_seq:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)

    kernel = torch.nn.Parameter(torch.tensor(params["dense"]["kernel"]))
    bias = torch.nn.Parameter(torch.tensor(params["dense"]["bias"]))
    opt = torch.optim.AdamW([{"params": [kernel], "weight_decay": 0.01},
                             {"params": [bias], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.999), eps=1e-6)
    for g in grads_seq:
        kernel.grad = torch.tensor(g["dense"]["kernel"])
        bias.grad = torch.tensor(g["dense"]["bias"])
        torch.nn.utils.clip_grad_norm_([kernel, bias], 1.0)
        opt.step()
    np.testing.assert_allclose(p["dense"]["kernel"], kernel.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p["dense"]["bias"], bias.detach().numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- groups and make_optimizer
def _joint_params():
    return {
        "bert": {"layer": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)}},
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)},
        "relation": {"mybert": {"kernel": jnp.ones((7, 5))},
                     "pair_preject": {"kernel": jnp.ones((5, 4)), "bias": jnp.zeros(4)}},
    }


def test_frozen_params_unchanged_and_hold_no_optimizer_state():
    params = _joint_params()
    cfg = ml_collections.ConfigDict(dict(name="bert_adam", learning_rate=1e-3,
                                         warmup_proportion=0.1, frozen_prefixes=("relation",)))
    tx = optim.make_optimizer(cfg, params, t_total=10)
    state = tx.init(params)
    trainable = sum(x.size for k, sub in params.items() if k != "relation" for x in jax.tree.leaves(sub))
    state_sizes = [x.size for x in jax.tree.leaves(state)]
    # mu and nu for the trainable leaves, plus the schedule count; nothing for 'relation'.
    assert sum(state_sizes) == 2 * trainable + 1
    assert all(x.shape not in {(7, 5), (5, 4)} for x in jax.tree.leaves(state))

    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    p = params
    for i in range(4):
        grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3 * (i + 1)), p)
        updates, state = step(grads, state, p)
        p = optax.apply_updates(p, updates)
    for a, b in zip(jax.tree.leaves(p["relation"]), jax.tree.leaves(params["relation"])):
        np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(p["head"]["kernel"]) != 1.0)


def test_relation_stage_lr_groups_match_torch_adam():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    params = {"mybert": {"dense": {"kernel": 0.01 * rng.normal(size=(4, 4)).astype(np.float32)}},
              "pair_preject": {"kernel": 0.01 * rng.normal(size=(4, 4)).astype(np.float32),
                               "bias": 0.01 * rng.normal(size=(4,)).astype(np.float32)}}
    grads_seq = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
                 for _ in range(5)]
    cfg = dict(name="adam_l2", learning_rate=1e-6, schedule="constant",
               lr_groups={"pair_preject": 1e-4})
    tx = optim.make_optimizer(cfg, params, t_total=None)
    state, p = tx.init(params), params
    for g in grads_seq:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)

    tparams = jax.tree.map(lambda x: torch.nn.Parameter(torch.tensor(x)), params)
    opt = torch.optim.Adam(
        [{"params": [tparams["mybert"]["dense"]["kernel"]], "lr": 1e-6},
         {"params": [tparams["pair_preject"]["kernel"], tparams["pair_preject"]["bias"]], "lr": 1e-4}],
        weight_decay=1e-7)
    for g in grads_seq:
        jax.tree.map(lambda t, x: setattr(t, "grad", torch.tensor(x)), tparams, g)
        opt.step()
    for path, got in jax.tree_util.tree_leaves_with_path(p):
        want = tparams
        for k in path:
            want = want[k.key]
        start = params
        for k in path:
            start = start[k.key]
        np.testing.assert_allclose(got - start, want.detach().numpy() - start, rtol=1e-4, atol=1e-9,
                                   err_msg=jax.tree_util.keystr(path))
    moved_head = np.abs(np.asarray(p["pair_preject"]["kernel"]) - params["pair_preject"]["kernel"]).mean()
    moved_body = np.abs(np.asarray(p["mybert"]["dense"]["kernel"]) - params["mybert"]["dense"]["kernel"]).mean()
    assert moved_head > 50 * moved_body


def test_param_group_labels():
    labels = optim.param_group_labels(_joint_params(), frozen_prefixes=("bert",),
                                      lr_groups={"relation/pair_preject": 1e-4, "head": 1e-3})
    assert labels["bert"]["layer"]["kernel"] == "frozen"
    assert labels["head"]["bias"] == "group:head"
    assert labels["relation"]["pair_preject"]["kernel"] == "group:relation/pair_preject"
    assert labels["relation"]["mybert"]["kernel"] == "default"


@pytest.mark.parametrize("cfg, message", [
    (dict(name="sgd", learning_rate=1e-3), r"unknown optimizer name 'sgd'; valid: \['adam_l2', 'adamw_fixed', 'bert_adam'\]"),
    (dict(name="bert_adam", learning_rate=1e-3, schedule="cosine"), r"unknown schedule 'cosine'; valid"),
    (dict(name="bert_adam", learning_rate=1e-3, warmup=0.1), r"unknown optimizer config fields \['warmup'\]"),
    (dict(name="bert_adam", learning_rate=1e-3, frozen_prefixes=("relaton",)),
     r"frozen_prefixes \['relaton'\] are not top-level parameter names; valid: \['bert', 'head', 'relation'\]"),
    (dict(name="bert_adam", learning_rate=1e-3, lr_groups={"pair_project": 1e-4}),
     r"lr_groups keys \['pair_project'\] match no trainable parameter"),
    (dict(name="bert_adam", learning_rate=1e-3, lr_groups={"relation": 1e-4, "pair_preject": 1e-3}),
     r"matches several lr_groups"),
])
def test_make_optimizer_rejects_bad_config(cfg, message):
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer(cfg, _joint_params(), t_total=100)


def test_make_optimizer_bert_adam_equals_direct_bert_adam():
    params = {"head": {"kernel": jnp.linspace(-1, 1, 8).reshape(4, 2), "bias": jnp.ones(2)}}
    grads = jax.tree.map(lambda x: jnp.cos(3 * x) * 4, params)
    cfg = dict(name="bert_adam", learning_rate=2e-2, warmup_proportion=0.1)
    tx_cfg = optim.make_optimizer(cfg, params, t_total=10)
    tx_ref = optim.bert_adam(optim.warmup_linear_schedule(2e-2, 10, 0.1))
    s1, s2, p1, p2 = tx_cfg.init(params), tx_ref.init(params), params, params
    for _ in range(4):
        u1, s1 = tx_cfg.update(grads, s1, p1)
        u2, s2 = tx_ref.update(grads, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(a, b)


def test_relation_epoch_schedule_steps_down_per_ten_epochs():
    sched = optim.relation_epoch_schedule(1e-4, steps_per_epoch=5)
    np.testing.assert_allclose([sched(0), sched(49), sched(50), sched(99), sched(100), sched(500)],
                               [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rtol=1e-6)
