"""Training losses of JML: span boundaries (MATE), span polarity (MASC), relation (TRC).

All functions are pure `jnp` code, compute in float32 whatever the logits'
dtype (bfloat16 logits are upcast first), and return float32 scalars.

Faithful by default (`original-jml-code.md` §5):

* MATE (§5.1): one log-softmax per row over **all** L positions ([CLS], [SEP]
  and padding included), the gold boundaries given as a multi-hot vector; the
  row loss is the mean negative log-likelihood of the gold boundaries
  (normalised by their count), the batch loss the mean over rows, and the MATE
  loss the mean of the start and end terms.
* MASC (§5.2): 4-way softmax cross-entropy averaged over the valid gold span
  slots of the whole batch (masked mean, not a per-row mean).
* Total (§5.3): MATE + MASC, 1:1. No relation loss in the joint stage.
* TRC (§2.4): cross-entropy averaged over the B*2 rows of [B, 2, 2] logits.

Normalisation and gradient accumulation. The original normalises each loss
per *mini-batch* of 4 sentences (mean over its rows, masked mean over its
spans), divides the total by the 8 accumulation steps and sums the gradients
of 8 mini-batches (§5.3, §5.4). `jml_jax.steps.make_train_step` keeps that
arithmetic in both of its accumulation modes: "scan" calls the loss once per
micro-batch (``groups=1``) and averages the results; "one_pass" calls it once
on the whole effective batch with ``groups=8``, and `jml_loss` then normalises
each contiguous group of rows on its own and averages the 8 group losses,
which is the same number. Calling `jml_loss` on the batch of 32 with
``groups=1`` instead gives the same MATE term but a different MASC term (one
masked mean over all spans of 32 sentences instead of the average of 8
per-mini-batch means).

Inside `jax.jit` with a batch sharded over devices, the sums below are global
(XLA inserts the reductions), so data parallelism does not change the values.

Padded batches: `valid_rows` ([B], 1 for real rows) drops rows added to fill a
fixed batch shape; those rows contribute nothing and are not counted.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

# Logit given to masked-out positions when the boundary mask switch is on.
# Finite (not -inf) so that 0 * log p stays 0 and no NaN can appear; in
# float32 exp(-1e9 - max) underflows to exactly 0.
MASKED_LOGIT = -1e9


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(values * weights) / sum(weights); 0 (not NaN) when the weights sum to 0."""
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(values * weights) / jnp.maximum(total, 1e-30), 0.0)


def _row_weights(valid_rows, batch: int) -> jax.Array:
    if valid_rows is None:
        return jnp.ones((batch,), jnp.float32)
    valid_rows = _f32(valid_rows)
    if valid_rows.shape != (batch,):
        raise ValueError(f"valid_rows must have shape [{batch}], got {valid_rows.shape}")
    return valid_rows


def boundary_loss(
    logits: jax.Array,
    targets: jax.Array,
    mask: Optional[jax.Array] = None,
    valid_rows: Optional[jax.Array] = None,
) -> jax.Array:
    """Multi-hot boundary loss of one side (start or end), §5.1.

    Args:
      logits: [batch, length] boundary logits (any float dtype).
      targets: [batch, length] multi-hot gold boundaries (0/1, any dtype).
      mask: optional [batch, length] 1 on positions that may be boundaries
        (the caller passes `input_mask`). A fix switch: the original does not
        mask, so by default the softmax covers padding, [CLS] and [SEP] too.
        Masked positions get the logit `MASKED_LOGIT` before the softmax, so
        gold boundaries must lie inside the mask (one outside costs ~1e9).
      valid_rows: optional [batch] 1 for real rows, 0 for rows that only pad
        the batch; the mean runs over valid rows only (0 if there are none).

    Returns:
      float32 scalar: mean over valid rows of
      -sum_l(y_l * log_softmax(z)_l) / sum_l(y_l).

    A valid row without any gold boundary contributes 0 to the sum (and still
    counts in the mean). The original would give NaN there, but such rows never
    reach it: sentences without aspects are dropped from training (§1).
    """
    logits = _f32(logits)
    targets = _f32(targets)
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"boundary_loss expects logits and targets of the same shape [batch, length]; "
            f"got {logits.shape} and {targets.shape}"
        )
    if mask is not None:
        if mask.shape != logits.shape:
            raise ValueError(f"mask must have shape {logits.shape}, got {mask.shape}")
        logits = jnp.where(mask > 0, logits, MASKED_LOGIT)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    count = jnp.sum(targets, axis=-1)  # [batch]
    nll = -jnp.sum(targets * log_probs, axis=-1)  # [batch]
    row_loss = jnp.where(count > 0, nll / jnp.maximum(count, 1.0), 0.0)
    return _masked_mean(row_loss, _row_weights(valid_rows, logits.shape[0]))


def mate_loss(
    start_logits: jax.Array,
    end_logits: jax.Array,
    start_positions: jax.Array,
    end_positions: jax.Array,
    mask: Optional[jax.Array] = None,
    valid_rows: Optional[jax.Array] = None,
) -> jax.Array:
    """MATE loss (start + end) / 2, §5.1.

    Args:
      start_logits, end_logits: [batch, length].
      start_positions, end_positions: [batch, length] multi-hot gold boundaries.
      mask: optional [batch, length] boundary mask (fix switch, see
        `boundary_loss`).
      valid_rows: optional [batch] 1 for real rows.

    Returns:
      float32 scalar.
    """
    start = boundary_loss(start_logits, start_positions, mask, valid_rows)
    end = boundary_loss(end_logits, end_positions, mask, valid_rows)
    return (start + end) / 2.0


