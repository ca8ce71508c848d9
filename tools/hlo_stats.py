"""Reading compiled (optimized, per-device) HLO text: loops, collectives, loop-aware cost.

XLA's ``cost_analysis()`` counts the body of a while loop once, not times its
trip count. `summarize_hlo` finds each loop's trip count (``known_trip_count``
or the condition's ``compare(i, constant), direction=LT``), how often each
computation runs per step, the collectives with those multiplicities, and the
leading size of watched activation shapes; `xla_cost` runs XLA's own cost
model on the module or on one loop body as if it were the entry.
A collective's bytes are those of its result, every array of a tuple-shaped
(combined) one (`collective_bytes`); an asynchronous pair counts once, at its
``-done``. `phase_costs` splits a train step's cost into forward, backward,
optimizer, collectives and other by the instructions' ``op_name`` metadata
(`classify_phases`). `hbm_traffic` counts, per phase, only the bytes that
live in HBM by the memory spaces XLA assigned (``S(n)`` layouts).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax


_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
# dtype[dims]{layout}: the layout (tiling, memory space S(n)) is optional.
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for dtype, dims, _ in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return out


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    op: str
    rest: str
    line: str = ""


def _split_operands(rest: str) -> tuple[str, str]:
    """``'a, b), attr=...'`` -> (``'a, b'``, ``'attr=...'``), matching parentheses."""
    depth = 1
    for i, ch in enumerate(rest):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return rest[:i], rest[i + 1:]
    return rest, ""


def _parse_module(text: str) -> tuple[dict[str, list[_Instr]], str]:
    comps: dict[str, list[_Instr]] = {}
    entry = ""
    current = None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(_Instr(m.group(1), m.group(2), m.group(3), m.group(4), line))
    return comps, entry


def _attr(attrs: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=([^\s,]+(?:\{{[^}}]*\}})?)", attrs)
    return m.group(1) if m else None


@dataclasses.dataclass
class HloSummary:
    """Loop-aware counts over one compiled (per-device) HLO module."""

    loops: list[dict]  # {'body', 'trip_count' (None if unknown), 'times': runs of the loop per step}
    collectives: dict[str, dict[str, int]]  # kind -> {'count', 'bytes'} per step
    leading_sizes: dict[tuple[int, ...], int]  # watched trailing dims -> largest leading size x trips
    runs: dict[str, float] = dataclasses.field(default_factory=dict)  # computation -> runs per step


def summarize_hlo(text: str, watch_trailing: Sequence[tuple[int, ...]] = ()) -> HloSummary:
    """Counts an optimized HLO module's loops and collectives, with loop trip counts.

    ``watch_trailing``: activation shapes ``[b, *trailing]`` (or ``[r, b,
    *trailing]``: ``r * b``) whose most common leading size ``b`` (times the
    trip counts of the loops that hold it) is
    reported, e.g. ``(L, hidden)`` for BERT's hidden states: the examples each
    device computes per step.
    """
    comps, entry = _parse_module(text)
    edges: list[tuple[str, str, float]] = []  # (caller, callee, runs per caller run)
    loops = []
    for c, instrs in comps.items():
        for ins in instrs:
            _, attrs = _split_operands(ins.rest)
            if ins.op == "while":
                body, cond = (_attr(attrs, "body") or "").lstrip("%"), (_attr(attrs, "condition") or "").lstrip("%")
                trip = _trip_count(attrs, comps.get(cond, []))
                loops.append({"computation": c, "body": body, "trip_count": trip})
                edges.append((c, body, float(trip or 1)))
                continue
            if ins.op in ("reduce", "reduce-window", "scatter", "select-and-scatter", "sort", "all-reduce",
                          "all-reduce-start", "reduce-scatter", "map"):
                continue  # scalar reducers, not work of their own
            for key in ("calls", "to_apply"):
                callee = _attr(attrs, key)
                if callee:
                    edges.append((c, callee.lstrip("%"), 1.0))
            branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
            if branches:
                for b in branches.group(1).split(","):
                    edges.append((c, b.strip().lstrip("%"), 1.0))
    with_trips = {c: 0.0 for c in comps}
    once = {c: 0.0 for c in comps}
    if entry:
        with_trips[entry] = once[entry] = 1.0
    for c in _topological(comps, edges, entry):
        for caller, callee, times in edges:
            if caller == c and callee in comps:
                with_trips[callee] += with_trips[c] * times
                once[callee] += once[c]
    for loop in loops:
        loop["times"] = int(with_trips.get(loop.pop("computation"), 0.0))
    collectives: dict[str, dict[str, int]] = {}
    seen_sizes: dict[tuple[int, ...], dict[int, int]] = {}  # trailing -> {size x trips: instructions}
    watch = [tuple(t) for t in watch_trailing]
    for c, instrs in comps.items():
        n, n1 = with_trips[c], once[c]
        if n == 0:
            continue
        for ins in instrs:
            op = ins.op
            kind = op[:-6] if op.endswith("-start") else op
            if op.endswith("-done"):
                kind = op[:-5]
            if kind in COLLECTIVES:
                entry_ = collectives.setdefault(kind, {"count": 0, "bytes": 0})
                if op.endswith("-start"):
                    # The start's shape holds operands, results and context
                    # scalars: it is counted here, its bytes at its -done.
                    entry_["count"] += int(n)
                    continue
                if not op.endswith("-done"):
                    entry_["count"] += int(n)
                entry_["bytes"] += int(n * collective_bytes(ins.shape))
            for _, dims in _arrays(ins.shape) if watch else ():
                for t in watch:
                    # [b, *t], or [r, b, *t] under a population's vmap over runs: r * b
                    if len(dims) > len(t) and dims[-len(t):] == t:
                        size = math.prod(dims[:-len(t)]) * int(round(n / max(n1, 1.0)))
                        counts = seen_sizes.setdefault(t, {})
                        counts[size] = counts.get(size, 0) + 1
    # The size most instructions work at (a stray reshape or gather of the
    # local rows does not count).
    leading = {t: max(counts, key=counts.get) for t, counts in seen_sizes.items()}
    return HloSummary(loops, collectives, leading, with_trips)


def collective_bytes(shape_text: str) -> int:
    """Bytes of a collective's result: every array of a tuple-shaped (combined)
    collective, e.g. ``(f32[1024], bf16[8,128])`` -> 4096 + 2048."""
    return sum(_DTYPE_BYTES[d] * math.prod(s) for d, s in _arrays(shape_text))


def _trip_count(attrs: str, cond: list[_Instr]) -> int | None:
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', attrs)
    if m:
        return int(m.group(1))
    consts = {}
    for ins in cond:
        if ins.op == "constant":
            v = re.match(r"\s*(-?\d+)\)", ins.rest)
            if v:
                consts[ins.name] = int(v.group(1))
    for ins in cond:
        if ins.op == "compare" and "direction=LT" in ins.rest:
            operands, _ = _split_operands(ins.rest)
            for name in re.findall(r"%([\w.\-]+)", operands):
                if name in consts:
                    return consts[name]
    return None


def _topological(comps, edges, entry) -> list[str]:
    children: dict[str, list[str]] = {}
    for caller, callee, _ in edges:
        children.setdefault(caller, []).append(callee)
    seen, order = set(), []

    def visit(c):
        if c in seen or c not in comps:
            return
        seen.add(c)
        for k in children.get(c, []):
            visit(k)
        order.append(c)

    for c in [entry] + list(comps):
        if c:
            visit(c)
    return order[::-1]


def xla_cost(text: str, entry: str | None = None) -> dict[str, float]:
    """XLA's cost model (flops, bytes accessed) of an HLO module's text, or of one of its
    computations as if it were the entry (how a while-loop body is costed once)."""
    from jax._src.lib import _jax
    from jaxlib import _hlo

    if entry is not None:
        out = ["HloModule loop_body"]
        for line in text.splitlines()[1:]:
            if line.startswith("ENTRY "):
                line = line[len("ENTRY "):]
            m = _COMP.match(line)
            if m and m.group(2) == entry:
                line = "ENTRY " + line
            out.append(line)
        text = "\n".join(out)
    module = _hlo.hlo_module_from_text(text)
    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    return {"flops": float(cost.get("flops", 0.0)), "bytes accessed": float(cost.get("bytes accessed", 0.0))}


# ---------------------------------------------------------------------------
# Where a train step's cost goes: forward, backward, optimizer, collectives.

PHASES = ("forward", "backward", "optimizer", "collectives", "other")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTROL = re.compile(r",\s*control-predecessors=\{[^}]*\}")
_FREE = ("parameter", "while")  # new parameters / costed through their bodies


def _is_collective(op: str) -> bool:
    for suffix in ("-start", "-done"):
        if op.endswith(suffix):
            op = op[: -len(suffix)]
    return op in COLLECTIVES


def _operand_names(ins: _Instr) -> list[str]:
    operands, _ = _split_operands(ins.rest)
    return re.findall(r"%([\w.\-]+)", operands)


def classify_phases(instrs: Sequence[_Instr]) -> dict[str, str]:
    """Instruction name -> phase, for the instructions of one computation.

    * ``collectives``: every collective instruction (its ``-start`` and ``-done``).
    * ``backward``: ``op_name`` metadata with ``transpose(`` (JAX names the ops
      of the transposed, i.e. backward, pass ``transpose(jvp(...))``).
    * ``forward``: ``op_name`` with ``jvp(`` and no ``transpose(`` (the
      forward pass of ``value_and_grad``, linearized).
    * an unlabelled instruction (no ``op_name``) takes the phase of its users
      when they all share one of forward, backward, optimizer (e.g. a copy of
      the optimizer state that only the update reads, or a pad with no
      metadata between two backward fusions);
    * ``optimizer``: any other instruction that depends, through any chain of
      operands, on a backward instruction: everything computed from the
      gradients (the optimizer update, ``apply_updates``, the finite check
      and select, the gradient-norm metric);
    * ``other``: the rest (e.g. the step counter, the step's RNG folding,
      copies with no metadata that several phases read).
    """
    phase: dict[str, str] = {}
    after: dict[str, bool] = {}
    users: dict[str, list[str]] = {}
    order = [ins for ins in instrs if ins.op not in _FREE]
    for ins in instrs:
        ops = _operand_names(ins)
        for o in ops:
            users.setdefault(o, []).append(ins.name)
        m = _OP_NAME.search(ins.line)
        name = m.group(1) if m else ""
        if _is_collective(ins.op):
            p = "collectives"
        elif "transpose(" in name:
            p = "backward"
        elif "jvp(" in name:
            p = "forward"
        else:
            p = ""
        after[ins.name] = p == "backward" or any(after.get(o, False) for o in ops)
        if not p and after[ins.name] and _OP_NAME.search(ins.line):
            p = "optimizer"  # labelled, computed from the gradients
        phase[ins.name] = p
    for ins in reversed(order):
        if phase[ins.name]:
            continue
        got = {phase.get(u, "") for u in users.get(ins.name, [])}
        if len(got) == 1 and got <= {"forward", "backward", "optimizer"}:
            phase[ins.name] = got.pop()
        else:
            phase[ins.name] = "optimizer" if after[ins.name] else "other"
    return {ins.name: phase[ins.name] for ins in order}


def _blocks(text: str) -> tuple[list[tuple[str, list[str]]], str]:
    """Module text -> [(computation name, its lines)], entry name (the header line first)."""
    blocks, entry, current = [], "", None
    for line in text.splitlines()[1:]:
        if current is None:
            m = _COMP.match(line)
            if m and "=" not in line.split("(")[0]:
                current = (m.group(2), [line])
                if m.group(1):
                    entry = m.group(2)
            continue
        current[1].append(line)
        if line.strip() == "}":
            blocks.append(current)
            current = None
    return blocks, entry


def _phase_module(blocks, skip: set[str], instrs: Sequence[_Instr], chosen: set[str]) -> str:
    """A module whose entry runs only the ``chosen`` instructions of a computation,
    their other operands turned into parameters and their results into one tuple."""
    shapes = {ins.name: ins.shape for ins in instrs}
    keep = [ins for ins in instrs if ins.name in chosen]
    params: dict[str, str] = {}
    for ins in keep:
        for o in _operand_names(ins):
            if o not in chosen and o not in params and o in shapes:
                params[o] = shapes[o]
    out = ["HloModule phase"]
    for name, lines in blocks:
        if name in skip:
            continue
        header = lines[0][len("ENTRY "):] if lines[0].startswith("ENTRY ") else lines[0]
        out += [header] + lines[1:]
    out.append("ENTRY %phase_entry {")
    out += [f"  %{name} = {shape} parameter({i})" for i, (name, shape) in enumerate(params.items())]
    for ins in keep:
        line = ins.line.replace("ROOT ", "", 1) if ins.line.lstrip().startswith("ROOT ") else ins.line
        out.append(_CONTROL.sub("", line))
    out.append(f"  ROOT %phase_root = ({', '.join(ins.shape for ins in keep)}) "
               f"tuple({', '.join('%' + ins.name for ins in keep)})")
    out.append("}")
    return "\n".join(out)


def phase_costs(text: str) -> dict[str, dict[str, float]]:
    """Host XLA cost model (flops, bytes accessed) of a train step per phase, loops counted in full.

    Classifies the instructions of the entry computation and of every while
    body with `classify_phases`, and costs each phase's instructions of each
    such computation with XLA's own cost model (`xla_cost`) as one module whose
    entry runs only them (their other operands become parameters, which cost
    nothing): a fusion is costed as XLA costs it in the whole module, with the
    phase of its fusion's metadata (fused forward and optimizer ops would go
    wholly to one phase). A while body's phases count once per run of the
    body (its loop's trip count times the runs of the loop); the while
    instruction itself and its condition are not costed (they land in the
    caller's ``other`` remainder). Returns ``{phase: {'flops', 'bytes
    accessed'}}`` for `PHASES` plus ``'whole'``: the module as XLA costs it,
    loop bodies counted trip-count times, as the planner counts it.
    """
    comps, entry = _parse_module(text)
    summary = summarize_hlo(text)
    blocks, _ = _blocks(text)
    containers = [entry] + [loop["body"] for loop in summary.loops if loop["body"] in comps]
    out = {p: {"flops": 0.0, "bytes accessed": 0.0} for p in PHASES}
    for comp in dict.fromkeys(containers):
        runs = summary.runs.get(comp, 0.0)
        if not runs:
            continue
        phases = classify_phases(comps[comp])
        for p in PHASES:
            chosen = {n for n, q in phases.items() if q == p}
            if not chosen:
                continue
            cost = xla_cost(_phase_module(blocks, {entry, comp}, comps[comp], chosen))
            for k in ("flops", "bytes accessed"):
                out[p][k] += runs * cost[k]
    whole = xla_cost(text)
    for loop in summary.loops:
        if (loop["trip_count"] or 1) > 1:
            body = xla_cost(text, loop["body"])
            for k in ("flops", "bytes accessed"):
                whole[k] += loop["times"] * (loop["trip_count"] - 1) * body[k]
    out["whole"] = whole
    return out


# The memory space in a layout: XLA's memory-space assignment places arrays
# outside HBM (on TPU, ``S(1)``: the chip's on-chip vector memory), e.g.
# ``f32[32]{0:T(128)S(1)}``.
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
# Instructions that move no data of their own (bodies are counted where they run).
_NO_TRAFFIC = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all",
                         "partition-id", "replica-id", "while", "conditional", "call", "copy-done",
                         "slice-done", "opt-barrier"})


def _arrays_in_memory(shape_text: str) -> list[tuple[int, bool]]:
    """``[(bytes, in_hbm)]`` for every array of a shape: in HBM unless its layout
    names a memory space other than 0."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            m = _MEMORY_SPACE.search(layout or "")
            nbytes = _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
            out.append((nbytes, not m or m.group(1) == "0"))
    return out


def _instruction_hbm_bytes(ins: _Instr, shapes: dict[str, str]) -> int:
    """Bytes one execution of a top-level instruction reads from or writes to HBM.

    * asynchronous copies between memory spaces (``copy-start``, shape
      ``(destination, source, context)``): the array once on each side that
      is in HBM (a prefetch reads it, an eviction writes it); ``copy-done``
      moves nothing more;
    * asynchronous slices (``slice-start``, shape ``((operand), slice,
      context)``): the slice, read if the operand is in HBM and written if
      the slice is;
    * asynchronous collectives: the operands in HBM at ``-start``, the
      results in HBM at ``-done``;
    * anything else (a fusion, a custom call, a plain copy): every operand
      and result that is in HBM, in full. An operand in on-chip memory costs
      no HBM traffic, which XLA's ``bytes accessed`` counts like the rest.
    """
    op = ins.op
    if op in _NO_TRAFFIC:
        return 0
    result = _arrays_in_memory(ins.shape)
    if op == "copy-start":
        return sum(b for b, hbm in result[:2] if hbm)
    names = _operand_names(ins)
    if op == "slice-start":
        sliced = _arrays_in_memory(shapes.get(names[0], "")) if names else []
        size, slice_in_hbm = result[-2] if len(result) >= 2 else (0, False)
        return size * (int(bool(sliced) and sliced[0][1]) + int(slice_in_hbm))
    operands = [a for o in names for a in _arrays_in_memory(shapes.get(o, ""))]
    if _is_collective(op) and op.endswith("-start"):
        return sum(b for b, hbm in operands if hbm)
    if _is_collective(op) and op.endswith("-done"):
        return sum(b for b, hbm in result if hbm)
    return sum(b for b, hbm in operands + result if hbm)


def _hbm_rows(text: str):
    """``(bytes per step, phase, instruction)`` of every executed (non-fused)
    instruction that moves HBM bytes (`_instruction_hbm_bytes`)."""
    comps, _ = _parse_module(text)
    runs = summarize_hlo(text).runs
    fused = set()
    for instrs in comps.values():
        for ins in instrs:
            if ins.op == "fusion":
                callee = _attr(_split_operands(ins.rest)[1], "calls")
                if callee:
                    fused.add(callee.lstrip("%"))
    for comp, instrs in comps.items():
        times = runs.get(comp, 0.0)
        if not times or comp in fused:
            continue
        shapes = {ins.name: ins.shape for ins in instrs}
        phases = classify_phases(instrs)
        for ins in instrs:
            nbytes = _instruction_hbm_bytes(ins, shapes)
            if nbytes:
                yield times * nbytes, phases.get(ins.name, "other"), ins


def hbm_traffic(text: str) -> dict[str, float]:
    """Bytes per step that a compiled module moves to or from HBM, per phase.

    A lower, memory-space-aware count beside XLA's ``bytes accessed``: on TPU,
    memory-space assignment keeps many operands in on-chip memory (``S(1)``
    layouts) and moves arrays there and back with asynchronous copies and
    slices; XLA's cost analysis counts every operand and result of every
    instruction, those copies included, as if all of it crossed HBM. Here
    each executed (non-fused) instruction of the entry computation, the while
    bodies and whatever they call counts only its HBM-resident bytes
    (`_instruction_hbm_bytes`), times the runs of its computation per step
    (loop trip counts), in the phase `classify_phases` gives it. Returns
    ``{phase: bytes}`` for `PHASES` plus ``'whole'`` (their sum). It is still
    an estimate: a fusion is taken to read its HBM operands whole (a fused
    gather, slice or in-place update reads less), and the cache-like reuse of
    arrays that stay on chip across instructions is what makes it lower. On a
    backend with no memory spaces (GPU, CPU) it is every operand and result.
    """
    return _phase_totals(_hbm_rows(text))


def _phase_totals(rows) -> dict[str, float]:
    out = {p: 0.0 for p in PHASES}
    for nbytes, phase, _ in rows:
        out[phase] += nbytes
    out["whole"] = sum(out[p] for p in PHASES)
    return out


def largest_hbm_instructions(text: str, phase: str | None = None, count: int = 20) -> list[dict]:
    """The ``count`` instructions that move the most HBM bytes per step (of
    ``phase`` if given): ``{'bytes', 'phase', 'op', 'name', 'shape', 'op_name'}``."""
    return _largest(list(_hbm_rows(text)), phase, count)


def _largest(rows, phase: str | None, count: int) -> list[dict]:
    rows = sorted((r for r in rows if phase is None or r[1] == phase), key=lambda r: -r[0])
    out = []
    for nbytes, p, ins in rows[:count]:
        m = _OP_NAME.search(ins.line)
        out.append({"bytes": nbytes, "phase": p, "op": ins.op, "name": ins.name, "shape": ins.shape,
                    "op_name": m.group(1) if m else ""})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.hlo_stats train_step.hlo [--phase optimizer] [--top 20]``: the
    HBM-resident traffic of a compiled module written by ``launch.plan --hlo_dir``,
    per phase, and the instructions that move the most of it."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    parser.add_argument("hlo", help="compiled HLO text (launch.plan --hlo_dir writes train_step.hlo)")
    parser.add_argument("--phase", choices=PHASES, default=None, help="only this phase's instructions")
    parser.add_argument("--top", type=int, default=20, help="how many instructions to list")
    args = parser.parse_args(argv)
    with open(args.hlo) as f:
        text = f.read()
    rows = list(_hbm_rows(text))  # one pass over the module for both
    traffic = _phase_totals(rows)
    print("HBM-resident traffic per step: " + ", ".join(f"{p} {traffic[p] / 1e9:.3f} GB" for p in PHASES)
          + f"; whole {traffic['whole'] / 1e9:.3f} GB")
    for r in _largest(rows, args.phase, args.top):
        print(f"{r['bytes'] / 1e6:10.1f} MB  {r['phase']:<11} {r['op']:<13} {r['name']:<32} "
              f"{r['shape'][:60]}  {r['op_name'][-80:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
