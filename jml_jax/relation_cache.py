"""The frozen relation module's outputs, computed once per example instead of in every step.

In the joint model the relation module (its own BERT and ResNet, §2.2) is
frozen and in eval mode, and all the joint model uses of it is, per example,
``relation_probs`` [2] = (P(text represented), P(image adds)) (§2.5). When its
input is the same in every epoch (the fixed per-image crop, §1.4, the default;
or the centre crop), those two numbers never change, yet running the module
inside the steps costs about 28% of a paper-size train step's FLOPs and 54% of
an eval step's.

With the cache on (`decide`; ``model.relation_cache``):

  * the joint model is built with ``relation_inputs='batch'`` (models/jml.py):
    no ``relation`` subtree, so nothing frozen sits in the train state, the
    optimizer or the checkpoints, and it reads ``relation_probs`` [B, 2] from
    the batch (the same gate math, §2.5);
  * `RelationCache` holds the relation module's variables (`load_variables`:
    ``model.relation_init``, the relation part of ``model.original_checkpoint``,
    or the random init the whole joint model draws for its ``relation``
    subtree from ``config.seed``) and a jitted eval-mode forward on this
    process's devices, fed the normalised crop exactly as the joint model
    feeds its own module (§2.5);
  * `JointTask.prepare_inputs` (jml_jax/tasks.py) wraps the data: each eval
    split is run through the forward once, up front (a table [N, 2] by
    ``row``); train batches look their examples up by ``example_index`` and
    the forward runs on a batch only when one of its examples has not been
    seen yet (the first epoch, and the few examples it dropped), so every
    example is computed once per process. The tables are per process: with P
    processes each computes the examples its own rows need (at most the whole
    training set once), not the shared table of one global pass.

Because the checkpoints hold no relation module, evaluation and prediction
read it from the config again; `pin` keeps them honest. Training records the
module's per-array checksums in ``<workdir>/relation_fingerprint.json``; a
resumed run, an evaluation or a prediction whose config loads other relation
weights (another ``model.relation_init``, a re-run stage one, another seed's
random init) is refused with the arrays that differ.

With ``data.crop_mode='random'`` (a new crop per epoch) or
``model.relation_cache='off'`` the module stays inside the steps, as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jml_jax import contract, model_factory, weights
from jml_jax.axes import ROWS
from jml_jax.checkpointing import fingerprint, fingerprint_mismatches
from jml_jax.convert.common import unflatten_tree
from jml_jax.models.jml import JMLConfig, normalize_images
from jml_jax.models.relation import relation_probabilities
from jml_jax.train_state import raw_key

log = logging.getLogger(__name__)

MODES = ("auto", "off")
# Crop modes whose pixels of an example are the same in every epoch (data_pipeline/config.py).
STATIC_CROPS = ("fixed", "center")
RELATION = "relation"  # the joint model's name for its relation subtree (models/jml.py)
FINGERPRINT_FILE = "relation_fingerprint.json"


def decide(config) -> tuple[bool, str]:
    """``(on, why)``: whether the joint model's relation outputs are computed once.

    'auto' is on when the model uses images and their crop is the same in
    every epoch; 'off' always runs the module inside the steps.
    """
    mode = config.model.get("relation_cache", "auto")
    if mode not in MODES:
        raise ValueError(f"model.relation_cache={mode!r}; valid: {MODES}")
    if mode == "off":
        return False, "model.relation_cache='off': the relation module runs in every step"
    if not config.model.use_images:
        return False, "text-only model (model.use_images=False): there is no relation module"
    crop = config.data.get("crop_mode", "fixed")
    if crop not in STATIC_CROPS:
        return False, (f"data.crop_mode={crop!r} gives the relation module a new input every epoch, "
                       "so it runs in every step")
    return True, (f"data.crop_mode={crop!r} gives the frozen relation module the same input every epoch: "
                  "its outputs are computed once per example and read from the batch")


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


class _AsInJointModel(nn.Module):
    """The relation module under the name the joint model gives it, so a
    random init draws exactly what the joint model's init draws for its
    ``relation`` subtree (flax derives a submodule's keys from its path)."""

    jml: JMLConfig

    def setup(self):
        self.relation = model_factory.build_relation_model(self.jml, pad_group=0)  # as JMLModel.setup

    def __call__(self, input_ids, input_mask, pixels):
        return self.relation(input_ids, input_mask, pixels, deterministic=True, train=False)


def _init_inputs(config, jml: JMLConfig):
    """What the joint model's init feeds its relation module (its training
    inputs, jml_jax/contract.py, as `model_factory.make_init_fn` traces them)."""
    zeros = contract.zeros(contract.joint_inputs_of(config, 1, train=True))
    pixels = normalize_images(zeros["image"], jml.image_mean, jml.image_std).astype(jml.compute_dtype)
    return zeros["input_ids"], zeros["input_mask"], pixels


def relation_abstract(config, jml: JMLConfig) -> dict:
    """The relation module's variables as ShapeDtypeStructs: ``{'params', 'batch_stats'}``."""
    holder = _AsInJointModel(jml)
    tree = nn.meta.unbox(jax.eval_shape(lambda: holder.init(jax.random.PRNGKey(0), *_init_inputs(config, jml))))
    return {c: tree[c][RELATION] for c in tree}


def random_variables(config, jml: JMLConfig) -> dict:
    """The random relation variables of a joint model without ``model.relation_init``:
    what the whole model's init draws for its ``relation`` subtree from
    ``config.seed`` (jml_jax/train_state.py: the state's init key is the first
    half of ``split(PRNGKey(seed))``). tests/test_relation_cache.py checks the equality."""
    holder = _AsInJointModel(jml)
    init_key, _ = jax.random.split(raw_key(jax.random.PRNGKey(int(config.seed))))
    tree = nn.meta.unbox(jax.jit(lambda k: holder.init(k, *_init_inputs(config, jml)))(init_key))
    return jax.device_get({c: tree[c][RELATION] for c in tree})


def with_relation(abstract: Mapping[str, Any], relation: Mapping[str, Any]) -> dict:
    """Variables of the joint model without its relation subtree, plus ``relation``
    (``{'params', 'batch_stats'}`` of the relation module) under its name."""
    out = {c: dict(abstract.get(c) or {}) for c in ("params", "batch_stats")}
    for collection, tree in relation.items():
        out[collection][RELATION] = tree
    return {c: tree for c, tree in out.items() if tree}


def split_pieces(pieces: Mapping[str, np.ndarray]) -> tuple[dict, dict | None]:
    """Flat joint pieces -> ``(pieces without the relation subtree, the relation
    module's variables or None when no piece is the relation's)``."""
    rest, relation = {}, {}
    for key, value in pieces.items():
        collection, top, inner = (key.split("/", 2) + ["", ""])[:3]
        if top == RELATION:
            relation[f"{collection}/{inner}"] = value
        else:
            rest[key] = value
    return rest, (unflatten_tree(relation) if relation else None)


def load_variables(config, jml: JMLConfig) -> dict:
    """The frozen relation module's variables as the whole joint model would hold them.

    ``model.original_checkpoint`` (the whole joint model) wins, then
    ``model.relation_init``; without either, `random_variables`.
    """
    m = config.model
    module_jml = dataclasses.replace(jml, relation_inputs="module")
    if m.get("original_checkpoint"):
        full = model_factory.abstract_variables(model_factory.build_model(config), config)
        loaded = weights.load_joint(m.original_checkpoint, module_jml, full)
        return {c: loaded[c][RELATION] for c in loaded if RELATION in loaded[c]}
    if m.get("relation_init"):
        return weights.load_relation(m.relation_init, module_jml, relation_abstract(config, jml))
    log.warning("model.relation_init is not set: the relation module keeps its random init, "
                "so the image gate is meaningless (fine for tests and the demo only)")
    return random_variables(config, jml)


class _Table:
    """Host table of relation probs [2] by an integer key, grown on demand."""

    def __init__(self, size: int = 0):
        self.values = np.zeros((size, 2), np.float32)
        self.seen = np.zeros(size, bool)

    def _grow(self, keys: np.ndarray) -> None:
        need = int(keys.max()) + 1 if keys.size else 0
        if need > len(self.seen):
            size = max(need, 2 * len(self.seen))
            values, seen = np.zeros((size, 2), np.float32), np.zeros(size, bool)
            values[: len(self.seen)], seen[: len(self.seen)] = self.values, self.seen
            self.values, self.seen = values, seen

    def missing(self, keys: np.ndarray) -> np.ndarray:
        self._grow(keys)
        return ~self.seen[keys]

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        self._grow(keys)
        self.values[keys], self.seen[keys] = values, True

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys``; zeros for keys never computed (padding rows only)."""
        self._grow(keys)
        return np.where(self.seen[keys][:, None], self.values[keys], 0.0).astype(np.float32)

    @property
    def count(self) -> int:
        return int(self.seen.sum())


def _keys(batch: Mapping[str, Any], name: str) -> np.ndarray:
    if name not in batch:
        raise KeyError(f"the relation cache looks examples up by {name!r}, which the batch lacks "
                       f"(keys: {sorted(batch)})")
    keys = np.asarray(batch[name]).astype(np.int64).reshape(-1)
    if keys.size and keys.min() < 0:
        raise ValueError(f"batch {name!r} holds negative indices")
    return keys


class RelationCache:
    """The frozen relation module's eval-mode forward on this process's devices,
    and the per-split tables of its outputs.

    Args:
      jml: the joint model's config (the module is built as `JMLModel` builds it).
      variables: ``{'params', 'batch_stats'}`` of the relation module (`load_variables`).
    """

    def __init__(self, jml: JMLConfig, variables: Mapping[str, Any]):
        self.jml = jml
        model = model_factory.build_relation_model(jml, pad_group=0)  # as JMLModel.setup
        devices = jax.local_devices()
        self._mesh = Mesh(np.array(devices), (ROWS,))
        rep, rows = NamedSharding(self._mesh, PartitionSpec()), NamedSharding(self._mesh, PartitionSpec(ROWS))
        self._variables = jax.device_put(_variables(variables["params"], variables.get("batch_stats")), rep)

        def forward(variables, input_ids, input_mask, image):
            # §2.5: the joint model feeds its module the normalised crop of the main ResNet.
            pixels = normalize_images(image, jml.image_mean, jml.image_std).astype(jml.compute_dtype)
            logits = model.apply(variables, input_ids, input_mask, pixels, deterministic=True, train=False)
            return relation_probabilities(logits)

        self._forward = jax.jit(forward, in_shardings=(rep, rows, rows, rows), out_shardings=rep)
        self.batches_run = 0  # forward calls, for tests and logs

    def probs(self, batch: Mapping[str, Any]) -> np.ndarray:
        """relation probs [b, 2] float32 of a per-process batch (input_ids,
        input_mask, image), computed on this process's devices."""
        if self._variables is None:
            raise RuntimeError("the relation cache was released; no forward is left")
        if "image" not in batch:
            raise ValueError("the relation cache needs the batch's 'image' (the model uses images; "
                             "is data.image_dir set?)")
        arrays = [np.asarray(batch[k]) for k in ("input_ids", "input_mask", "image")]
        b = arrays[0].shape[0]
        pad = -b % self._mesh.size  # rows shard over the local devices
        if pad:
            arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
        self.batches_run += 1
        return np.asarray(jax.device_get(self._forward(self._variables, *arrays)))[:b].astype(np.float32)

    def release(self) -> None:
        """Frees the module's device memory once every table is complete."""
        self._variables = None
        self._forward = None

    # ----------------------------------------------------------------- splits

    def wrap_eval(self, split):
        """The EvalSplit with ``relation_probs`` [b, 2] in every batch, looked up by
        ``row``; the split is run through the module once, here."""
        t0 = time.perf_counter()
        table = _Table(int(split.num_examples or 0))
        batches = split.make_iter()
        try:
            for batch in batches:
                rows = _keys(batch, "row")
                real = np.asarray(batch["mask"]).reshape(-1) > 0 if "mask" in batch else np.ones(len(rows), bool)
                if real.any():
                    table.put(rows[real], self.probs(batch)[real])
        finally:
            if hasattr(batches, "close"):
                batches.close()
        log.info("relation cache: split %r, %d examples through the relation module in %.1fs",
                 split.name, table.count, time.perf_counter() - t0)

        def make_iter():
            return _WithProbs(split.make_iter(), lambda batch: table.get(_keys(batch, "row")))

        return dataclasses.replace(split, make_iter=make_iter)

    def wrap_train(self, train_data, *, release_when_complete: bool = True):
        """The TrainData with ``relation_probs`` [b, 2] in every batch, looked up
        by ``example_index``; a batch with an example not seen yet runs the
        module (the whole batch, one compiled shape) and fills its rows. With
        ``release_when_complete`` the module's memory is freed once all
        ``train_data.num_examples`` examples are in the table."""
        table = _Table(int(train_data.num_examples))
        complete = int(train_data.num_examples)

        def lookup(batch):
            keys = _keys(batch, "example_index")
            if table.missing(keys).any():
                table.put(keys, self.probs(batch))
                if release_when_complete and table.count >= complete:
                    log.info("relation cache: all %d training examples computed (%d batches); "
                             "the relation module is released", complete, self.batches_run)
                    self.release()
            return table.get(keys)

        def make_iter(start_step):
            return _WithProbs(train_data.make_iter(start_step), lookup)

        return dataclasses.replace(train_data, make_iter=make_iter)


class _WithProbs:
    """An iterator of batches with ``relation_probs`` added; closes the inner one."""

    def __init__(self, inner: Iterator[dict], lookup):
        self._inner, self._lookup = inner, lookup

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._inner)
        return {**batch, "relation_probs": self._lookup(batch)}

    def close(self) -> None:
        if hasattr(self._inner, "close"):
            self._inner.close()


