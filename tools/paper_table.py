"""The paper's tables from finished runs, in the paper's layout (docs/paper.md).

    python -m tools.paper_table --table 7 --root WORKROOT [--seeds 42 43 44] [--out FILE]
    python -m tools.paper_table --table 7 --root WORKROOT --seeds 42 43 44 --plan

A row of a table (one dataset x one variant) trains its seeds as one
population (``--config.runs.seeds=42,43,44``, jml_jax/population.py): one
program in the row's folder ``WORKROOT/<dataset>_<variant or full>``, each
seed's run afterwards an ordinary run folder
``WORKROOT/<dataset>_<variant or full>/runs/seed_<seed>`` (`run_dir`, the one
owner of the layout). Stage one stays a single run in ``WORKROOT/trc_relation``.

``--plan`` prints what a table needs, one line per row, stage one first,
tab-separated: the row's workdir, its ``--config`` value, extra flags, its
seeds (comma-separated, the ``--config.runs.seeds`` value; empty for stage
one), then the run folder of each seed, one column each, in the seeds' order
(what ``scripts/paper_table.sh`` trains and evaluates). It refuses a row whose
folder already holds a population of other seeds. Without ``--plan``, the
table is rendered in Markdown from each run's ``summary.json`` (written for
every run when its population ends): test scores at the best dev step (dev
``joint_orig/f1`` selects, §7.4), in %, the mean over the seeds that have
finished (± sample standard deviation when there are several), each beside
the paper's published number. Runs not finished yet show as "…" and are listed
under the table; a run its population stopped (non-finite loss) is left out
of the mean and listed too.

The grids (one owner: `GRIDS`; row folders are shared, so Table 3's JML rows
serve Tables 5, 6 and 7 too). The rows of a grid differ in architecture
switches (config variants), so each row is its own population; rows that
differed only in per-run numeric fields (jml_jax/runs.py `PER_RUN_FIELDS`)
could share one, but no table of the paper has such rows:

  3  joint F1 / P / R on Twitter-2015 and -2017: JML (soft gate), JML (hard)
  4  TRC relation classification F1 (stage one; test split of the 80/20 split)
  5  MATE F1 / P / R of the joint model (JML-MATE)
  6  MASC accuracy on correctly extracted aspects (JML-MASC)
  7  joint F1 / P / R: full, w/o Relation All / MATE / MASC, w/o Vision MATE / MASC
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
from typing import Sequence

DATASETS = ("twitter2015", "twitter2017")
STAGE_ONE = "trc_relation"
# Table 7 rows: (label, config variant); '' is the full model.
ABLATIONS = (
    ("JML (Full)", ""),
    ("w/o Relation All", "no_relation"),
    ("w/o Relation MATE", "no_relation_mate"),
    ("w/o Relation MASC", "no_relation_masc"),
    ("w/o Vision MATE", "no_mate_vision"),
    ("w/o Vision MASC", "no_masc_vision"),
)
JOINT = (("F1", "joint_orig/f1"), ("P", "joint_orig/p"), ("R", "joint_orig/r"))
MATE = (("F1", "mate/f1"), ("P", "mate/p"), ("R", "mate/r"))
MASC = (("Acc", "masc/acc"),)
# Table 4 reads stage one's summary: the last epoch (what the joint model uses,
# §2.4) and the best epoch by test image_adds F1 (what a paper would report).
RELATION = (("F1 image adds (last epoch)", "final", "test/image_adds/f1"),
            ("F1 image adds (best epoch)", "best", "test/image_adds/f1"),
            ("F1 text represented (last epoch)", "final", "test/text_represented/f1"))

# table -> (title, rows as (label, variant), columns as (name, metric), published numbers:
# label -> dataset -> values in column order), from the paper (Ju et al., EMNLP 2021).
GRIDS = {
    3: ("Table 3: joint aspect extraction and sentiment (test, %)",
        (("JML", ""), ("JML (hard)", "hard_gate")), JOINT,
        {"JML": {"twitter2015": (64.1, 65.0, 63.2), "twitter2017": (66.0, 66.5, 65.5)},
         "JML (hard)": {"twitter2015": (62.8, 63.9, 61.8), "twitter2017": (63.7, 64.1, 63.2)}}),
    5: ("Table 5: aspect term extraction, the joint model's MATE (test, %)",
        (("JML-MATE", ""),), MATE,
        {"JML-MATE": {"twitter2015": (82.4, 83.6, 81.2), "twitter2017": (91.4, 92.0, 90.7)}}),
    6: ("Table 6: aspect sentiment, the joint model's MASC (test accuracy on correctly extracted aspects, %)",
        (("JML-MASC", ""),), MASC,
        {"JML-MASC": {"twitter2015": (78.7,), "twitter2017": (72.7,)}}),
    7: ("Table 7: ablations, joint F1 / P / R (test, %)", ABLATIONS, JOINT,
        {"JML (Full)": {"twitter2015": (64.1, 65.0, 63.2), "twitter2017": (66.0, 66.5, 65.5)},
         "w/o Relation All": {"twitter2015": (62.7, 62.1, 63.3), "twitter2017": (64.8, 64.2, 65.5)},
         "w/o Relation MATE": {"twitter2015": (63.7, 63.0, 64.3), "twitter2017": (64.9, 65.2, 64.7)},
         "w/o Relation MASC": {"twitter2015": (63.3, 64.1, 62.5), "twitter2017": (65.3, 65.8, 64.8)},
         "w/o Vision MATE": {"twitter2015": (62.4, 64.1, 60.9), "twitter2017": (64.7, 65.5, 63.9)},
         "w/o Vision MASC": {"twitter2015": (62.3, 62.3, 62.4), "twitter2017": (64.3, 64.8, 63.9)}}),
}
TABLE4_PAPER = 89.8  # JML's TRC F1 (Table 4)
TABLES = (3, 4, 5, 6, 7)


# A population's runs live in <row>/RUNS_DIR/seed_<seed> (jml_jax/population.py
# RUNS_DIR, jml_jax/runs.py RunsSpec.name; tests/test_paper_table.py checks both).
RUNS_DIR = "runs"


def row_name(dataset: str, variant: str) -> str:
    return f"{dataset}_{variant or 'full'}"


def row_dir(root: str | pathlib.Path, dataset: str, variant: str) -> pathlib.Path:
    """The folder of a row's population (its checkpoints and summary.json)."""
    return pathlib.Path(root) / row_name(dataset, variant)


