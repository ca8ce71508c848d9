"""Compile-only planning (tools/plan.py, launch/plan.py) on a TPU v5e 2x2 topology.

Needs libtpu (requirements-plan.txt); without it every test here skips.
"""

import json
import os
import subprocess
import sys

import pytest

# libtpu's compile-only client: no metadata server, and no fight over the
# one-process lock with other JAX processes on this host.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

pytest.importorskip(
    "libtpu", reason="libtpu is not installed: pip install -r requirements-plan.txt (compile-only TPU planning)"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tools import hlo_stats  # noqa: E402
from tools import plan as plan_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = (
    "topology", "num_devices", "mesh", "global_batch", "per_device_batch", "grad_accum_steps",
    "train_flops_per_example", "eval_flops_per_example", "argument_bytes", "output_bytes", "temp_bytes",
    "total_bytes", "hbm_bytes", "fits", "flops_per_step", "bytes_accessed", "collectives",
    "compile_seconds", "roofline_step_seconds", "mfu_bound", "collective_bytes", "bytes_split", "flops_split",
    "hbm_traffic_bytes", "hbm_traffic_split", "roofline_hbm_traffic_step_seconds", "chip_seconds_per_run_hbm_traffic",
    "parameters", "parameters_per_chip",
)


def tiny_config():
    """The demo's tiny text-only model: 4 groups of 2 sentences per step."""
    from configs import demo

    c = demo.get_config("text_only")
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optimizer.grad_accum_steps = 4
    return c


@pytest.fixture(scope="module")
def tiny_plan():
    return plan_lib.plan(tiny_config(), "v5e:2x2", (2, 1, 2))


@pytest.mark.long  # second tier (tests/README.md)
def test_plan_reports_every_field(tiny_plan):
    p = json.loads(json.dumps(tiny_plan))  # JSON-ready
    missing = [f for f in FIELDS if f not in p]
    assert not missing, missing
    assert p["topology"] == "v5e:2x2" and p["num_devices"] == 4
    assert p["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert p["global_batch"] == 8 and p["grad_accum_steps"] == 4
    # 4 groups of 2 over data=2: each device computes its own 2 groups, nothing replicated.
    assert p["per_device_batch"] == 4
    assert "replicated_work" not in p
    assert p["hbm_bytes"] == plan_lib.CHIPS["v5e"].hbm_bytes
    assert p["fits"] is True
    assert 0 < p["temp_bytes"] and 0 < p["argument_bytes"] <= p["total_bytes"] < p["hbm_bytes"]
    assert p["flops_per_step"] > 0 and p["bytes_accessed"] > 0
    assert p["train_flops_per_example"] == pytest.approx(p["flops_per_step"] * 4 / 8)
    assert p["eval_flops_per_example"] > 0
    for c in p["collectives"]:
        assert set(c) == {"kind", "count", "bytes"} and c["kind"] in hlo_stats.COLLECTIVES and c["count"] > 0
    # tensor=2 shards the weights: the step must gather or reduce something.
    assert p["collectives"]
    assert p["roofline_step_seconds"] == max(p["train"]["roofline_compute_seconds"],
                                             p["train"]["roofline_memory_seconds"],
                                             p["train"]["roofline_interconnect_seconds"]) > 0
    assert p["collective_bytes"] == sum(c["bytes"] for c in p["collectives"]) > 0
    for key, total in (("bytes_split", p["bytes_accessed"]), ("flops_split", p["flops_per_step"])):
        split = p[key]
        assert set(split) == set(plan_lib.SPLIT_KEYS)
        assert sum(split.values()) == pytest.approx(total, rel=1e-9)
        assert min(split[k] for k in ("forward", "backward", "optimizer")) > 0
        assert abs(split["other"]) < 0.1 * total, split
    # The backward pass does about twice the forward's matmul work.
    assert 1.2 < p["flops_split"]["backward"] / p["flops_split"]["forward"] < 3.0
    assert "GB accessed/chip/step (forward" in plan_lib.summary_line(p)
    assert 0 < p["mfu_bound"] <= 1
    assert set(p["eval"]) == {"extract", "classify"}


@pytest.mark.long  # second tier (tests/README.md)
def test_run_estimate_follows_the_schedule(tiny_plan):
    c = tiny_config()
    run = plan_lib.run_estimate(tiny_plan, c, train_examples=80, eval_examples=(20, 12))
    assert run["steps_per_epoch"] == 10 and run["total_steps"] == 10 * c.num_epochs
    assert run["eval_batches_per_evaluation"] == 3 + 2
    assert run["total_seconds"] == pytest.approx(
        run["total_steps"] * tiny_plan["roofline_step_seconds"]
        + run["evaluations"] * 5 * tiny_plan["eval_roofline_batch_seconds"])
    assert run["total_seconds_hbm_traffic"] == pytest.approx(
        run["total_steps"] * tiny_plan["roofline_hbm_traffic_step_seconds"]
        + run["evaluations"] * 5 * tiny_plan["eval_roofline_hbm_traffic_batch_seconds"])
    assert run["total_seconds_hbm_traffic"] <= run["total_seconds"]
    table = plan_lib.scale_table([tiny_plan, {"topology": "v5e:2x2", "mesh": {"data": 3}, "error": "no"}], c)
    assert "not measured times" in table and "| v5e:2x2 | 4 | 1 (1) | 2,1,2 | 4 |" in table
    # Every row has as many cells as the header; the HBM-resident cell and the optimizer's bytes per parameter.
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| slice |"))
    row = next(line for line in lines if line.startswith("| v5e:2x2 | 4 |"))
    assert header.count("|") == row.count("|")
    traffic = tiny_plan["hbm_traffic_bytes"] / 1e9
    assert f"| {traffic:.1f} (" in row and f"{tiny_plan['chip_seconds_per_run_hbm_traffic']:.3f} |" in row
    per_param = tiny_plan["hbm_traffic_split"]["optimizer"] / tiny_plan["parameters_per_chip"]
    assert f"v5e:2x2 mesh 2,1,2: {per_param:.1f} B" in table
    assert tiny_plan["parameters_per_chip"] < tiny_plan["parameters"]  # tensor=2 shards some weights


def test_grid_estimates_multiply_each_way_by_its_programs():
    """One run at a time pays rows x seeds runs; a population of the seeds pays one program per
    row; the HBM-resident estimate follows in brackets where a plan has it."""
    hour = 3600.0
    single = {"topology": "v5e:2x4", "runs": 1, "mesh": {"data": 8, "fsdp": 1, "tensor": 1},
              "run_estimate": {"total_seconds": 0.1 * hour, "total_seconds_hbm_traffic": 0.05 * hour}}
    seeds = {"topology": "v5e:2x4", "runs": plan_lib.GRID_SEEDS, "mesh": {"data": 8, "fsdp": 1, "tensor": 1},
             "run_estimate": {"total_seconds": 0.2 * hour}}
    other_slice = dict(single, topology="v5p:2x2x1")
    lines = plan_lib.grid_estimates([single, seeds, other_slice])
    rows = [line for line in lines if line.startswith("| one run") or line.startswith("| each row")]
    assert len(rows) == 2  # the v5p plan is not a v5e-8 way
    n3 = plan_lib.GRID_ROWS["Table 3"]
    assert f"| {plan_lib._hours(n3 * 3 * 0.1 * hour)} ({plan_lib._hours(n3 * 3 * 0.05 * hour)}) |" in rows[0]
    assert f"| {plan_lib._hours(n3 * 0.2 * hour)} |" in rows[1] and "(" not in rows[1].split("|")[2]


def test_loops_are_counted_trip_count_times():
    """cost_analysis counts a while body once; the planner multiplies it."""
    devices = plan_lib.topology_devices("v5e:2x2")
    mesh = jax.make_mesh((4,), ("d",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    w = jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=rep)
    x = jax.ShapeDtypeStruct((6, 64, 256), jnp.float32, sharding=rep)

    def scanned(w, x):
        return jax.lax.scan(lambda c, xi: (c + jnp.sum(xi @ w), None), 0.0, x)[0]

    compiled, secs = plan_lib._compile(jax.jit(scanned), (w, x))
    a = plan_lib.analyse(compiled, secs, plan_lib.CHIPS["v5e"])
    assert a["loops"] and a["loops"][0]["trip_count"] == 6 and a["loops"][0]["times"] == 1
    matmul = 2 * 64 * 256 * 256
    assert a["xla_flops_loop_bodies_once"] < 2 * matmul  # XLA's own count: one iteration
    assert a["flops"] == pytest.approx(6 * matmul, rel=0.05)


def _mesh(devices, n):
    mesh = jax.make_mesh((n,), ("d",), devices=devices[:n], axis_types=(jax.sharding.AxisType.Auto,))
    return mesh, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def test_train_step_split_adds_up_and_follows_the_phases():
    """A data-parallel MLP train step with Adam and a finite-select, as jml_jax.steps
    builds one: forward, backward, optimizer and collectives each get their
    share, and the parts add up to the planner's totals."""
    import optax

    devices = plan_lib.topology_devices("v5e:2x2")
    mesh, rep = _mesh(devices, 4)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    params = {"w1": jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=rep),
              "w2": jax.ShapeDtypeStruct((512, 256), jnp.float32, sharding=rep)}
    tx = optax.adam(1e-3)
    opt = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), jax.eval_shape(tx.init, params))
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=rows)

    def step(params, opt_state, x):
        def loss(p):
            return jnp.mean(jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        ok = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, new_opt = tx.update(grads, opt_state, params)
        new = (optax.apply_updates(params, updates), new_opt)
        return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, (params, opt_state)), value

    compiled, secs = plan_lib._compile(jax.jit(step, out_shardings=((rep, rep), rep)), (params, opt, x))
    a = plan_lib.analyse(compiled, secs, plan_lib.CHIPS["v5e"], split=True)
    for key, total in (("bytes_split", a["bytes_accessed"]), ("flops_split", a["flops"])):
        split = a[key]
        assert list(split) == list(plan_lib.SPLIT_KEYS)
        assert sum(split.values()) == pytest.approx(total, rel=1e-9)
        # other: here the prefetches of x and w2 that forward and backward both read
        assert abs(split["other"]) < 0.1 * total, split
    f, b = a["flops_split"]["forward"], a["flops_split"]["backward"]
    matmul = 2 * 16 * 256 * 512  # 16 rows per device
    assert f == pytest.approx(2 * matmul, rel=0.05)
    # Backward: the gradients of w2, of the hidden layer and of w1 (x needs none).
    assert b == pytest.approx(3 * matmul, rel=0.05)
    # Adam reads and writes params, mu, nu (f32) and reads the gradients: at least 7 arrays' worth.
    param_bytes = 4 * 2 * 256 * 512
    assert a["bytes_split"]["optimizer"] >= 7 * param_bytes * 0.9
    # The gradients are all-reduced over the 4 data-parallel devices.
    assert a["bytes_split"]["collectives"] > 0
    assert a["collective_bytes"] >= param_bytes
    ici = a["collective_bytes"] / plan_lib.CHIPS["v5e"].ici_bytes_per_s
    assert a["roofline_interconnect_seconds"] == pytest.approx(ici)
    assert a["roofline_seconds"] == max(a["roofline_compute_seconds"], a["roofline_memory_seconds"], ici)
    # HBM-resident traffic: at least the step's arguments read and its results written once, at
    # most what XLA counts with on-chip operands included; its roofline uses it as the memory term.
    moved = a["hbm_traffic_bytes"]
    assert a["argument_bytes"] + a["output_bytes"] <= moved <= a["bytes_accessed"]
    assert sum(a["hbm_traffic_split"].values()) == pytest.approx(moved)
    # The update reads the state from HBM and writes it back: most of this small step's HBM traffic
    # (the activations and gradients stay on chip), and at least params, mu and nu written once.
    assert a["hbm_traffic_split"]["optimizer"] >= max(0.5 * moved, 3 * param_bytes)
    assert a["roofline_hbm_traffic_memory_seconds"] == pytest.approx(moved / plan_lib.CHIPS["v5e"].hbm_bytes_per_s)
    assert a["roofline_hbm_traffic_seconds"] == max(a["roofline_compute_seconds"],
                                                    a["roofline_hbm_traffic_memory_seconds"], ici)