def describe_source(config) -> str:
    """Where `load_variables` takes the relation module from, in words."""
    m = config.model
    if m.get("original_checkpoint"):
        return f"model.original_checkpoint={m.original_checkpoint}"
    if m.get("relation_init"):
        return f"model.relation_init={m.relation_init}"
    return f"the random init of seed={config.seed} (model.relation_init is not set)"


def pin(workdir: str | pathlib.Path, variables: Mapping[str, Any], source: str, *, record: bool) -> None:
    """Checks the relation variables against the ones ``workdir`` trained with.

    With ``record`` (training) a workdir without a record gets one (process 0
    writes it); without (evaluation, prediction) a missing record, from a run
    older than the record, is only logged.
    """
    path = pathlib.Path(workdir) / FINGERPRINT_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        bad = fingerprint_mismatches(variables, saved["arrays"])
        if bad:
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise ValueError(
                f"the relation module loaded from {source} is not the one {workdir} was trained with "
                f"({saved.get('source', 'unrecorded source')}): {len(bad)} of {len(saved['arrays'])} arrays "
                f"differ ({shown}). The checkpoints hold no relation module (model.relation_cache), so the "
                "config must load the same one: point model.relation_init (or model.original_checkpoint, or "
                "the seed of a random init) at what the run used")
    elif not record:
        log.warning("%s has no %s (a run from before it was recorded): cannot check that the relation "
                    "module from %s is the one it trained with", workdir, FINGERPRINT_FILE, source)
    elif jax.process_index() == 0:
        path.write_text(json.dumps({"source": source, "arrays": fingerprint(variables)}, indent=1) + "\n")


def attach(config, jml: JMLConfig, variables: Mapping[str, Any] | None, train_data, eval_splits, *,
           workdir: str | pathlib.Path | None = None):
    """``(train_data, eval_splits)`` carrying ``relation_probs`` (either may be None).

    ``variables``: the relation module's, when the caller has them already
    (JointTask.pretrained); otherwise `load_variables`. ``workdir``:
    the run whose checkpoints the outputs feed, checked with `pin` (recorded
    when ``train_data`` is given).
    """
    if variables is None:
        variables = load_variables(config, jml)
    if workdir is not None:
        pin(workdir, variables, describe_source(config), record=train_data is not None)
    cache = RelationCache(jml, variables)
    if eval_splits is not None:
        eval_splits = {name: cache.wrap_eval(split) for name, split in eval_splits.items()}
    if train_data is not None:
        train_data = cache.wrap_train(train_data)
    else:
        cache.release()
    return train_data, eval_splits