def run_dir(root: str | pathlib.Path, dataset: str, variant: str, seed: int) -> pathlib.Path:
    """The ordinary run folder of one seed of a row (what `launch.evaluate` reads)."""
    return row_dir(root, dataset, variant) / RUNS_DIR / f"seed_{int(seed)}"


def _rows(table: int) -> list[tuple[str, str]]:
    """(dataset, variant) of every stage-two row ``table`` needs."""
    if table == 4:
        return []
    _, rows, _, _ = GRIDS[table]
    return [(dataset, variant) for dataset in DATASETS for _, variant in rows]


def plan(table: int, root: str | pathlib.Path, seeds: Sequence[int]) -> list[tuple[str, ...]]:
    """(workdir, --config value, extra flags, seeds, run folder of each seed...)
    of every row ``table`` needs, stage one first (a single run: no seeds, no
    run folders)."""
    root = pathlib.Path(root)
    stage_one = root / STAGE_ONE
    runs: list[tuple[str, ...]] = [(str(stage_one), "configs/trc_relation.py", "", "")]
    for dataset, variant in _rows(table):
        config = f"configs/{dataset}.py" + (f":{variant}" if variant else "")
        extra = f"--config.model.relation_init={stage_one / 'relation'}"
        runs.append((str(row_dir(root, dataset, variant)), config, extra, ",".join(str(int(s)) for s in seeds),
                     *(str(run_dir(root, dataset, variant, s)) for s in seeds)))
    return runs


def _held_seeds(folder: pathlib.Path) -> list[int] | None:
    """The seeds of the population a row folder holds (finished: its
    summary.json; started: its config.json), or None if it holds none."""
    summary = read_summary(folder)
    if summary is not None:
        return [int(s) for s in summary.get("seeds") or ()]
    config = folder / "config.json"
    if config.exists():
        seeds = (json.loads(config.read_text()).get("runs") or {}).get("seeds")
        return [int(s) for s in seeds or ()]
    return None