def test_interconnect_can_bound_the_roofline():
    """An all-gather of a large array with next to no compute is interconnect-bound."""
    devices = plan_lib.topology_devices("v5e:2x2")
    mesh, rep = _mesh(devices, 4)
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32, sharding=sharded)
    compiled, secs = plan_lib._compile(jax.jit(lambda x: x, out_shardings=rep), (x,))
    a = plan_lib.analyse(compiled, secs, plan_lib.CHIPS["v5e"])
    assert a["collective_bytes"] >= 4096 * 1024 * 4
    assert a["bound"] == "interconnect"
    assert a["roofline_seconds"] == a["roofline_interconnect_seconds"]


TUPLE_COLLECTIVES_HLO = """HloModule tuple_collectives

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (p0: f32[1024], p1: bf16[8,128], p2: f32[16]) -> f32[16] {
  %p0 = f32[1024]{0} parameter(0)
  %p1 = bf16[8,128]{1,0} parameter(1)
  %p2 = f32[16]{0} parameter(2)
  %ar = (f32[1024]{0}, bf16[8,128]{1,0}) all-reduce(%p0, %p1), replica_groups={{0,1}}, to_apply=%add
  %ag = (f32[32]{0}, f32[2048]{0}) all-gather(%p2, %p0), dimensions={0}, replica_groups={{0,1}}
  %rs = (f32[8]{0}, f32[512]{0}) reduce-scatter(%p2, %p0), dimensions={0}, replica_groups={{0,1}}, to_apply=%add
  %ags = (f32[16]{0}, f32[32]{0}) all-gather-start(%p2), dimensions={0}, replica_groups={{0,1}}
  %agd = f32[32]{0} all-gather-done(%ags)
  %cps = (f32[16]{0}, f32[16]{0}, u32[], u32[]) collective-permute-start(%p2), source_target_pairs={{0,1},{1,0}}
  %cpd = f32[16]{0} collective-permute-done(%cps)
  ROOT %out = f32[16]{0} add(%p2, %cpd)
}
"""


