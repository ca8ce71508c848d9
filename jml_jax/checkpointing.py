"""Orbax checkpoints behind one module: train states, plain weights, clear errors.

Layout of a work directory::

    <workdir>/checkpoints/<step>/state/      the TrainState pytree (OCDBT)
                                 metadata/   JSON: step, metrics, config, data position
                                 metrics/    the tracked metric (Orbax's own)
                                 commit_success.txt   written when the step is final
    <workdir>/best/<step>/variables/         {'params', 'batch_stats'} of the best
                                 metadata/   evaluation so far (`save_best`): no
                                             optimizer state, one step kept

One `ocp.CheckpointManager` keeps the latest ``keep`` resumable steps; a second
keeps the one best model (``best/``, written by the training loop's
`Checkpointer.save_best`: the only meaning of "best"). Both are restored by
one path (`_restore_step`: structure check, restore, fingerprint check) into
the shardings of a target, so a checkpoint written on 8 devices restores on 1,
or on another mesh shape.

Orbax finalises a step by writing ``commit_success.txt`` into a temporary
``<step>.orbax-checkpoint-tmp-<time>`` directory and renaming it (on GCS, where
renames are not atomic, the marker alone marks completion). A step without the
marker, or without its items, is incomplete: asked for by number it is an
error; when looking for the latest step it is skipped with a warning (a save
cut short by preemption), but if nothing complete exists it is an error too,
never a silent fresh start.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE = "state"
METADATA = "metadata"
VARIABLES = "variables"
BEST_DIR = "best"
COMMIT_FILE = "commit_success.txt"
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
_TMP_RE = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
_RESERVED = ("step", "metrics", "fingerprint")
_MAX_LISTED = 10


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; names the path and the cause."""

    def __init__(self, path: Any, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{cause} (checkpoint path: {self.path})")


class CheckpointStructureError(CheckpointError):
    """A checkpoint does not fit the target state (wrong config or model)."""

    def __init__(self, path: Any, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = ["the checkpoint does not fit the target state (a different model or config?)"]

        def listed(items):
            more = len(items) - _MAX_LISTED
            return ", ".join(items[:_MAX_LISTED]) + (f", ... ({more} more)" if more > 0 else "")

        if self.missing:
            parts.append(f"not in the checkpoint ({len(self.missing)}): {listed(self.missing)}")
        if self.unexpected:
            parts.append(f"only in the checkpoint ({len(self.unexpected)}): {listed(self.unexpected)}")
        if self.mismatched:
            parts.append(
                f"wrong shape ({len(self.mismatched)}): "
                + listed([f"{k} target {t} checkpoint {c}" for k, t, c in self.mismatched])
            )
        super().__init__(path, "; ".join(parts))


# ---------------------------------------------------------------------------
# Helpers: JSON, paths, structure checks.


def _jsonable(value: Any, where: str) -> Any:
    if hasattr(value, "to_dict") and callable(value.to_dict):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    raise TypeError(f"checkpoint metadata {where} of type {type(value).__name__} is not JSON-serialisable")


def _path(p: Any) -> epath.Path:
    s = os.fspath(p)
    if "://" not in s:
        s = os.path.abspath(s)
    return epath.Path(s)


def _step_is_complete(step_dir: epath.Path, items: tuple[str, ...]) -> str | None:
    """``None`` when complete, else what is missing."""
    if not (step_dir / COMMIT_FILE).exists():
        return f"no {COMMIT_FILE} (the save did not finish)"
    for item in items:
        if not (step_dir / item).is_dir():
            return f"no {item!r} item"
    return None


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flatten_target(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves}


def _flatten_saved(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        if tree is not None and hasattr(tree, "shape"):
            out[prefix] = tuple(tree.shape)
        return out
    for k, v in items:
        out.update(_flatten_saved(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def _check_structure(path: Any, target: Any, saved_metadata: Any) -> None:
    saved_metadata = getattr(saved_metadata, "tree", saved_metadata)
    want, have = _flatten_target(target), _flatten_saved(saved_metadata)
    missing = sorted(k for k in want if k not in have)
    unexpected = sorted(k for k in have if k not in want)
    mismatched = sorted((k, want[k], have[k]) for k in want if k in have and want[k] != have[k])
    if missing or unexpected or mismatched:
        raise CheckpointStructureError(path, missing, unexpected, mismatched)


def _as_bits(x: jax.Array) -> jax.Array:
    """The array's bit patterns as uint32 (floats bitcast, narrower types widened)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    if x.dtype.itemsize == 1:
        return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint64).astype(jnp.uint32)


@jax.jit
def _fingerprint_leaves(leaves):
    # Sums of bit patterns wrap modulo 2**32: exact and independent of how the
    # array is sharded, so a checkpoint written on 8 devices checks on 1.
    out = []
    for x in leaves:
        bits = _as_bits(x).ravel()
        out.append(jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * bits, dtype=jnp.uint32)]))
    return out


def fingerprint(tree: Any) -> dict[str, list[int]]:
    """Per leaf (by path): two uint32 checksums of its bit patterns, computed on
    the devices; any flipped byte in a data file changes them."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not leaves:
        return {}
    sums = jax.device_get(_fingerprint_leaves([leaf for _, leaf in leaves]))
    return {"/".join(_key_name(e) for e in path): [int(v) for v in np.asarray(s)]
            for (path, _), s in zip(leaves, sums)}


def fingerprint_mismatches(tree: Any, expected: Mapping[str, Any]) -> list[str]:
    """Leaf paths, sorted, whose checksums in ``tree`` differ from ``expected``
    (a `fingerprint`, e.g. read back from JSON) or that only one side has."""
    got = fingerprint(tree)
    want = {k: list(v) for k, v in expected.items()}
    return sorted(k for k in set(want) | set(got) if got.get(k) != want.get(k))


def _check_fingerprint(path: Any, restored: Any, expected: Mapping[str, Any] | None) -> None:
    if not expected:
        return  # written before checksums were recorded
    bad = fingerprint_mismatches(restored, expected)
    if bad:
        raise CheckpointError(path, f"the data files are damaged: {len(bad)} array(s) read back differently "
                                    f"from what was saved ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")


def _restore_target(target: Any) -> Any:
    """Concrete arrays -> `ShapeDtypeStruct`s with their shardings."""

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            if x.sharding is None:
                raise ValueError(
                    f"restore target leaf {x} has no sharding; build the target with "
                    "jml_jax.train_state.abstract_sharded_state"
                )
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

    return jax.tree.map(one, target)


# ---------------------------------------------------------------------------
# Train-state checkpoints.


def _restore_step(manager, step_dir: epath.Path, step: int, item: str, target: Any) -> tuple[Any, dict]:
    """The one restore path of ``checkpoints/`` and ``best/``: ``(tree, metadata)``
    of ``manager``'s ``step``, item ``item`` (with a JSON ``metadata`` item
    beside it), read into ``target``'s shapes, dtypes and shardings after a
    structure check, then checked against the checksums saved with it."""
    target = _restore_target(target)
    try:
        saved = manager.item_metadata(step)[item]
    except Exception as err:
        raise CheckpointError(step_dir, f"cannot read the checkpoint's metadata: {err}") from err
    if not _flatten_saved(getattr(saved, "tree", saved)):
        # Orbax answers None when <item>/_METADATA is gone or unreadable:
        # damage, not a checkpoint of another model.
        raise CheckpointError(step_dir, f"cannot read the checkpoint's array metadata ({item}/_METADATA "
                                        "missing or damaged)")
    _check_structure(step_dir, target, saved)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(target), METADATA: ocp.args.JsonRestore()}))
    except Exception as err:
        raise CheckpointError(step_dir, f"restoring step {step} failed: {err}") from err
    meta = dict(restored[METADATA])
    _check_fingerprint(step_dir, restored[item], meta.pop("fingerprint", None))
    return restored[item], meta


class BestModel:
    """``<workdir>/best``: the best model of a run (params and batch_stats, no
    optimizer state), replaced by each better evaluation. `Checkpointer` keeps
    one beside its checkpoints; each run of a population keeps its own in its
    own folder (jml_jax/population.py) while the population's checkpoints
    hold every run.

    Args:
      workdir: the run's directory.
      create: create the folder on first save; with ``False`` a missing folder
        is a `CheckpointError` at `restore_best`.
    """

    def __init__(self, workdir: Any, *, create: bool = True):
        self.directory = _path(workdir) / BEST_DIR
        self._create = create
        self._manager = None  # created on first use

    def _best_manager(self):
        """Orbax manager of ``<workdir>/best`` (created on first use)."""
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True,
                                                     create=self._create),
                item_names=(VARIABLES, METADATA),
                item_handlers={VARIABLES: ocp.StandardCheckpointHandler(), METADATA: ocp.JsonCheckpointHandler()},
            )
        return self._manager

    def save_best(self, step: int, variables: Mapping[str, Any], scores: Mapping[str, Any]) -> None:
        """Keeps ``variables`` ({'params', 'batch_stats'}) as the best model so far,
        replacing the previous best: what evaluation restores as 'best', without
        the optimizer state a resumable checkpoint needs (asynchronous)."""
        step = int(step)
        meta = {"step": step, "metrics": _jsonable(dict(scores), "scores"), "fingerprint": fingerprint(variables)}
        manager = self._best_manager()
        if step in manager.all_steps():  # re-evaluated after a resume: replace it
            manager.delete(step)
        try:
            manager.save(step, args=ocp.args.Composite(**{
                VARIABLES: ocp.args.StandardSave(dict(variables)), METADATA: ocp.args.JsonSave(meta)}),
                force=True)
        except Exception as err:
            raise CheckpointError(self.directory, f"saving the best step {step} failed: {err}") from err

    def restore_best(self, target: Mapping[str, Any]) -> tuple[Any, dict]:
        """``(variables, metadata)`` of the best model kept by `save_best`,
        restored into ``target``'s shapes and shardings."""
        folder = self.directory
        manager = self._best_manager() if folder.is_dir() else None
        step = manager.latest_step() if manager is not None else None
        if step is None:
            if not folder.is_dir() and not (folder.parent / "checkpoints").is_dir():
                raise CheckpointError(folder, f"no checkpoint directory: nothing was trained in {folder.parent} "
                                              "(neither best/ nor checkpoints/; is the workdir right?)")
            raise CheckpointError(folder, "no best model saved (no evaluation has run, or no select_split)")
        return _restore_step(manager, folder / str(step), step, VARIABLES, dict(target))

    def wait(self) -> None:
        """Blocks until a background save has finished."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for background saves and releases Orbax's threads."""
        if self._manager is not None:
            self._manager.close()


