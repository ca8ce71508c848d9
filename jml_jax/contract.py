"""The batch contract: which inputs a model reads, their shapes and dtypes, stated once.

A task (jml_jax/tasks.py) states its model's inputs with ``task.inputs(batch_size,
train=...)``, built from the functions here; everything that makes or reads a
batch follows that statement: the training loop (which keys it sends to the
device), the evaluators, the planner's abstract batches (tools/plan.py), the
model init (jml_jax/model_factory.py) and the one synthetic batch of the tests
and benchmarks (`synthetic_batch`).

Joint model (stage two, §1.3, §5.2): ``input_ids``, ``input_mask`` [B, L];
``span_starts``, ``span_ends`` [B, M]; in training also ``start_positions``,
``end_positions`` [B, L] (MATE targets) and ``polarity_labels``, ``span_mask``
[B, M] (MASC targets); in evaluation ``mask`` [B] (1 = a real row) and ``row``
[B] (the row's index into the split); ``image`` [B, S, S, 3] when the model
uses images; ``relation_probs`` [B, 2] when the relation cache is on
(jml_jax/relation_cache.py).

Relation module (stage one, §2.3): ``input_ids``, ``input_mask`` [B, L],
``labels`` [B, 2]; ``mask``, ``row`` [B] in evaluation; ``image`` [B, R, R, 3]
(the straight resize, §2.3) when it uses images.

All integer inputs are int32; images are uint8 (normalised on the device) or
float32 already normalised (``data.image_output``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

Inputs = dict[str, jax.ShapeDtypeStruct]

I32 = np.int32


def _spec(shapes: Mapping[str, tuple[tuple[int, ...], Any]]) -> Inputs:
    return {k: jax.ShapeDtypeStruct(shape, np.dtype(dtype)) for k, (shape, dtype) in shapes.items()}


def image_dtype(config) -> np.dtype:
    """What the data pipeline puts under 'image' (``data.image_output``)."""
    return np.dtype(np.float32 if config.data.get("image_output", "uint8") == "float32" else np.uint8)


def joint_inputs(batch_size: int, *, length: int, spans: int, train: bool, image_size: int | None = None,
                 image_dtype: Any = np.uint8, relation_probs: bool = False) -> Inputs:
    """The joint model's inputs (see the module docstring); ``image_size``
    None: a text-only model (no 'image')."""
    b = batch_size
    shapes = {"input_ids": ((b, length), I32), "input_mask": ((b, length), I32),
              "span_starts": ((b, spans), I32), "span_ends": ((b, spans), I32)}
    if train:
        shapes.update({"start_positions": ((b, length), I32), "end_positions": ((b, length), I32),
                       "polarity_labels": ((b, spans), I32), "span_mask": ((b, spans), I32)})
    else:
        shapes.update({"mask": ((b,), I32), "row": ((b,), I32)})
    if image_size is not None:
        shapes["image"] = ((b, image_size, image_size, 3), image_dtype)
    if relation_probs:
        shapes["relation_probs"] = ((b, 2), np.float32)
    return _spec(shapes)


def relation_inputs(batch_size: int, *, length: int, train: bool, image_size: int | None = None,
                    image_dtype: Any = np.uint8) -> Inputs:
    """The relation module's inputs (see the module docstring)."""
    b = batch_size
    shapes = {"input_ids": ((b, length), I32), "input_mask": ((b, length), I32), "labels": ((b, 2), I32)}
    if not train:
        shapes.update({"mask": ((b,), I32), "row": ((b,), I32)})
    if image_size is not None:
        shapes["image"] = ((b, image_size, image_size, 3), image_dtype)
    return _spec(shapes)


def joint_inputs_of(config, batch_size: int, *, train: bool, relation_probs: bool = False) -> Inputs:
    """`joint_inputs` at ``config``'s sizes (data.max_seq_length, data.max_spans,
    data.crop_size when model.use_images)."""
    d = config.data
    return joint_inputs(batch_size, length=int(d.max_seq_length), spans=int(d.max_spans), train=train,
                        image_size=int(d.crop_size) if config.model.use_images else None,
                        image_dtype=image_dtype(config), relation_probs=relation_probs)


def relation_inputs_of(config, batch_size: int, *, train: bool, use_images: bool) -> Inputs:
    """`relation_inputs` at ``config``'s sizes (data.relation_resize when images are used)."""
    d = config.data
    return relation_inputs(batch_size, length=int(d.max_seq_length), train=train,
                           image_size=int(d.relation_resize) if use_images else None,
                           image_dtype=image_dtype(config))


