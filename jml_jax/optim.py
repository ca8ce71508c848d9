"""Optimizers and learning-rate schedules.

Faithful default (`original-jml-code.md` §8, §10.9): `bert_adam`, the BERTAdam
of the authors' `bert/optimization.py`:

* each parameter's gradient is clipped on its own to norm 1.0, exactly as
  `torch.nn.utils.clip_grad_norm_(p, 1.0)` called per parameter:
  g *= min(1, max_norm / (||g|| + 1e-6));
* m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, u = m / (sqrt(v) + eps),
  **no bias correction**, eps 1e-6 outside the square root;
* u += 0.01 * p on **every** parameter (the original builds its no-decay groups
  under the key `weight_decay` but BERTAdam reads `weight_decay_rate`, §8);
* p -= lr_t * u with lr_t from `warmup_linear_schedule`.

Step counting (checked against the BERTAdam source): the scheduled rate uses
`state['step'] / t_total` and `state['step'] += 1` comes *after* the parameter
update, so the k-th update (k = 0, 1, ...) uses x = k / t_total and the very
first update has rate 0 (it only fills m and v). optax's schedule count is
the number of updates already applied, i.e. the same k, so the schedules here
are plain functions of the optax count.

Fixes, by config: `adamw_fixed` (bias-corrected AdamW, no decay on biases and
normalisation scales, global-norm clipping). The relation (TRC) stage uses
`adam_l2`, i.e. `torch.optim.Adam` (bias-corrected, L2 weight decay 1e-7 added
to the gradient) with per-group learning rates (§2.4).

`make_optimizer` builds any of them from a config, freezes whole top-level
sub-trees (no optimizer state, zero update) and applies per-group learning
rates through `optax.multi_transform`. Gradient accumulation is
done by the train step (`jml_jax.steps.make_train_step`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, optax.Schedule]

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
TORCH_CLIP_EPS = 1e-6

FROZEN_LABEL = "frozen"
DEFAULT_LABEL = "default"
_GROUP_PREFIX = "group:"


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------
def first_step_past_warmup(t_total: int, warmup: float) -> int:
    """Smallest integer k >= 0 with k / t_total >= warmup in float64.

    The original decides warmup vs decay with the Python float test
    `k / t_total < warmup`; doing that test once here in float64 keeps the
    switch step exact even where float32 rounding of k / t_total would flip it.
    """
    k = max(0, math.floor(warmup * t_total) - 1)
    while k / t_total < warmup:
        k += 1
    return k


def warmup_linear_schedule(peak_lr: float, t_total: int, warmup: float = 0.1,
                           switch: int | None = None) -> optax.Schedule:
    """BERT's `warmup_linear` (§8) as a function of the optax update count.

    With x = count / t_total the rate is peak_lr * x / warmup while
    x < warmup, else peak_lr * (1 - x). The first update (count 0) has rate 0;
    at the end of warmup the factor jumps from about 1 to 1 - warmup (0.9), then
    falls linearly to 0 at count == t_total. As in the original, nothing stops
    the factor from going negative past t_total: choose t_total >= the number
    of updates (the original's t_total, int(n / 4 / 8 * epochs), is larger than
    the 65 x 50 updates it takes, §8).

    Args:
      peak_lr: learning rate reached at the end of warmup.
      t_total: the schedule length in updates (> 0).
      warmup: warmup proportion of t_total (0 or negative: no warmup).
      switch: the first count past warmup, `first_step_past_warmup(t_total,
        warmup)` computed by the caller; then ``peak_lr`` and ``warmup`` may
        be traced scalars (one run of a population, jml_jax/population.py)
        and the rates are those of the same Python floats.

    Returns:
      schedule(count) -> float32 scalar learning rate.
    """
    if not t_total or t_total <= 0:
        raise ValueError(f"warmup_linear_schedule needs t_total > 0, got {t_total!r}")
    if switch is None:
        switch = first_step_past_warmup(t_total, warmup)
        warmup_div = warmup if warmup > 0 else 1.0  # unused branch when switch == 0
    else:
        warmup_div = jnp.where(jnp.asarray(warmup) > 0, jnp.asarray(warmup, jnp.float32), 1.0)

    def schedule(count):
        count = jnp.asarray(count)
        x = count.astype(jnp.float32) / jnp.float32(t_total)
        factor = jnp.where(count < switch, x / jnp.float32(warmup_div), 1.0 - x)
        return jnp.float32(peak_lr) * factor

    return schedule


def relation_epoch_schedule(peak_lr: float, steps_per_epoch: int) -> optax.Schedule:
    """The TRC stage's `LambdaLR` (§2.4): factor 1 for epochs < 10, 0.1 < 20, 0.01 after.

    The original steps it once per epoch, so update k is in epoch
    k // steps_per_epoch. With the shipped 10 relation epochs it stays 1.
    """
    if not steps_per_epoch or steps_per_epoch <= 0:
        raise ValueError(f"relation_epoch_schedule needs steps_per_epoch > 0, got {steps_per_epoch!r}")
    return optax.piecewise_constant_schedule(
        peak_lr, {10 * steps_per_epoch: 0.1, 20 * steps_per_epoch: 0.1}
    )


# ----------------------------------------------------------------------------
# BERTAdam
# ----------------------------------------------------------------------------
def _may_be_nonzero(x) -> bool:
    """False only for a Python number equal to 0: a traced value (a run's own
    weight decay in a population) keeps its transform, where 0 adds 0 * p."""
    return not isinstance(x, (int, float)) or x != 0


def _compute_dtype(x) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """Clips every gradient leaf separately: g *= min(1, max_norm / (||g||_2 + 1e-6)).

    This is `torch.nn.utils.clip_grad_norm_` applied to one parameter at a
    time, which is what BERTAdam does (§8, §10.9). Stateless.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            g32 = g.astype(_compute_dtype(g))
            norm = jnp.sqrt(jnp.sum(g32 * g32))
            coef = jnp.minimum(max_norm / (norm + TORCH_CLIP_EPS), 1.0)
            return (g32 * coef).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByBertAdamState(NamedTuple):
    """BERTAdam moments, one array per trainable parameter (float32 or wider)."""

    mu: optax.Updates  # next_m
    nu: optax.Updates  # next_v