class Checkpointer:
    """Resumable checkpoints of a `TrainState`, and the best model of the run.

    Args:
      workdir: the run's directory; checkpoints go to ``<workdir>/checkpoints``,
        the best model (`save_best`) to ``<workdir>/best``.
      keep: how many latest steps to keep (``None``: all).
      async_save: write in a background thread; `save` returns once the
        arrays are copied off the devices (so the state may be donated next).
      create: create the directory; with ``False`` a missing directory is a
        `CheckpointError` (evaluation of an existing run).

    Every process must make the same calls (Orbax synchronises them).
    """

    def __init__(
        self,
        workdir: Any,
        *,
        keep: int | None = 3,
        async_save: bool = True,
        create: bool = True,
    ):
        self.directory = _path(workdir) / "checkpoints"
        if not create and not self.directory.is_dir():
            raise CheckpointError(self.directory, "no checkpoint directory")
        self._best = BestModel(workdir, create=create)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            enable_async_checkpointing=async_save,
            create=create,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=(STATE, METADATA),
            item_handlers={STATE: ocp.StandardCheckpointHandler(), METADATA: ocp.JsonCheckpointHandler()},
        )

    # -- saving -------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        metadata: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` at ``step`` with JSON ``metadata`` and ``metrics``.

        ``metadata`` holds what a resumed run needs besides the arrays (the
        config, the data iterator position, ...); ``step`` and ``metrics`` are
        added to it (a record: nothing ranks steps by them; the best model is
        `save_best`'s). ``force`` saves even when Orbax's save policy would
        skip the step.

        Returns:
          Whether a checkpoint was written.
        """
        step = int(step)
        metrics = dict(_jsonable(dict(metrics or {}), "metrics"))
        user = _jsonable(dict(metadata or {}), "metadata")
        for key in _RESERVED:
            if key in user and user[key] != {"step": step, "metrics": metrics}.get(key):
                raise ValueError(f"checkpoint metadata key {key!r} is reserved (given {user[key]!r})")
        meta = {**user, "step": step, "metrics": metrics, "fingerprint": fingerprint(state)}
        try:
            return self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardSave(state), METADATA: ocp.args.JsonSave(meta)}
                ),
                force=force,
            )
        except Exception as err:  # Orbax raises several types; name the path.
            raise CheckpointError(self.directory / str(step), f"saving step {step} failed: {err}") from err

    def save_best(self, step: int, variables: Mapping[str, Any], scores: Mapping[str, Any]) -> None:
        """`BestModel.save_best` of ``<workdir>/best``."""
        self._best.save_best(step, variables, scores)

    def restore_best(self, target: Mapping[str, Any]) -> tuple[Any, dict]:
        """`BestModel.restore_best` of ``<workdir>/best``."""
        return self._best.restore_best(target)

    def wait(self) -> None:
        """Blocks until a background save has finished."""
        self._manager.wait_until_finished()
        self._best.wait()

    def close(self) -> None:
        """Waits for background saves and releases Orbax's threads."""
        self._manager.close()
        self._best.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- bookkeeping --------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest step saved or being saved; ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _scan(self) -> tuple[list[int], dict[int, str]]:
        """Complete steps, and incomplete ones with the reason, read from disk."""
        complete, incomplete = [], {}
        if not self.directory.is_dir():
            return complete, incomplete
        for child in self.directory.iterdir():
            name = child.name
            tmp = _TMP_RE.match(name)
            if tmp:
                incomplete[int(tmp.group(1))] = f"interrupted save left {name}"
            elif name.isdigit() and child.is_dir():
                problem = _step_is_complete(child, (STATE, METADATA))
                if problem:
                    incomplete[int(name)] = problem
                else:
                    complete.append(int(name))
        return sorted(complete), incomplete

    def _resolve(self, step: int | str) -> int:
        self.wait()
        complete, incomplete = self._scan()
        if step == "latest":
            if not complete:
                cause = "no checkpoint"
                if incomplete:
                    cause = "only incomplete checkpoints: " + "; ".join(
                        f"step {s}: {why}" for s, why in sorted(incomplete.items())
                    ) + " (delete them to start afresh)"
                raise CheckpointError(self.directory, cause)
            newer = {s: why for s, why in incomplete.items() if s > complete[-1]}
            if newer:
                log.warning(
                    "ignoring incomplete checkpoints newer than step %d in %s: %s",
                    complete[-1], self.directory, newer,
                )
            return complete[-1]
        if not isinstance(step, (int, np.integer)):
            raise ValueError(f"step must be an int or 'latest' (the best model: restore_best), got {step!r}")
        step = int(step)
        if step in incomplete:
            raise CheckpointError(
                self.directory / str(step), f"checkpoint for step {step} is incomplete: {incomplete[step]}"
            )
        if step not in complete:
            raise CheckpointError(
                self.directory, f"no checkpoint for step {step}; complete steps: {complete}"
            )
        return step

    # -- restoring ----------------------------------------------------------

    def restore(self, step: int | Literal["latest"], target: Any) -> tuple[Any, dict]:
        """Restores a state into the shapes, dtypes and shardings of ``target``.

        Args:
          step: a step number or ``"latest"`` (the best model: `restore_best`).
          target: the abstract state from
            `jml_jax.train_state.abstract_sharded_state` (``ShapeDtypeStruct``
            leaves with shardings), or a concrete state whose shardings to use.

        Returns:
          ``(state, metadata)``; ``metadata`` is what `save` stored (``step``
          and ``metrics`` included).

        Raises:
          CheckpointError: no such step, an incomplete step, or (as
          `CheckpointStructureError`) a checkpoint that does not fit ``target``.
        """
        if not self.directory.is_dir():
            raise CheckpointError(self.directory, "no checkpoint directory")
        step = self._resolve(step)
        return _restore_step(self._manager, self.directory / str(step), step, STATE, target)

    def restore_or_none(self, target: Any, *, check=None,
                        allow_fresh_start: bool = False) -> tuple[Any, dict] | None:
        """The latest usable checkpoint, or ``None`` for a fresh start.

        A fresh start is a work directory with no checkpoint at all, or with
        only the temporary folder of a first save that was cut short (a job
        killed during its first save can simply be requeued).

        The newest complete step is restored first; when it cannot be read
        (any of its files missing or damaged), or ``check(state)`` is False
        (``check`` verifies, e.g., that every value is finite: flipped bytes
        in a data file read back as NaN), the previous complete step is tried.
        Once one restores, the newer ones are moved to
        ``<workdir>/damaged_checkpoints/`` with a warning naming what was
        wrong. A step that does not fit ``target`` counts as damaged when an
        older step does fit (a deleted ``_METADATA`` looks like another
        model); when no step fits, it is another model or config:
        `CheckpointStructureError`, and nothing is moved.

        Raises `CheckpointError` when checkpoints exist but none is usable,
        and on every later call while ``damaged_checkpoints/`` holds steps and
        ``checkpoints/`` none, so a broken run is never silently restarted
        from scratch; ``allow_fresh_start=True`` starts afresh then (that
        folder and the old ``best/`` move to ``<workdir>/abandoned_run/``).
        """
        self.wait()
        complete, incomplete = self._scan()
        if not complete:
            if incomplete and not all(why.startswith("interrupted save") for why in incomplete.values()):
                return self.restore("latest", target)  # raises, naming the incomplete steps
            self._check_fresh_start(allow_fresh_start)
            if incomplete:
                log.warning("%s holds only the temporary folder of an interrupted first save (%s): "
                            "starting afresh", self.directory, sorted(incomplete))
            return None
        newer = {s: why for s, why in incomplete.items() if s > complete[-1]}
        if newer:
            log.warning("ignoring incomplete checkpoints newer than step %d in %s: %s",
                        complete[-1], self.directory, newer)
        problems: list[str] = []
        failed: list[int] = []
        structure: list[CheckpointStructureError] = []
        for step in reversed(complete):
            try:
                state, meta = self.restore(step, target)
            except CheckpointStructureError as err:
                structure.append(err)
                problems.append(f"step {step}: does not fit the target state ({err.cause[:200]})")
            except CheckpointError as err:
                problems.append(f"step {step}: {err.cause}")
            else:
                if check is None or check(state):
                    if failed:
                        for bad in failed:
                            self._set_aside(bad)
                        log.warning("resuming from step %d: newer checkpoints are damaged (%s); they were "
                                    "moved to %s", step, "; ".join(problems), self._damaged_dir())
                    return state, meta
                problems.append(f"step {step}: the restored values are not finite (damaged data files)")
            failed.append(step)
        if len(structure) == len(complete):
            raise structure[0]  # no step fits: another model or config; nothing is moved
        for bad in failed:
            self._set_aside(bad)
        raise CheckpointError(self.directory, "no usable checkpoint: " + "; ".join(problems)
                              + f" (moved to {self._damaged_dir()}; rerun with --allow_fresh_start to "
                              "train from step 0)")

    def _check_fresh_start(self, allow: bool) -> None:
        """Refuses a fresh start while ``damaged_checkpoints/`` holds steps
        (every checkpoint of the run was set aside), unless ``allow``: then
        that folder and the old ``best/`` move to ``abandoned_run[.N]/``, so
        the new run starts clean and later reruns resume it normally."""
        damaged = self._damaged_dir()
        if not damaged.is_dir() or not any(child.name[:1].isdigit() for child in damaged.iterdir()):
            return
        if not allow:
            raise CheckpointError(
                self.directory, f"every checkpoint of this run was set aside as damaged (in {damaged}); "
                "refusing to train from step 0 beside its results. Rerun with --allow_fresh_start "
                "(train_and_evaluate(allow_fresh_start=True)) to start afresh, or use another workdir")
        parent = self.directory.parent
        name, n = "abandoned_run", 1
        while (parent / name).exists():
            name, n = f"abandoned_run.{n}", n + 1
        if jax.process_index() == 0:
            damaged.rename(parent / name)
            if (parent / BEST_DIR).is_dir():
                (parent / BEST_DIR).rename(parent / name / BEST_DIR)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jml_fresh_start")
        log.warning("starting afresh from step 0 as allowed: the damaged checkpoints and the old best model "
                    "are in %s", parent / name)

    def _damaged_dir(self) -> epath.Path:
        return self.directory.parent / "damaged_checkpoints"

    def _set_aside(self, step: int) -> None:
        """Moves a damaged step out of the manager's folder (process 0), so
        training can save that step number again."""
        if jax.process_index() == 0:
            target = self._damaged_dir()
            target.mkdir(parents=True, exist_ok=True)
            name, n = str(step), 1
            while (target / name).exists():
                name, n = f"{step}.{n}", n + 1
            (self.directory / str(step)).rename(target / name)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jml_set_aside_{step}")
        self._manager.reload()


# ---------------------------------------------------------------------------
# Plain parameter trees (converted weights).


def save_params(path: Any, params: Any, *, overwrite: bool = False) -> None:
    """Writes a parameter tree (e.g. converted pretrained weights) to ``path``.

    Every process must call it with the same (global) arrays or NumPy values.
    """
    path = _path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(path, "already exists (pass overwrite=True to replace it)")
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        checkpointer.save(path, args=ocp.args.StandardSave(params), force=overwrite)
    except Exception as err:
        raise CheckpointError(path, f"saving parameters failed: {err}") from err
    finally:
        checkpointer.close()


def restore_params(path: Any, abstract: Any = None, shardings: Any = None) -> Any:
    """Reads a tree written by `save_params`.

    Args:
      path: the directory `save_params` wrote.
      abstract: the expected tree (``ShapeDtypeStruct`` or array leaves, e.g.
        ``jax.eval_shape`` of the model's params, unboxed). When given, the
        checkpoint must match it exactly (`CheckpointStructureError` otherwise)
        and leaves are cast to its dtypes. Default: the saved tree as is.
      shardings: a matching tree of shardings (or one sharding for all);
        default: each leaf whole on this process's first device, or the
        shardings on ``abstract``'s leaves when they have them.

    Returns:
      The tree of `jax.Array`s.
    """
    path = _path(path)
    if not path.is_dir():
        raise CheckpointError(path, "no parameter checkpoint at this path")
    if not (path / COMMIT_FILE).exists():
        raise CheckpointError(path, f"incomplete parameter checkpoint: no {COMMIT_FILE} (the save did not finish)")
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        try:
            saved = checkpointer.metadata(path)
            saved = getattr(saved, "item_metadata", saved)
            saved = getattr(saved, "tree", saved)
        except Exception as err:
            raise CheckpointError(path, f"cannot read the checkpoint's metadata: {err}") from err
        if abstract is None:
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), saved,
                is_leaf=lambda m: hasattr(m, "shape"),
            )
        else:
            _check_structure(path, abstract, saved)
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        if shardings is None:
            shardings = jax.tree.map(lambda a: getattr(a, "sharding", None) or default, abstract)
        elif isinstance(shardings, jax.sharding.Sharding):
            shardings = jax.tree.map(lambda _: shardings, abstract)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        try:
            return checkpointer.restore(path, args=ocp.args.StandardRestore(target))
        except Exception as err:
            raise CheckpointError(path, f"restoring parameters failed: {err}") from err
    finally:
        checkpointer.close()