def check_rows(table: int, root: str | pathlib.Path, seeds: Sequence[int]) -> None:
    """Raises ValueError naming the first row whose folder holds a population
    of other seeds: a population's checkpoints hold all its runs, so it can
    neither resume with other seeds nor grow. Also refuses a seed given twice."""
    seeds = [int(s) for s in seeds]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seed(s) {twice} given twice: each run of a row needs its own seed")
    for dataset, variant in _rows(table):
        folder = row_dir(root, dataset, variant)
        held = _held_seeds(folder)
        if held is None or held == seeds:
            continue
        if not held:
            raise ValueError(f"{folder} holds a single run, not a population of seeds {seeds}: "
                             "move it aside or use another WORKROOT")
        raise ValueError(
            f"{folder} holds the population of seeds {held}, not {seeds}: rerun with "
            f"SEEDS=\"{' '.join(map(str, held))}\" (--seeds {' '.join(map(str, held))}) or use another WORKROOT")


def read_summary(workdir: str | pathlib.Path) -> dict | None:
    path = pathlib.Path(workdir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "…"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _scores(root: pathlib.Path, dataset: str, variant: str, seeds: Sequence[int], key: str,
            missing: list[str], stopped: list[str]) -> list[float]:
    values = []
    for seed in seeds:
        folder = run_dir(root, dataset, variant, seed)
        name = str(folder.relative_to(root))
        summary = read_summary(folder)
        if summary is None:
            if name not in missing:
                missing.append(name)
            continue
        if summary.get("stopped"):  # its population stopped it: non-finite loss or gradients
            name = f"{name} (step {summary['stopped'].get('step')})"
            if name not in stopped:
                stopped.append(name)
            continue
        value = (summary.get("best_scores") or {}).get(f"test/{key}")
        if value is None:
            raise KeyError(f"{folder}/summary.json has no test/{key} at its best dev step: "
                           "the run must score test (config.eval_splits has 'test')")
        if not math.isfinite(value):
            raise ValueError(f"{folder}: test/{key} is {value}")
        values.append(float(value))
    return values


def render(table: int, root: str | pathlib.Path, seeds: Sequence[int]) -> str:
    """The Markdown table of ``table`` from the runs under ``root``."""
    root = pathlib.Path(root)
    missing: list[str] = []
    stopped: list[str] = []
    if table == 4:
        summary = read_summary(root / STAGE_ONE)
        lines = ["Table 4: text-image relation classification on the TRC test split (%)", "",
                 "| Approach | F1 |", "|---|---:|", f"| JML (paper) | {TABLE4_PAPER:.1f} |"]
        for label, which, key in RELATION:
            value = None
            if summary is not None:
                scores = summary.get("final_scores" if which == "final" else "best_scores") or {}
                value = scores.get(key)
            lines.append(f"| JML, this run: {label} | {'…' if value is None else f'{100 * value:.1f}'} |")
        if summary is None:
            missing.append(STAGE_ONE)
    else:
        title, rows, columns, paper = GRIDS[table]
        names = [c for c, _ in columns]
        header = "| Approach | " + " | ".join(f"{d} {n}" for d in DATASETS for n in names) + " |"
        lines = [title, "", header, "|---|" + "---:|" * (len(DATASETS) * len(columns))]
        for label, variant in rows:
            published = [f"{v:.1f}" for d in DATASETS for v in paper[label][d]]
            ours = [_cell(_scores(root, d, variant, seeds, key, missing, stopped)) for d in DATASETS for _, key in columns]
            lines.append(f"| {label} (paper) | " + " | ".join(published) + " |")
            lines.append(f"| {label} (this run) | " + " | ".join(ours) + " |")
    lines.append("")
    seeds_text = ", ".join(map(str, seeds))
    lines.append(f"This run: runs under `{root}`" + (f", seeds {seeds_text}" if table != 4 else "")
                 + "; test scores at the best dev step, mean ± sample std over finished seeds.")
    if missing:
        lines.append(f"Not finished (no summary.json): {', '.join(missing)}.")
    if stopped:
        lines.append(f"Stopped by a non-finite loss, left out of the mean: {', '.join(stopped)}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=int, choices=TABLES, required=True)
    parser.add_argument("--root", required=True, help="folder holding the table's run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--plan", action="store_true", help="print the rows to train, tab-separated, and exit")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    if args.plan:
        try:
            check_rows(args.table, args.root, args.seeds)
        except ValueError as e:
            print(f"paper_table: {e}", file=sys.stderr)
            return 1
        for row in plan(args.table, args.root, args.seeds):
            print("\t".join(row))
        return 0
    text = render(args.table, args.root, args.seeds)
    print(text, end="")
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