def scale_by_bert_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """Adam direction without bias correction: m / (sqrt(v) + eps) (§8).

    State: `ScaleByBertAdamState` (no step count; the schedule keeps its own).
    """

    def init_fn(params):
        zeros = lambda p: jnp.zeros(p.shape, _compute_dtype(p))
        return ScaleByBertAdamState(mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

    def update_fn(updates, state, params=None):
        del params
        g32 = jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.mu)
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, g32)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * (g * g), state.nu, g32)
        direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, ScaleByBertAdamState(mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    max_grad_norm: Optional[float] = 1.0,
    weight_decay_mask: Optional[Any] = None,
) -> optax.GradientTransformation:
    """The original BERTAdam (§8) as an optax chain.

    Args:
      learning_rate: a float or an optax schedule of the update count (e.g.
        `warmup_linear_schedule`).
      b1, b2, eps: Adam constants; eps is added to sqrt(v), no bias correction.
      weight_decay: decoupled decay added to the update before the learning
        rate, p -= lr * (u + wd * p).
      max_grad_norm: per-tensor clipping threshold; None or <= 0 disables it.
      weight_decay_mask: None decays every parameter (faithful, §10.9), else a
        bool pytree or a callable params -> bool pytree (True = decay).

    Returns:
      An optax GradientTransformation whose state is a tuple of pytrees of
      arrays: (clip: EmptyState, ScaleByBertAdamState(mu, nu), decay state,
      schedule count).
    """
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(clip_by_tensor_norm(max_grad_norm))
    parts.append(scale_by_bert_adam(b1, b2, eps))
    if _may_be_nonzero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------
# Fixed AdamW and the relation-stage Adam
# ----------------------------------------------------------------------------
_NO_DECAY_LEAVES = ("bias", "beta", "scale", "gamma")


def _path_names(path) -> tuple[str, ...]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def decay_mask_no_bias_norm(params) -> Any:
    """Bool pytree: False for biases and normalisation parameters, True elsewhere.

    No decay on leaves named `bias` (Dense/Conv/LayerNorm/BatchNorm offsets),
    `scale` (in Flax only normalisation layers own a parameter of that name:
    LayerNorm, BatchNorm, GroupNorm, RMSNorm), and `gamma`/`beta` (the
    TF-style BERT LayerNorm names of the original checkpoints). This is the
    grouping the original intended (`['bias', 'gamma', 'beta']`, §8). Works on
    params or on updates (only the tree paths are read).
    """

    def decide(path, _leaf):
        return _path_names(path)[-1] not in _NO_DECAY_LEAVES

    return jax.tree_util.tree_map_with_path(decide, params)