def test_collective_bytes_count_every_array_of_a_tuple():
    """A combined collective moves all its arrays; an async pair is one collective,
    counted at its result (the -start's tuple also holds the operand and context)."""
    got = hlo_stats.summarize_hlo(TUPLE_COLLECTIVES_HLO).collectives
    assert got == {
        # f32[1024] + bf16[8,128] = 4096 + 2048
        "all-reduce": {"count": 1, "bytes": 4 * 1024 + 2 * 8 * 128},
        # sync (f32[32], f32[2048]) = 128 + 8192; async result f32[32] = 128
        "all-gather": {"count": 2, "bytes": 4 * 32 + 4 * 2048 + 4 * 32},
        # (f32[8], f32[512]) = 32 + 2048
        "reduce-scatter": {"count": 1, "bytes": 4 * 8 + 4 * 512},
        # result f32[16] = 64 (not the start's operand, result and two u32 contexts)
        "collective-permute": {"count": 1, "bytes": 4 * 16},
    }
    assert hlo_stats.collective_bytes("(f32[1024]{0}, bf16[8,128]{1,0})") == 6144


MEMORY_SPACES_HLO = """HloModule memory_spaces

%fused_update (p: f32[256], g: f32[256]) -> f32[256] {
  %p = f32[256]{0} parameter(0)
  %g = f32[256]{0:S(1)} parameter(1)
  ROOT %s = f32[256]{0} subtract(%p, %g)
}

ENTRY %main (w: f32[256], x: f32[1024]) -> (f32[256], f32[1024]) {
  %w = f32[256]{0} parameter(0)
  %x = f32[1024]{0} parameter(1)
  %cs = (f32[256]{0:S(1)}, f32[256]{0}, u32[]) copy-start(%w)
  %cd = f32[256]{0:S(1)} copy-done(%cs)
  %ss = ((f32[1024]{0}), f32[128]{0:S(1)}, s32[]) slice-start(%x), slice={[0:128]}
  %sd = f32[128]{0:S(1)} slice-done(%ss)
  %neg = f32[256]{0:S(1)} negate(%cd), metadata={op_name="jit(step)/jvp(f)/neg"}
  %upd = f32[256]{0} fusion(%w, %neg), kind=kLoop, calls=%fused_update
  %ev = (f32[1024]{0}, f32[1024]{0:S(1)}, u32[]) copy-start(%sd)
  %evd = f32[1024]{0} copy-done(%ev)
  ROOT %out = (f32[256]{0}, f32[1024]{0}) tuple(%upd, %x)
}
"""


