"""Compile-only plan of a config on a TPU topology (no TPU needed; libtpu from requirements-plan.txt).

    python -m launch.plan --config=configs/twitter2015.py:bf16 --topology=v5e:2x4 --mesh=8,1,1 --json=p.json
    python -m launch.plan --config=configs/twitter2015.py:bf16 --table=docs/scale.md --rows=a.json,b.json

The first form compiles the config's train step and eval functions for the
slice and prints (and writes) per-chip memory, FLOPs, bytes accessed split
into forward, backward, optimizer, collectives and other (``bytes_split``,
``flops_split``; method in `tools.plan.phase_split`), collectives and a
roofline step time (compute, HBM or interconnect bound), and the traffic that
crosses HBM by XLA's memory spaces (``hbm_traffic_bytes``,
``hbm_traffic_split``; `tools.hlo_stats.hbm_traffic`) with the roofline it
gives (``roofline_hbm_traffic_step_seconds``);
``--steps=train`` compiles only the train step. The second
renders the scale table from plans written by the first (without ``--rows``,
it plans `tools.plan.TABLE_ROWS` one after another first). Every time is a
compile-time estimate, not a measurement.
"""

from __future__ import annotations

import os

# The planner needs only the host CPU and libtpu's compile-only client: keep
# JAX off any attached accelerator and libtpu off the TPU metadata server and
# its one-process lock (other JAX processes on this host may hold it).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import common  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:2x4, v5e:16x16, v5p:2x2x1, v4:2x2x4")
_MESH = flags.DEFINE_string("mesh", None, "data,fsdp,tensor sizes (one may be -1); default: the config's")
_RUNS = flags.DEFINE_integer(
    "runs", None, "plan a population of R runs in one program (seeds seed..seed+R-1; the mesh gains a "
    "runs axis, --mesh is each run's); default: the config's runs fields")
_JSON = flags.DEFINE_string("json", None, "write the plan here as JSON")
_HLO_DIR = flags.DEFINE_string("hlo_dir", None, "also write each compiled module's HLO text into this folder")
_STEPS = flags.DEFINE_list("steps", ["train", "eval"], "what to compile: train, eval")
_CONSTRAINTS = flags.DEFINE_bool(
    "activation_constraints", True, "apply model-code activation sharding constraints (the trainer's default)")
_TABLE = flags.DEFINE_string("table", None, "write the markdown scale table here")
_ROWS = flags.DEFINE_list("rows", [], "with --table: plans (JSON files) to render instead of planning them")
_COMPARE = flags.DEFINE_list(
    "constraint_rows", [], "with --table: two plans (JSON) of one config and mesh, with and without "
    "--activation_constraints, compared below the table")
_CACHE = common.define_compilation_cache_flag()


def main(argv):
    del argv
    from tools import plan as plan_lib

    common.enable_compilation_cache(_CACHE.value)
    config = _CONFIG.value
    try:
        if _TABLE.value:
            rows = [json.loads(pathlib.Path(p).read_text()) for p in _ROWS.value]
            if not rows:
                rows = [plan_lib.plan_or_error(config, t, m) for t, m in plan_lib.TABLE_ROWS]
            text = plan_lib.scale_table(rows, config, command=" ".join(["python -m launch.plan"] + sys.argv[1:]))
            if _COMPARE.value:
                if len(_COMPARE.value) != 2:
                    raise plan_lib.PlanError("--constraint_rows takes two plans: with,without")
                with_, without = (json.loads(pathlib.Path(p).read_text()) for p in _COMPARE.value)
                text = text.rstrip("\n") + "\n\n## Activation constraints\n\n" + plan_lib.constraint_comparison(
                    with_, without) + "\n"
            pathlib.Path(_TABLE.value).write_text(text)
            print(text)
            return
        if not _TOPOLOGY.value:
            raise plan_lib.PlanError("--topology is required (e.g. --topology=v5e:2x4)")
        result = plan_lib.plan(config, _TOPOLOGY.value, plan_lib.parse_mesh(_MESH.value),
                               steps=_STEPS.value, activation_constraints=_CONSTRAINTS.value,
                               runs=_RUNS.value, hlo_dir=_HLO_DIR.value)
    except plan_lib.PlanError as err:
        logging.error("%s", err)
        sys.exit(f"plan: {err}")
    result["config"] = config_flags.get_config_filename(flags.FLAGS["config"])
    text = json.dumps(result, indent=2)
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(text + "\n")
    print(plan_lib.summary_line(result))
    print(text)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