def fixed_adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    max_grad_norm: Optional[float] = 1.0,
    weight_decay_mask: Optional[Any] = decay_mask_no_bias_norm,
) -> optax.GradientTransformation:
    """The "fixed" optimizer: global-norm clipping, then bias-corrected AdamW.

    Decoupled weight decay skips biases and normalisation scales by default
    (`decay_mask_no_bias_norm`). Pass `weight_decay_mask=None` to decay all.
    """
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                    mask=weight_decay_mask)
    )
    return optax.chain(*parts)


def adam_l2(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-7,
    max_grad_norm: Optional[float] = None,
    weight_decay_mask: Optional[Any] = None,
) -> optax.GradientTransformation:
    """`torch.optim.Adam(weight_decay=wd)` as used for TRC pre-training (§2.4).

    g += wd * p is added to the gradient (L2, not decoupled), then Adam with
    bias correction: p -= lr * m_hat / (sqrt(v_hat) + eps). No clipping unless
    `max_grad_norm` > 0 (then global-norm clipping first).
    """
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    if _may_be_nonzero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------
# Parameter groups and the config entry point
# ----------------------------------------------------------------------------
def _contains_subpath(names: tuple[str, ...], key: str) -> bool:
    want = tuple(key.strip("/").split("/"))
    n = len(want)
    return any(names[i:i + n] == want for i in range(len(names) - n + 1))


def param_group_labels(
    params,
    frozen_prefixes: Sequence[str] = (),
    lr_groups: Optional[Mapping[str, float]] = None,
) -> Any:
    """Pytree of labels, one per leaf: 'frozen', 'default' or 'group:<key>'.

    Args:
      params: the parameter tree (the 'params' collection), or anything with
        the same structure (updates, `jax.eval_shape` output).
      frozen_prefixes: top-level names whose whole sub-tree is frozen.
      lr_groups: {key: lr}; a leaf is in group `key` when `key` (one name, or
        several joined by '/') appears as consecutive components of its path,
        e.g. 'pair_preject' or 'relation/pair_preject'.

    Raises:
      ValueError: a frozen prefix is not a top-level name; a leaf matches two
        lr groups; an lr group matches no trainable leaf.
    """
    lr_groups = dict(lr_groups or {})
    frozen = tuple(frozen_prefixes or ())
    top_level = sorted({_path_names(p)[0] for p, _ in jax.tree_util.tree_leaves_with_path(params)})
    missing = [f for f in frozen if f not in top_level]
    if missing:
        raise ValueError(
            f"frozen_prefixes {missing} are not top-level parameter names; valid: {top_level}"
        )
    used: set[str] = set()

    def label(path, _leaf):
        names = _path_names(path)
        if names[0] in frozen:
            return FROZEN_LABEL
        hits = [k for k in lr_groups if _contains_subpath(names, k)]
        if len(hits) > 1:
            raise ValueError(f"parameter {'/'.join(names)} matches several lr_groups: {hits}")
        if hits:
            used.add(hits[0])
            return _GROUP_PREFIX + hits[0]
        return DEFAULT_LABEL

    labels = jax.tree_util.tree_map_with_path(label, params)
    unused = sorted(set(lr_groups) - used)
    if unused:
        raise ValueError(
            f"lr_groups keys {unused} match no trainable parameter; top-level names: {top_level}"
        )
    return labels


# name -> (constructor, defaults); the constructors share one signature.
# Defaults reproduce the original for each stage.
OPTIMIZERS: dict[str, tuple[Callable, dict]] = {
    "bert_adam": (bert_adam, dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                                  max_grad_norm=1.0, decay_bias_and_norm=True)),
    "adamw_fixed": (fixed_adamw, dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                                      max_grad_norm=1.0, decay_bias_and_norm=False)),
    "adam_l2": (adam_l2, dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-7,
                              max_grad_norm=None, decay_bias_and_norm=True)),
}


def _warmup_linear_from_config(peak, cfg, t_total):
    return warmup_linear_schedule(peak, t_total, cfg["warmup_proportion"], cfg.get("warmup_switch"))


def _constant_from_config(peak, cfg, t_total):
    del cfg, t_total
    return peak


def _relation_epoch_from_config(peak, cfg, t_total):
    del t_total
    return relation_epoch_schedule(peak, cfg["steps_per_epoch"])


SCHEDULES: dict[str, Callable] = {
    "warmup_linear": _warmup_linear_from_config,
    "constant": _constant_from_config,
    "relation_epoch_decay": _relation_epoch_from_config,
}

_COMMON_DEFAULTS = dict(schedule="warmup_linear", warmup_proportion=0.1, grad_accum_steps=8,
                        frozen_prefixes=(), lr_groups=None, steps_per_epoch=None)