def test_hbm_traffic_counts_only_what_crosses_hbm():
    """Operands in on-chip memory (S(1)) cost no HBM traffic; a copy or slice between
    memory spaces counts once on its HBM side; a fusion reads and writes its HBM
    operands and result."""
    got = hlo_stats.hbm_traffic(MEMORY_SPACES_HLO)
    prefetch_w = 4 * 256          # copy-start: w read from HBM once (its S(1) copy is free)
    slice_x = 4 * 128             # slice-start: the slice read from HBM, not all of x
    negate = 0                    # all on chip
    update = 4 * 256 + 4 * 256    # reads w from HBM, writes its result there (the S(1) operand is free)
    evict = 4 * 1024              # copy-start of a result into HBM: written once
    assert got["whole"] == prefetch_w + slice_x + negate + update + evict
    # the prefetch that only the forward negate reads is the forward's; the rest has no op_name
    assert got["forward"] == prefetch_w and sum(got[k] for k in hlo_stats.PHASES) == got["whole"]


def test_hbm_traffic_cli_lists_the_largest_movers(tmp_path, capsys):
    hlo = tmp_path / "train_step.hlo"
    hlo.write_text(MEMORY_SPACES_HLO)
    top = hlo_stats.largest_hbm_instructions(MEMORY_SPACES_HLO, count=2)
    assert [(r["name"], r["bytes"]) for r in top] == [("ev", 4 * 1024), ("upd", 4 * 256 * 2)]
    assert [r["name"] for r in hlo_stats.largest_hbm_instructions(MEMORY_SPACES_HLO, phase="forward")] == ["cs"]
    assert hlo_stats.main([str(hlo), "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"whole {(4 * 256 + 4 * 128 + 4 * 512 + 4 * 1024) / 1e9:.3f} GB") and len(out) == 2
    assert " ev " in out[1] and "0.0 MB" in out[1]


def test_clear_errors_before_compiling():
    c = tiny_config()
    with pytest.raises(plan_lib.PlanError, match="does not fit topology"):
        plan_lib.plan(c, "v5e:2x2", (8, 1, 1))
    c.batch_size = 6
    c.optimizer.grad_accum_steps = 1
    with pytest.raises(plan_lib.PlanError, match="batch_size=6 does not divide"):
        plan_lib.plan(c, "v5e:2x2", (4, 1, 1))
    with pytest.raises(plan_lib.PlanError, match="unknown chip"):
        plan_lib.chip_of("v9z:2x2")
    with pytest.raises(plan_lib.PlanError, match="must have 3 sizes"):
        plan_lib.parse_mesh("8,1")


@pytest.mark.parametrize("topology, message", [
    ("v5e:0x4", r"v5e:0x4.*every size must be at least 1"),
    ("v5e:2x4x2", r"v5e:2x4x2.*v5e slices are two-dimensional.*3 dimensions"),
    ("v5p:2x2", r"v5p:2x2.*v5p slices are three-dimensional.*2 dimensions"),
])
def test_a_wrong_topology_shape_is_named_as_such(topology, message):
    """A shape the chip's slices cannot have is an error about the shape, not
    advice to install libtpu (installed here) and not a plan of a slice that
    does not exist (libtpu itself lays out 'v5e:2x4x2' as 16 chips)."""
    for check in (plan_lib.chip_of, plan_lib.topology_devices):
        with pytest.raises(plan_lib.PlanError, match=message) as err:
            check(topology)
        assert "install libtpu" not in str(err.value)


def test_a_shape_libtpu_cannot_lay_out_does_not_advise_installing_it():
    with pytest.raises(plan_lib.PlanError, match="v5e:3x5") as err:
        plan_lib.topology_devices("v5e:3x5")
    assert "install libtpu" not in str(err.value)


def test_cli_names_a_wrong_topology_shape():
    proc = subprocess.run(
        [sys.executable, "-m", "launch.plan", "--config=configs/demo.py:text_only", "--topology=v5e:0x4",
         "--steps=train", "--compilation_cache="],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "every size must be at least 1" in proc.stderr and "install libtpu" not in proc.stderr


def test_cli_names_a_mesh_that_does_not_fit():
    proc = subprocess.run(
        [sys.executable, "-m", "launch.plan", "--config=configs/demo.py:text_only", "--topology=v5e:2x2",
         "--mesh=3,1,1", "--steps=train", "--compilation_cache="],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "does not fit topology v5e:2x2 (4 chips)" in proc.stderr


@pytest.mark.long  # second tier (tests/README.md)
@pytest.mark.parametrize("runs,per_device", [(4, 1), (8, 2)])
def test_a_population_plans_one_program_of_its_runs(runs, per_device):
    """R runs of the tiny model on v5e:2x2: the runs axis takes the 4 chips,
    each chip computes its runs' whole batches with no collective, and a run's
    step costs the roofline x chips / R chip-seconds."""
    p = json.loads(json.dumps(plan_lib.plan(tiny_config(), "v5e:2x2", steps=("train",), runs=runs)))
    assert (p["runs"], p["runs_axis"], p["runs_per_device"]) == (runs, 4, per_device)
    assert p["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}  # each run's own mesh
    assert p["per_device_batch"] == per_device * 8 and "replicated_work" not in p
    assert p["collectives"] == [] and p["collective_bytes"] == 0
    assert p["chip_seconds_per_run"] == pytest.approx(p["roofline_step_seconds"] * 4 / runs)
    assert p["fits"] is True and f"{runs} runs on a runs axis of 4" in plan_lib.summary_line(p)
    # each chip holds whole runs: parameters of one run times the runs it works on
    assert p["parameters_per_chip"] == per_device * p["parameters"]


def test_a_population_mesh_that_does_not_fit_a_slice_is_refused():
    with pytest.raises(plan_lib.PlanError, match=r"each of the runs axis' 2 slices"):
        plan_lib.plan(tiny_config(), "v5e:2x2", (4, 1, 1), runs=2)
    with pytest.raises(plan_lib.PlanError, match=r"runs\.axis=3 does not divide the 4 devices"):
        c = tiny_config()
        c.runs.axis = 3
        plan_lib.plan(c, "v5e:2x2", runs=3)


def test_a_one_chip_slice_is_one_chip_of_its_host():
    devices = plan_lib.topology_devices("v5e:1x1")
    assert len(devices) == 1 and devices[0].platform == "tpu"
    assert len(plan_lib.topology_devices("v5p:1x1x1")) == 1
