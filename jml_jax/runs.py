"""What a population is: ``config.runs`` read, checked and split into run configs.

A population is R runs of one architecture trained together in one program
(jml_jax/population.py). The config says which (configs/common.py
`runs_config`):

    runs.seeds = (1, 2, 3)              # one run per seed; empty: a single run
    runs.learning_rate = (2e-5, 3e-5, 5e-5)   # optional, one per seed
    runs.warmup_proportion, runs.weight_decay, runs.decode_threshold
    runs.axis = 0                       # devices of the mesh's 'runs' axis (0: auto)

Only fields that leave the architecture, the shapes and the data the same may
differ between runs (`PER_RUN_FIELDS`); anything else is one program's and
must be set once for all. Run ``r`` is, afterwards, the ordinary run of
`run_config(config, spec, r)`: its seed and its values in place, no runs.
Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

# runs.<field> -> the config field it sets for one run.
PER_RUN_FIELDS: Mapping[str, str] = {
    "learning_rate": "optimizer.learning_rate",
    "warmup_proportion": "optimizer.warmup_proportion",
    "weight_decay": "optimizer.weight_decay",
    "decode_threshold": "decode.logit_threshold",
}
RUNS_FIELDS = ("seeds", "axis") + tuple(PER_RUN_FIELDS)


@dataclasses.dataclass(frozen=True)
class RunsSpec:
    """The runs of a population: ``seeds[r]`` and the per-run ``values[field][r]``
    of the fields the config gives per run; ``axis``: the runs mesh axis size
    asked for (0: auto, `runs_axis`)."""

    seeds: tuple[int, ...]
    values: Mapping[str, tuple]
    axis: int = 0

    @property
    def count(self) -> int:
        return len(self.seeds)

    def name(self, r: int) -> str:
        """The run's folder name under ``<workdir>/runs/``."""
        return f"seed_{self.seeds[r]}"

    @property
    def names(self) -> list[str]:
        return [self.name(r) for r in range(self.count)]


def _set(config, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def runs_spec(config) -> RunsSpec | None:
    """The config's population, or None for a single run (``runs.seeds`` empty).

    Raises:
      ValueError naming the field: a ``runs`` field that would change the
      architecture, the shapes or the data (anything but `RUNS_FIELDS`), a
      per-run tuple whose length is not the number of seeds, a per-run field
      without seeds, duplicate seeds, a value of the wrong kind.
    """
    runs = config.get("runs") if hasattr(config, "get") else None
    if not runs:
        return None
    fields = dict(runs.items()) if hasattr(runs, "items") else dict(runs)
    unknown = sorted(set(fields) - set(RUNS_FIELDS))
    if unknown:
        raise ValueError(
            f"runs.{unknown[0]}: runs of one population share their architecture, shapes and data; "
            f"only {list(PER_RUN_FIELDS)} may differ per run (and runs.seeds, runs.axis). Train runs "
            f"with another {unknown[0]} as another population")
    seeds = tuple(fields.get("seeds") or ())
    given = {k: tuple(fields.get(k) or ()) for k in PER_RUN_FIELDS if fields.get(k)}
    if not seeds:
        if given:
            raise ValueError(f"runs.{sorted(given)[0]} is set but runs.seeds is empty: give one seed per run")
        return None
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"runs.seeds={seeds!r}: seeds are integers")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"runs.seeds={seeds!r}: seed(s) {dup} appear twice; each run needs its own seed "
                         "(its folder runs/seed_<seed>, its data order, dropout and initialisation)")
    for field, values in given.items():
        if len(values) != len(seeds):
            raise ValueError(f"runs.{field} has {len(values)} values for {len(seeds)} seeds; give one per seed "
                             f"or none (every run then takes {PER_RUN_FIELDS[field]})")
        bad = [v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
        if bad:
            raise ValueError(f"runs.{field}={values!r}: {bad[0]!r} is not a finite number")
    axis = int(fields.get("axis") or 0)
    if axis < 0:
        raise ValueError(f"runs.axis={axis}: a device count, or 0 for auto")
    return RunsSpec(seeds=seeds, values=given, axis=axis)


def run_config(config, spec: RunsSpec, r: int):
    """The config of run ``r`` alone: its seed and per-run values, no runs.
    What its folder's config.json holds, so `launch.evaluate` and
    `launch.predict` read the run as any other."""
    c = config.copy_and_resolve_references()
    c.seed = int(spec.seeds[r])
    for field, values in spec.values.items():
        _set(c, PER_RUN_FIELDS[field], float(values[r]))  # every per-run field is a float
    for field in ("seeds",) + tuple(PER_RUN_FIELDS):
        c.runs[field] = ()
    c.runs.axis = 0
    return c


def runs_axis(spec: RunsSpec, num_devices: int) -> int:
    """The size of the mesh's ``runs`` axis: ``spec.axis``, or (0) the largest
    divisor of the device count that also divides the runs.

    Raises:
      ValueError naming runs.axis when it does not divide the devices or the runs.
    """
    if spec.axis:
        if num_devices % spec.axis:
            raise ValueError(f"runs.axis={spec.axis} does not divide the {num_devices} devices; choose a "
                             f"divisor of {num_devices} (or 0: the largest that divides the {spec.count} runs too)")
        if spec.count % spec.axis:
            raise ValueError(f"runs.axis={spec.axis} does not divide the {spec.count} runs: each slice of the "
                             f"runs axis holds the same number of runs")
        return spec.axis
    return math.gcd(spec.count, num_devices)


def with_seeds(config, count: int) -> Any:
    """``config`` as a population of ``count`` runs with seeds ``seed, seed + 1, ...``
    (`launch.plan --runs=R`)."""
    c = config.copy_and_resolve_references()
    c.runs.seeds = tuple(int(config.seed) + i for i in range(int(count)))
    return c
