"""Losses of §5 (MATE boundaries, MASC polarity) and §2.4 (TRC relation)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jml_jax import losses


# ---------------------------------------------------------------- references
def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_boundary_loss(logits, targets, mask=None):
    """§5.1 written directly: unmasked log-softmax, mean NLL of gold boundaries, mean over rows."""
    logits = np.asarray(logits, np.float64)
    if mask is not None:
        logits = np.where(mask > 0, logits, -np.inf)
    rows = []
    for z, y in zip(logits, np.asarray(targets, np.float64)):
        lp = np_log_softmax(z)
        rows.append(-(y[y > 0] * lp[y > 0]).sum() / y.sum())
    return float(np.mean(rows))


def np_polarity_loss(logits, labels, mask):
    lp = np_log_softmax(logits)
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            if mask[b, j]:
                total -= lp[b, j, labels[b, j]]
                count += 1
    return total / count if count else 0.0


def multi_hot(batch, length, positions):
    y = np.zeros((batch, length), np.int32)
    for row, cols in enumerate(positions):
        y[row, list(cols)] = 1
    return y


# ---------------------------------------------------------------- boundary loss
def test_boundary_loss_hand_worked_case():
    # Row 0: softmax([ln1, ln2, ln3, ln2]) = [1, 2, 3, 2] / 8, gold starts {1, 2}:
    #   -(ln(2/8) + ln(3/8)) / 2 = (ln 4 + ln(8/3)) / 2 = 1.1835618...
    # Row 1: uniform logits over 4 positions, gold {0}: ln 4 = 1.3862944...
    # Batch mean: 1.2849281...
    logits = jnp.array([[0.0, math.log(2), math.log(3), math.log(2)], [0.0, 0.0, 0.0, 0.0]])
    targets = jnp.array([[0, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(losses.boundary_loss(logits, targets), 1.2849280840928494, rtol=1e-6)


def test_boundary_loss_matches_numpy_with_several_aspects_per_row():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 16)).astype(np.float32) * 3
    targets = multi_hot(5, 16, [{1}, {2, 5, 9}, {3, 4}, {0, 7, 11, 14}, {15}])
    got = losses.boundary_loss(jnp.asarray(logits), jnp.asarray(targets))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_boundary_loss(logits, targets), rtol=1e-6)


def test_boundary_loss_unmasked_by_default_and_mask_switch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 10)).astype(np.float32)
    targets = multi_hot(2, 10, [{1, 3}, {2}])
    mask = np.zeros((2, 10), np.int32)
    mask[0, :6] = 1
    mask[1, :4] = 1
    # Faithful default: padding logits enter the softmax (§5.1, §10.11).
    bumped = logits.copy()
    bumped[mask == 0] += 5.0
    assert float(losses.boundary_loss(bumped, targets)) > float(losses.boundary_loss(logits, targets)) + 0.1
    # With the mask the padding is ignored, and the value is the softmax over valid positions.
    masked = losses.boundary_loss(jnp.asarray(logits), jnp.asarray(targets), mask=jnp.asarray(mask))
    masked_bumped = losses.boundary_loss(jnp.asarray(bumped), jnp.asarray(targets), mask=jnp.asarray(mask))
    np.testing.assert_allclose(masked, np_boundary_loss(logits, targets, mask), rtol=1e-6)
    np.testing.assert_allclose(masked_bumped, masked, rtol=1e-7)


def test_boundary_loss_padded_rows_contribute_nothing():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 8)).astype(np.float32)
    targets = multi_hot(4, 8, [{1}, {2, 6}, set(), {0, 1, 2}])  # row 2 is padding, no targets
    valid = np.array([1, 1, 0, 0], np.float32)  # rows 2 and 3 only pad the batch
    got = losses.boundary_loss(logits, targets, valid_rows=valid)
    np.testing.assert_allclose(got, np_boundary_loss(logits[:2], targets[:2]), rtol=1e-6)
    assert float(losses.boundary_loss(logits, targets, valid_rows=np.zeros(4))) == 0.0


def test_boundary_loss_row_without_targets_is_zero_not_nan():
    logits = jnp.array([[0.0, 1.0, 2.0], [0.5, 0.5, 0.5]])
    targets = jnp.array([[0, 0, 1], [0, 0, 0]])
    value, grad = jax.value_and_grad(losses.boundary_loss)(logits, targets)
    # Row 0 alone: -log softmax([0,1,2])[2]; row 1 contributes 0 and counts in the mean.
    expected = -np_log_softmax([0.0, 1.0, 2.0])[2] / 2
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0)


def test_boundary_loss_bfloat16_logits_computed_in_float32():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 12)).astype(np.float32)
    targets = multi_hot(3, 12, [{1, 2}, {5}, {7, 8, 9}])
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    got = losses.boundary_loss(bf16, targets)
    assert got.dtype == jnp.float32
    # Same value as float32 on the bf16-rounded logits: no bf16 arithmetic inside.
    ref = np_boundary_loss(np.asarray(bf16.astype(jnp.float32)), targets)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_boundary_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        losses.boundary_loss(jnp.zeros((2, 5)), jnp.zeros((2, 6)))
    with pytest.raises(ValueError, match="valid_rows"):
        losses.boundary_loss(jnp.zeros((2, 5)), jnp.ones((2, 5)), valid_rows=jnp.ones(3))


def test_mate_loss_is_mean_of_start_and_end():
    rng = np.random.default_rng(4)
    s, e = rng.normal(size=(2, 3, 9)).astype(np.float32)
    ys = multi_hot(3, 9, [{1, 4}, {2}, {6}])
    ye = multi_hot(3, 9, [{2, 5}, {3}, {8}])
    got = losses.mate_loss(s, e, ys, ye)
    np.testing.assert_allclose(got, (np_boundary_loss(s, ys) + np_boundary_loss(e, ye)) / 2, rtol=1e-6)


def test_mate_loss_matches_original_fixture(fixtures_dir):
    data = np.load(fixtures_dir / "orig_tiny_model.npz")
    got = losses.mate_loss(
        data["out/extraction/start_logits"], data["out/extraction/end_logits"],
        data["input/start_positions"], data["input/end_positions"],
    )
    np.testing.assert_allclose(got, data["out/train/ae_loss"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- polarity loss
def test_polarity_loss_hand_worked_case():
    # Slot (0,0): uniform logits, label 1: ln 4 = 1.3862944.
    # Slot (1,0): softmax([ln1, ln2, ln3, ln2]) = [1,2,3,2]/8, label 2: ln(8/3) = 0.9808293.
    # Slot (0,1) is padding (mask 0, label -1). Masked mean over 2 spans: 1.1835618.
    logits = jnp.array([
        [[0.0, 0.0, 0.0, 0.0], [9.0, -9.0, 3.0, 1.0]],
        [[0.0, math.log(2), math.log(3), math.log(2)], [0.0, 0.0, 0.0, 0.0]],
    ])
    labels = jnp.array([[1, -1], [2, 0]])
    mask = jnp.array([[1, 0], [1, 0]])
    np.testing.assert_allclose(losses.polarity_loss(logits, labels, mask), 1.1835618070658085, rtol=1e-6)


def test_polarity_loss_is_masked_mean_over_the_whole_batch():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 6, 4)).astype(np.float32) * 2
    labels = rng.integers(1, 4, size=(3, 6))
    mask = np.zeros((3, 6), np.int32)
    mask[0, :4] = 1  # 4 spans in row 0, 1 in row 1, 0 in row 2: a per-row mean would differ
    mask[1, :1] = 1
    got = losses.polarity_loss(logits, labels, mask)
    np.testing.assert_allclose(got, np_polarity_loss(logits, labels, mask), rtol=1e-6)


def test_polarity_loss_duplicate_aspect_follows_span_mask():
    # Two slots hold the same aspect text (same span, same logits); feature
    # building keeps the first only (§5.2). The loss counts exactly the masked-in one.
    logits = np.array([[[0.1, 0.5, -0.2, 0.3], [0.1, 0.5, -0.2, 0.3], [1.0, 0.0, 2.0, 0.0]]], np.float32)
    labels = np.array([[3, 3, 2]])
    dedup = losses.polarity_loss(logits, labels, np.array([[1, 0, 1]]))
    np.testing.assert_allclose(dedup, np_polarity_loss(logits, labels, np.array([[1, 0, 1]])), rtol=1e-6)
    both = losses.polarity_loss(logits, labels, np.array([[1, 1, 1]]))
    assert abs(float(both) - float(dedup)) > 1e-3


def test_polarity_loss_zero_spans_is_zero_with_finite_gradient():
    logits = jnp.ones((2, 3, 4))
    labels = -jnp.ones((2, 3), jnp.int32)
    mask = jnp.zeros((2, 3))
    value, grad = jax.value_and_grad(losses.polarity_loss)(logits, labels, mask)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0)


# ---------------------------------------------------------------- total and relation
def test_jml_loss_sums_mate_and_masc_one_to_one():
    rng = np.random.default_rng(6)
    s, e = rng.normal(size=(2, 2, 7)).astype(np.float32)
    ys = multi_hot(2, 7, [{1}, {2, 4}])
    ye = multi_hot(2, 7, [{2}, {3, 5}])
    pol = rng.normal(size=(2, 3, 4)).astype(np.float32)
    labels = np.array([[2, 0, 0], [1, 3, 0]])
    mask = np.array([[1, 0, 0], [1, 1, 0]])
    total, parts = losses.jml_loss(s, e, ys, ye, pol, labels, mask)
    mate = (np_boundary_loss(s, ys) + np_boundary_loss(e, ye)) / 2
    masc = np_polarity_loss(pol, labels, mask)
    np.testing.assert_allclose(parts["mate_loss"], mate, rtol=1e-6)
    np.testing.assert_allclose(parts["masc_loss"], masc, rtol=1e-6)
    np.testing.assert_allclose(total, mate + masc, rtol=1e-6)
    assert parts["loss"] is total


def test_jml_loss_padded_rows_contribute_nothing():
    rng = np.random.default_rng(7)
    s, e = rng.normal(size=(2, 3, 7)).astype(np.float32)
    ys = multi_hot(3, 7, [{1}, {2, 4}, {5}])
    ye = multi_hot(3, 7, [{2}, {3, 5}, {6}])
    pol = rng.normal(size=(3, 2, 4)).astype(np.float32)
    labels = np.array([[2, 0], [1, 3], [3, 3]])
    mask = np.array([[1, 0], [1, 1], [1, 1]])  # row 2: a padding row with stale content
    padded, _ = losses.jml_loss(s, e, ys, ye, pol, labels, mask, valid_rows=np.array([1, 1, 0]))
    real, _ = losses.jml_loss(s[:2], e[:2], ys[:2], ye[:2], pol[:2], labels[:2], mask[:2])
    np.testing.assert_allclose(padded, real, rtol=1e-6)


def test_relation_loss_is_mean_ce_over_r_and_v_rows():
    # Zero logits: every row costs ln 2.
    np.testing.assert_allclose(
        losses.relation_loss(jnp.zeros((3, 2, 2)), jnp.array([[0, 1], [1, 1], [0, 0]])),
        math.log(2), rtol=1e-6)
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(4, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(4, 2))
    lp = np_log_softmax(logits)
    expected = -np.mean([lp[b, r, labels[b, r]] for b in range(4) for r in range(2)])
    np.testing.assert_allclose(losses.relation_loss(logits, labels), expected, rtol=1e-6)
    stale = labels.copy()
    stale[3] = -1  # a padding row may hold any label
    padded = losses.relation_loss(logits, stale, valid_rows=np.array([1, 1, 1, 0]))
    expected3 = -np.mean([lp[b, r, labels[b, r]] for b in range(3) for r in range(2)])
    np.testing.assert_allclose(padded, expected3, rtol=1e-6)


# ---------------------------------------------------------------- groups (one-pass accumulation)
def _random_jml_inputs(rng, batch, length=9, spans=3):
    s, e = rng.normal(size=(2, batch, length)).astype(np.float32)
    ys = (rng.random((batch, length)) < 0.2).astype(np.int32)
    ye = (rng.random((batch, length)) < 0.2).astype(np.int32)
    ys[:, 1] = ye[:, 2] = 1
    pol = rng.normal(size=(batch, spans, 4)).astype(np.float32)
    labels = rng.integers(1, 4, (batch, spans))
    mask = (rng.random((batch, spans)) < 0.5).astype(np.int32)
    bmask = np.ones((batch, length), np.int32)
    bmask[:, -2:] = 0
    ys[:, -2:] = ye[:, -2:] = 0
    return s, e, ys, ye, pol, labels, mask, bmask


def test_jml_loss_groups_is_the_mean_of_per_group_losses():
    """groups=4 over 4 contiguous groups of 3 rows == the mean of 4 calls, one
    per group (§5.3, §5.4), with the boundary mask and a padding row."""
    rng = np.random.default_rng(9)
    groups, rows = 4, 3
    s, e, ys, ye, pol, labels, mask, bmask = _random_jml_inputs(rng, groups * rows)
    valid = np.ones(groups * rows, np.int32)
    valid[-1] = 0
    total, parts = losses.jml_loss(s, e, ys, ye, pol, labels, mask, boundary_mask=bmask,
                                   valid_rows=valid, groups=groups)
    per_group = [
        losses.jml_loss(*(x[g * rows:(g + 1) * rows] for x in (s, e, ys, ye, pol, labels, mask)),
                        boundary_mask=bmask[g * rows:(g + 1) * rows],
                        valid_rows=valid[g * rows:(g + 1) * rows])[1]
        for g in range(groups)
    ]
    for key in ("loss", "mate_loss", "masc_loss"):
        np.testing.assert_allclose(parts[key], np.mean([p[key] for p in per_group]), rtol=1e-6)
    assert parts["loss"] is total
    # One masked mean over all spans of the batch is a different number.
    whole, _ = losses.jml_loss(s, e, ys, ye, pol, labels, mask, boundary_mask=bmask, valid_rows=valid)
    assert abs(float(whole) - float(total)) > 1e-3


def test_relation_loss_groups_is_the_mean_of_per_group_losses():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(6, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(6, 2))
    valid = np.array([1, 1, 1, 1, 0, 0])
    got = losses.relation_loss(logits, labels, valid, groups=2)
    want = np.mean([losses.relation_loss(logits[g * 3:(g + 1) * 3], labels[g * 3:(g + 1) * 3],
                                         valid[g * 3:(g + 1) * 3]) for g in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(losses.relation_loss(logits, labels, groups=3),
                               losses.relation_loss(logits, labels), rtol=1e-6)


def test_loss_groups_must_divide_the_batch():
    rng = np.random.default_rng(11)
    s, e, ys, ye, pol, labels, mask, _ = _random_jml_inputs(rng, 6)
    with pytest.raises(ValueError, match="does not split into 4 groups"):
        losses.jml_loss(s, e, ys, ye, pol, labels, mask, groups=4)