def polarity_loss(logits: jax.Array, labels: jax.Array, span_mask: jax.Array) -> jax.Array:
    """MASC loss, §5.2: masked mean softmax cross-entropy over span slots.

    Args:
      logits: [batch, spans, classes] polarity logits (classes = 4: other,
        neutral, positive, negative).
      labels: [batch, spans] integer class of each gold span (anything on
        padding slots).
      span_mask: [batch, spans] 1 on valid gold span slots. Duplicate aspect
        texts are removed when features are built (§5.2); this loss only
        follows the mask.

    Returns:
      float32 scalar: sum over batch and slots of mask * CE / sum of mask,
      or 0 when the batch has no valid span.
    """
    logits = _f32(logits)
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or span_mask.shape != labels.shape:
        raise ValueError(
            "polarity_loss expects logits [batch, spans, classes], labels and span_mask "
            f"[batch, spans]; got {logits.shape}, {labels.shape}, {span_mask.shape}"
        )
    weights = _f32(span_mask)
    # Padding slots may carry any label (e.g. -1); clamp them to a valid index so
    # the gather cannot produce NaN, their weight is 0 anyway.
    safe_labels = jnp.where(weights > 0, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    return _masked_mean(nll, weights)


def jml_loss(
    start_logits: jax.Array,
    end_logits: jax.Array,
    start_positions: jax.Array,
    end_positions: jax.Array,
    polarity_logits: jax.Array,
    polarity_labels: jax.Array,
    span_mask: jax.Array,
    *,
    boundary_mask: Optional[jax.Array] = None,
    valid_rows: Optional[jax.Array] = None,
    groups: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Joint loss L = L_ae + L_ac (1:1, §5.3), per group of rows.

    Args:
      start_logits, end_logits: [batch, length].
      start_positions, end_positions: [batch, length] multi-hot targets.
      polarity_logits: [batch, spans, 4] logits of the gold training spans.
      polarity_labels: [batch, spans] their classes.
      span_mask: [batch, spans] 1 on valid gold spans.
      boundary_mask: optional [batch, length] MATE mask (fix switch).
      valid_rows: optional [batch] 1 for real rows (padding rows of a padded
        batch must also have span_mask 0, which the MASC term relies on).
      groups: the batch is ``groups`` contiguous groups of batch/groups rows,
        each one of the original's mini-batches: both terms are normalised
        within each group (MATE mean over its rows, MASC masked mean over its
        spans) and the group losses averaged, i.e. the mean of ``groups``
        calls on the groups (§5.3, §5.4).

    Returns:
      (total, {'loss': total, 'mate_loss': L_ae, 'masc_loss': L_ac}), float32
      scalars (means over the groups). The division by the accumulation steps
      of the original is that mean over groups, or the mean over micro-batches
      taken by `jml_jax.steps.make_train_step`.
    """

    def one(start, end, start_pos, end_pos, pol, labels, spans, bmask, rows):
        ae = mate_loss(start, end, start_pos, end_pos, bmask, rows)
        if rows is not None:
            spans = _f32(spans) * (_f32(rows)[:, None] > 0)
        ac = polarity_loss(pol, labels, spans)
        return ae, ac

    args = (start_logits, end_logits, start_positions, end_positions, polarity_logits,
            polarity_labels, span_mask, boundary_mask, valid_rows)
    if groups == 1:
        ae, ac = one(*args)
    else:
        ae, ac = jax.vmap(one)(*_split_groups(args, groups))
        ae, ac = jnp.mean(ae), jnp.mean(ac)
    total = ae + ac
    return total, {"loss": total, "mate_loss": ae, "masc_loss": ac}


def _split_groups(arrays, groups: int):
    """[groups * n, ...] leaves (None kept) -> [groups, n, ...]."""

    def one(x):
        if x is None:
            return None
        x = jnp.asarray(x)
        if groups < 1 or x.ndim == 0 or x.shape[0] % groups:
            raise ValueError(f"a loss input of shape {x.shape} does not split into {groups} groups")
        return x.reshape((groups, x.shape[0] // groups) + x.shape[1:])

    return tuple(one(x) for x in arrays)


def relation_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid_rows: Optional[jax.Array] = None,
    *,
    groups: int = 1,
) -> jax.Array:
    """TRC pre-training loss, §2.4: mean CE over the B*2 rows of [B, 2, 2] logits.

    Args:
      logits: [batch, 2, 2]; [:, 0] are the text-represented (R) logits,
        [:, 1] the image-adds (V) logits.
      labels: [batch, 2] integer labels 0/1 for R and V.
      valid_rows: optional [batch] 1 for real rows.
      groups: mean over each of ``groups`` contiguous groups of rows, then
        over the groups (one-pass gradient accumulation; equal to the plain
        mean when no row is padding).

    Returns:
      float32 scalar: the R and V cross-entropies averaged together over the
      valid rows.
    """
    if groups != 1:
        split = _split_groups((logits, labels, valid_rows), groups)
        return jnp.mean(jax.vmap(relation_loss)(*split))
    logits = _f32(logits)
    if logits.ndim != 3 or logits.shape[1:] != (2, 2) or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"relation_loss expects logits [batch, 2, 2] and labels [batch, 2]; "
            f"got {logits.shape} and {labels.shape}"
        )
    weights = jnp.broadcast_to(_row_weights(valid_rows, logits.shape[0])[:, None], labels.shape)
    # Rows that only pad the batch may carry any label; keep the gather in range.
    safe_labels = jnp.where(weights > 0, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    return _masked_mean(nll, weights)
