"""Reading compiled (optimized, per-device) HLO text: loops, collectives, loop-aware cost.

XLA's ``cost_analysis()`` counts the body of a while loop once, not times its
trip count. `summarize_hlo` finds each loop's trip count (``known_trip_count``
or the condition's ``compare(i, constant), direction=LT``), how often each
computation runs per step, the collectives with those multiplicities, and the
leading size of watched activation shapes; `xla_cost` runs XLA's own cost
model on the module or on one loop body as if it were the entry.
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
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return out


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    op: str
    rest: str


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
            comps[current].append(_Instr(m.group(1), m.group(2), m.group(3), m.group(4)))
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


def summarize_hlo(text: str, watch_trailing: Sequence[tuple[int, ...]] = ()) -> HloSummary:
    """Counts an optimized HLO module's loops and collectives, with loop trip counts.

    ``watch_trailing``: activation shapes ``[b, *trailing]`` whose most common
    leading size ``b`` (times the trip counts of the loops that hold it) is
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
            if kind in COLLECTIVES and not op.endswith("-done"):
                size = max((_DTYPE_BYTES[d] * math.prod(s) for d, s in _arrays(ins.shape)), default=0)
                entry_ = collectives.setdefault(kind, {"count": 0, "bytes": 0})
                entry_["count"] += int(n)
                entry_["bytes"] += int(n * size)
            for _, dims in _arrays(ins.shape) if watch else ():
                for t in watch:
                    if len(dims) == len(t) + 1 and dims[1:] == t:
                        size = dims[0] * int(round(n / max(n1, 1.0)))
                        counts = seen_sizes.setdefault(t, {})
                        counts[size] = counts.get(size, 0) + 1
    # The size most instructions work at (a stray reshape or gather of the
    # local rows does not count).
    leading = {t: max(counts, key=counts.get) for t, counts in seen_sizes.items()}
    return HloSummary(loops, collectives, leading)


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