def take(batch: Mapping[str, Any], inputs: Mapping[str, Any], what: str = "the model") -> dict[str, Any]:
    """Exactly the entries of ``batch`` that ``inputs`` names (nothing else is
    sent to the devices); a missing one is an error naming it."""
    missing = [k for k in inputs if k not in batch]
    if missing:
        hint = " (is data.image_dir set?)" if "image" in missing else ""
        raise ValueError(f"the batch has no {missing} that {what} reads{hint}; it has {sorted(batch)}")
    return {k: batch[k] for k in inputs}


def zeros(inputs: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
    """Zero arrays of ``inputs``' shapes and dtypes (what the inits trace with)."""
    import jax.numpy as jnp

    return {k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}


def synthetic_batch(inputs: Mapping[str, jax.ShapeDtypeStruct], *, seed: int = 0, vocab_size: int = 100,
                    aspects: int = 2, overrun_every: int = 0) -> dict[str, np.ndarray]:
    """A random NumPy batch with exactly ``inputs``' keys, shapes and dtypes:
    the one synthetic batch of the tests, benchmarks and scripts.

    Text: row lengths n uniform in [L/2, L] (in [L/2, L - 3] with
    ``overrun_every``), ids in [1, vocab_size) on the tokens and 0 on padding.
    Aspects: ``aspects`` gold spans per row (at most the span slots), one in
    each of ``aspects`` equal parts of tokens 1 .. n-2 (never [CLS], [SEP] or
    padding), 1 to 3 tokens long, each in the MATE targets and the MASC slots
    with a polarity in 1..3. ``overrun_every`` k > 0: the first span of rows
    k-1, 2k-1, ... runs past its row's last token, which 'batch' span packing
    reads from the next row (§4). Images: uniform uint8 (standard normal when
    float32). ``relation_probs``: two random probabilities per row;
    ``labels``: random 0/1; ``mask``: ones; ``row``: 0..B-1.
    """
    rs = np.random.RandomState(seed)
    first = next(iter(inputs.values()))
    b = first.shape[0]
    out: dict[str, np.ndarray] = {}
    if "input_ids" in inputs:
        length = inputs["input_ids"].shape[1]
        top = length - 3 if overrun_every else length
        lengths = rs.randint(max(4, length // 2), max(4, top) + 1, b)
        mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
        out["input_ids"] = rs.randint(1, vocab_size, (b, length)).astype(np.int32) * mask
        out["input_mask"] = mask
    if "span_starts" in inputs:
        slots = inputs["span_starts"].shape[1]
        starts, ends = np.zeros((b, slots), np.int32), np.zeros((b, slots), np.int32)
        span_mask, labels = np.zeros((b, slots), np.int32), np.zeros((b, slots), np.int32)
        for r, n in enumerate(lengths):
            bounds = np.linspace(1, int(n) - 1, min(aspects, slots) + 1).astype(int)
            for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                if hi <= lo:
                    continue
                s = rs.randint(lo, hi)
                starts[r, j], ends[r, j] = s, min(s + rs.randint(0, 3), hi - 1)
                span_mask[r, j], labels[r, j] = 1, rs.randint(1, 4)
            if overrun_every and r % overrun_every == overrun_every - 1:
                starts[r, 0], ends[r, 0] = n - 2, n + 1
        out.update(span_starts=starts, span_ends=ends)
        if "span_mask" in inputs:
            out.update(span_mask=span_mask, polarity_labels=labels)
        if "start_positions" in inputs:
            start_pos, end_pos = np.zeros((b, length), np.int32), np.zeros((b, length), np.int32)
            rows, cols = np.nonzero(span_mask)
            start_pos[rows, starts[rows, cols]] = 1
            end_pos[rows, ends[rows, cols]] = 1
            out.update(start_positions=start_pos, end_positions=end_pos)
    if "labels" in inputs:
        out["labels"] = rs.randint(0, 2, inputs["labels"].shape).astype(np.int32)
    if "relation_probs" in inputs:
        out["relation_probs"] = rs.uniform(0, 1, inputs["relation_probs"].shape).astype(np.float32)
    if "image" in inputs:
        spec = inputs["image"]
        if spec.dtype == np.uint8:
            out["image"] = rs.randint(0, 256, spec.shape).astype(np.uint8)
        else:
            out["image"] = rs.standard_normal(spec.shape).astype(spec.dtype)
    if "mask" in inputs:
        out["mask"] = np.ones(b, np.int32)
    if "row" in inputs:
        out["row"] = np.arange(b, dtype=np.int32)
    unknown = sorted(set(inputs) - set(out))
    if unknown:
        raise ValueError(f"synthetic_batch: no rule for the inputs {unknown}")
    return {k: out[k] for k in inputs}