_KNOWN_FIELDS = frozenset({"name", "learning_rate"} | set(_COMMON_DEFAULTS)
                          | set(OPTIMIZERS["bert_adam"][1]))


def _config_to_dict(opt_config) -> dict:
    if hasattr(opt_config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(opt_config.to_dict())
    if isinstance(opt_config, Mapping):
        return dict(opt_config)
    raise TypeError(f"opt_config must be a mapping or ConfigDict, got {type(opt_config).__name__}")


def _resolve(table: Mapping[str, Any], name: Any, what: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; valid: {sorted(table)}") from None


# What one run of a population may set for itself (jml_jax/population.py):
# `make_optimizer`'s ``overrides``.
RUN_OVERRIDES = ("learning_rate", "warmup_proportion", "weight_decay")


def make_optimizer(opt_config, params, t_total: Optional[int], *,
                   overrides: Optional[Mapping[str, Any]] = None) -> optax.GradientTransformation:
    """Builds the optimizer of a run from its config.

    Args:
      opt_config: mapping or ConfigDict with
        name: 'bert_adam' (faithful, §8) | 'adamw_fixed' | 'adam_l2' (TRC, §2.4);
        learning_rate: peak rate of the default group;
        schedule: 'warmup_linear' | 'constant' | 'relation_epoch_decay';
        warmup_proportion (0.1), steps_per_epoch (for relation_epoch_decay);
        weight_decay, max_grad_norm, b1, b2, eps: default per optimizer name
          (max_grad_norm None or <= 0 disables clipping);
        decay_bias_and_norm: False skips decay on biases and norm parameters
          (`decay_mask_no_bias_norm`); default True except for adamw_fixed;
        frozen_prefixes: top-level parameter names that get no update and no
          optimizer state, e.g. ('relation',);
        lr_groups: {path key: lr} per-group peak rates (see
          `param_group_labels`), e.g. {'pair_preject': 1e-4} with
          learning_rate 1e-6 for TRC;
        grad_accum_steps: read by the trainer (`jml_jax.steps.make_train_step`),
          not here.
      params: the parameter tree (or its `jax.eval_shape`); used to check the
        group names.
      t_total: schedule length in optimizer updates (needed by warmup_linear).
      overrides: values replacing the config's `RUN_OVERRIDES` (Python floats
        or traced scalars: one run of a population inside ``jax.vmap``), and
        ``warmup_switch``, the host-computed first step past warmup, required
        with a traced ``warmup_proportion``. The same numbers give the same
        rates and updates as the config carrying them.

    Returns:
      An `optax.multi_transform` over the groups; frozen leaves get
      `optax.set_to_zero()` and `optax.MaskedNode` in every other group's
      state, so they hold no moment arrays.
    """
    cfg = _config_to_dict(opt_config)
    unknown = sorted(set(cfg) - _KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"unknown optimizer config fields {unknown}; known: {sorted(_KNOWN_FIELDS)}")
    if "name" not in cfg or "learning_rate" not in cfg:
        raise ValueError("optimizer config needs 'name' and 'learning_rate'")
    builder, defaults = _resolve(OPTIMIZERS, cfg["name"], "optimizer name")
    merged = {**_COMMON_DEFAULTS, **defaults, **cfg}
    if overrides:
        unknown = sorted(set(overrides) - set(RUN_OVERRIDES) - {"warmup_switch"})
        if unknown:
            raise ValueError(f"optimizer overrides {unknown}; a run may set {list(RUN_OVERRIDES)}")
        merged.update(overrides)
    make_schedule = _resolve(SCHEDULES, merged["schedule"], "schedule")

    frozen = tuple(merged["frozen_prefixes"] or ())
    lr_groups = dict(merged["lr_groups"] or {})
    labels_fn = functools.partial(param_group_labels, frozen_prefixes=frozen, lr_groups=lr_groups)
    present = set(jax.tree.leaves(labels_fn(params)))  # validates names now, not at init

    mask = None if merged["decay_bias_and_norm"] else decay_mask_no_bias_norm
    peaks = {DEFAULT_LABEL: merged["learning_rate"]}
    peaks.update({_GROUP_PREFIX + k: lr for k, lr in lr_groups.items()})
    hyper = {k: merged[k] for k in ("b1", "b2", "eps", "weight_decay", "max_grad_norm")}
    transforms = {
        label: builder(make_schedule(peak, merged, t_total), weight_decay_mask=mask, **hyper)
        for label, peak in peaks.items() if label in present
    }
    if FROZEN_LABEL in present:
        transforms[FROZEN_LABEL] = optax.set_to_zero()
    return optax.multi_transform(transforms, labels_fn)
