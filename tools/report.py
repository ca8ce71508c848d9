"""The results report: tables and training curves from finished training workdirs.

    python -m tools.report --runs workdirs/t15_s1 workdirs/t15_s2 workdirs/t15_s3 \\
        --machine "2-core CPU (...)" --out docs/results \\
        [--notes docs/results/notes.md] [--readme README.md]

Each run folder is what ``jml_jax/train.py`` writes: ``config.json``,
``metrics.jsonl``, ``summary.json`` and, from ``launch/train.py``,
``command.txt``. Runs whose configs differ only by seed form a group (or, with
``--group-by REGEX``, runs whose folder names give the same first capture
group; their configs must still differ only by seed). For each group the
report gives mean, sample standard deviation and min-max over seeds of the
scores at the best dev step, on test when the runs scored test and on dev
otherwise, and a PNG of the dev/test joint F1 and train loss against step.

Writes the full report, ``<out>/results.md`` (every metric per seed, the
commands, threshold sweeps, the published numbers and the ``--notes`` file)
and ``<out>/<group>_curves.png``. With ``--readme`` it also replaces the text
between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in that file
with a short summary table linking to results.md and the notes; nothing else
in the README is touched. The output holds no timestamps, so regenerating from
the same runs gives the same Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import shlex
import sys
from typing import Any, Mapping, Sequence

METRICS_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
BEGIN_MARKER = "<!-- results:begin -->"
END_MARKER = "<!-- results:end -->"

# Config fields that vary between the seeds of one setup.
SEED_KEYS = frozenset({"seed", "data.shuffle_seed"})
# File locations: compared by their last two path parts, so the same data or
# weights under another root directory still count as the same setup.
PATH_KEYS = frozenset({
    "data.train_file", "data.dev_file", "data.test_file", "data.image_dir", "data.vocab_file",
    "data.prepared_dir", "data.fallback_image", "model.bert_init",
    "model.resnet_init", "model.relation_init", "model.original_checkpoint",
})

# (metric key without split, row label). joint_orig is the metric of the JML
# paper's tables (original-jml-code.md §7.1); docs/metrics.md defines them all.
METRIC_ROWS = (
    ("joint_orig/f1", "Joint F1, original string-level (paper's metric)"),
    ("joint_orig/p", "Joint P, original"),
    ("joint_orig/r", "Joint R, original"),
    ("joint_pos/f1", "Joint F1, position-level"),
    ("mate/f1", "MATE F1"),
    ("mate/p", "MATE P"),
    ("mate/r", "MATE R"),
    ("masc/acc", "MASC accuracy (on correctly extracted aspects)"),
    ("masc/macro_f1", "MASC macro-F1 (on correctly extracted aspects)"),
    ("masc_gold/acc", "MASC accuracy (on gold aspects)"),
)
SUMMARY_COLUMNS = (
    ("joint_orig/f1", "Joint F1 (orig)"), ("joint_pos/f1", "Joint F1 (pos)"),
    ("mate/f1", "MATE F1"), ("masc/acc", "MASC acc"), ("masc_gold/acc", "MASC acc (gold)"),
)
# The README's short table: the paper's joint metric and one score per sub-task.
README_COLUMNS = (("joint_orig/f1", "Joint F1 (orig)"), ("mate/f1", "MATE F1"), ("masc/acc", "MASC acc"))

# Ju et al. (EMNLP 2021) Table 3: joint (F1, P, R) in %, per dataset.
PAPER_ROWS = (
    ("JML (soft relation)", "text + image; bert-base-uncased + ResNet-152",
     {"twitter2015": (64.1, 65.0, 63.2), "twitter2017": (66.0, 66.5, 65.5)}),
    ("SPAN (Hu et al., 2019)", "text only; the SPAN architecture",
     {"twitter2015": (53.8, 53.7, 53.9), "twitter2017": (60.6, 59.6, 61.7)}),
    ("D-GCN (Chen et al., 2020)", "text only; syntactic GCN",
     {"twitter2015": (59.4, 58.3, 58.8), "twitter2017": (64.1, 64.2, 64.1)}),
)


class ReportError(ValueError):
    """A run folder, README or argument the report cannot use; the message names it."""


# ---------------------------------------------------------------------------
# Reading runs.


@dataclasses.dataclass(frozen=True)
class Run:
    """One training workdir.

    records: the metrics.jsonl objects, one per logged step, with repeated
      steps (a resumed run re-logs them) resolved to the last write.
    commands: the lines of command.txt (several when the run was resumed).
    sweep: threshold_sweep.json (`launch.evaluate --thresholds`), or None.
    """

    path: pathlib.Path
    config: dict
    summary: dict
    records: list
    commands: list
    sweep: dict | None = None

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def _read_json(path: pathlib.Path) -> Any:
    if not path.is_file():
        raise ReportError(f"{path}: missing (is the run finished? summary.json is written at the end)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON: {e}") from e


def read_metrics(path: pathlib.Path) -> list[dict]:
    """metrics.jsonl records sorted by step, the last write winning for a repeated step."""
    if not path.is_file():
        raise ReportError(f"{path}: missing")
    by_step: dict[int, dict] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ReportError(f"{path}:{lineno}: not a metrics record with a 'step': {e}") from e
            values = {k: float(v) if v in ("nan", "inf", "-inf") else v for k, v in record.items()}
            by_step.setdefault(step, {}).update(values)
    return [by_step[s] for s in sorted(by_step)]


def load_run(path: str | os.PathLike) -> Run:
    """Reads one workdir; fails naming the file that is missing or malformed."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory")
    config = _read_json(path / "config.json")
    summary = _read_json(path / "summary.json")
    for key in ("best_step", "best_scores", "total_steps", "train_seconds"):
        if key not in summary:
            raise ReportError(f"{path / 'summary.json'}: no {key!r}")
    if "seed" not in config:
        raise ReportError(f"{path / 'config.json'}: no 'seed'")
    command_file = path / "command.txt"
    commands = ([c for c in command_file.read_text(encoding="utf-8").splitlines() if c.strip()]
                if command_file.is_file() else [])
    sweep = _read_json(path / "threshold_sweep.json") if (path / "threshold_sweep.json").is_file() else None
    if sweep is not None and not (isinstance(sweep.get("rows"), list) and sweep["rows"]
                                  and all("threshold" in r for r in sweep["rows"])):
        raise ReportError(f"{path / 'threshold_sweep.json'}: needs a non-empty 'rows' list with thresholds")
    return Run(path, config, summary, read_metrics(path / "metrics.jsonl"), commands, sweep)


# ---------------------------------------------------------------------------
# Describing and grouping setups.


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'model.bert': 'tiny', ...}; lists become tuples so they compare and hash."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _short_path(value: Any) -> Any:
    if not isinstance(value, str) or "/" not in value:
        return value
    return "/".join(pathlib.PurePosixPath(value).parts[-2:])


def setup_fields(config: Mapping) -> dict[str, Any]:
    """The config with seeds left out and file locations shortened: equal for seeds of one setup."""
    flat = flatten_config(config)
    return {k: (_short_path(v) if k in PATH_KEYS else v) for k, v in flat.items() if k not in SEED_KEYS}


def config_differences(a: Mapping, b: Mapping) -> list[str]:
    """'key: a_value != b_value' for each setup field where two configs differ."""
    fa, fb = setup_fields(a), setup_fields(b)
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def describe_setup(config: Mapping) -> dict[str, str]:
    """Human-readable setup: dataset, backbone, modality, image switches, optimizer, attention, length."""
    model, data, opt = config["model"], config["data"], config["optimizer"]
    init = model.get("bert_init")
    backbone = f"{model['bert']} ({'pretrained: ' + _short_path(init) if init else 'random init'})"
    out = {"dataset": str(data["name"]), "backbone": backbone}
    if model.get("use_images", True):
        off = [n for n in ("mate_vision", "masc_vision") if not model.get(n, True)]
        out["modality"] = "text + image"
        out["images"] = _gate_label(model) + "".join(f", no {n}" for n in off)
    else:
        out["modality"] = "text only (no image stream)"
    out["optimizer"] = (f"{opt['name']}, lr {opt['learning_rate']:g}, batch {config['batch_size']}, "
                        f"{config['num_epochs']} epochs")
    out["attention"] = "masked (fix)" if model.get("mask_attention") else "unmasked (original)"
    out["max_seq_length"] = str(data["max_seq_length"])
    threshold = (config.get("decode") or {}).get("logit_threshold")
    out["threshold"] = "not recorded" if threshold is None else f"{threshold:g}"
    return out


def _head_gates(model: Mapping) -> tuple[str, str]:
    """The relation gate each head uses: a per-head override, else ``relation_gate``."""
    base = model["relation_gate"]
    return model.get("mate_relation_gate") or base, model.get("masc_relation_gate") or base


def _gate_label(model: Mapping) -> str:
    mate, masc = _head_gates(model)
    return f"relation gate {mate}" if mate == masc else f"relation gate {mate} for MATE, {masc} for MASC"


def short_setup(config: Mapping) -> str:
    """One line that tells setups apart: backbone, modality, optimizer and lr, masking, threshold."""
    d, opt = describe_setup(config), config["optimizer"]
    masked = "masked" if config["model"].get("mask_attention") else "unmasked"
    return (f"{d['backbone'].split(' (')[0]}, {d['modality'].split(' (')[0]}, {opt['name']} lr "
            f"{opt['learning_rate']:g}, {masked}, threshold {d['threshold']}")


def setup_slug(config: Mapping) -> str:
    """A file-name-safe group name from the same fields, e.g. 'twitter2015-minilm-l6-text-bert_adam-unmasked-L64'."""
    model = config["model"]
    parts = [config["data"]["name"], model["bert"]]
    if model.get("use_images", True):
        mate, masc = _head_gates(model)
        parts += ["mm", f"gate_{mate}" if mate == masc else f"gate_mate_{mate}_masc_{masc}"]
        parts += [f"no_{n}" for n in ("mate_vision", "masc_vision") if not model.get(n, True)]
    else:
        parts.append("text")
    parts += [config["optimizer"]["name"], "masked" if model.get("mask_attention") else "unmasked",
              f"L{config['data']['max_seq_length']}"]
    return _slug("-".join(str(p) for p in parts))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


@dataclasses.dataclass
class Group:
    """Runs of one setup, sorted by seed; `split` is the one reported ('test' or 'dev')."""

    name: str
    runs: list
    split: str

    @property
    def config(self) -> dict:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def _reporting_split(runs: Sequence[Run]) -> str:
    has_test = ["test/joint_orig/f1" in r.summary["best_scores"] for r in runs]
    if all(has_test):
        return "test"
    if any(has_test):
        raise ReportError("runs of one group disagree on test scores: "
                          + ", ".join(f"{r.path} ({'test' if t else 'dev only'})" for r, t in zip(runs, has_test)))
    return "dev"


def group_runs(runs: Sequence[Run], group_by: str | None = None) -> list[Group]:
    """Groups runs by setup (configs equal but for seeds), or by a regex over folder names.

    Groups come in the order of their first run in ``runs``, so the command
    line decides the order of the report's tables.

    Args:
      group_by: None to group by config, or a regex searched in each run's
        folder name whose first capture group (the whole match if none) names
        the group; its runs must still differ only by seed.

    Raises:
      ReportError naming the runs when a group mixes setups or repeats a seed.
    """
    buckets: dict[Any, list[Run]] = {}
    names: dict[Any, str] = {}
    for run in runs:
        if group_by is None:
            key = tuple(sorted((k, repr(v)) for k, v in setup_fields(run.config).items()))
            names.setdefault(key, setup_slug(run.config))
        else:
            m = re.search(group_by, run.path.name)
            if m is None:
                raise ReportError(f"--group-by {group_by!r} does not match run folder {run.path}")
            key = m.group(1) if m.groups() else m.group(0)
            names[key] = _slug(key)
        buckets.setdefault(key, []).append(run)
    _disambiguate(names, buckets)
    groups = []
    for key, members in buckets.items():
        members = sorted(members, key=lambda r: r.seed)
        first = members[0]
        for other in members[1:]:
            diff = config_differences(first.config, other.config)
            if diff:
                raise ReportError(f"{first.path} and {other.path} are grouped as {names[key]!r} but differ "
                                  f"in more than the seed: " + "; ".join(diff))
        for a, b in zip(members, members[1:]):
            if a.seed == b.seed:
                raise ReportError(f"{a.path} and {b.path} are the same setup with the same seed {a.seed}")
        groups.append(Group(names[key], members, _reporting_split(members)))
    return groups  # in the order their first run was given


def _disambiguate(names: dict, buckets: Mapping) -> None:
    """Appends the differing config fields to group names that collide.

    Fields that every colliding group's config records come first; a field
    some configs lack (a run made before the field existed) is named only
    when the recorded ones leave two names equal.
    """
    by_name: dict[str, list] = {}
    for key, name in names.items():
        by_name.setdefault(name, []).append(key)
    for name, keys in by_name.items():
        if len(keys) < 2:
            continue
        fields = [setup_fields(buckets[k][0].config) for k in keys]
        differing = sorted({f for fs in fields for f in fs if len({repr(x.get(f)) for x in fields}) > 1})
        everywhere = [f for f in differing if all(f in fs for fs in fields)]

        def named(chosen):
            return [_slug(name + "-" + "-".join(f"{f.split('.')[-1]}={fs.get(f)}" for f in chosen))
                    for fs in fields]

        new = named(everywhere)
        if len(set(new)) < len(new):
            new = named(differing)
        names.update(zip(keys, new))


# ---------------------------------------------------------------------------
# Statistics and tables.


@dataclasses.dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (n - 1; NaN for one seed), min and max."""

    mean: float
    std: float
    min: float
    max: float
    n: int


def seed_stats(values: Sequence[float]) -> Stats:
    n = len(values)
    if n == 0:
        raise ReportError("no values to summarise")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Stats(mean, std, min(values), max(values), n)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def format_stats(stats: Stats) -> str:
    """'48.1 ± 1.2 (46.9–49.3)' in percent; '48.1' for one seed."""
    if stats.n == 1:
        return _pct(stats.mean)
    return f"{_pct(stats.mean)} ± {_pct(stats.std)} ({_pct(stats.min)}–{_pct(stats.max)})"


def group_values(group: Group, key: str) -> list[float] | None:
    """The per-seed best-dev-step values of '<split>/<key>', or None when a run lacks it."""
    values = [r.summary["best_scores"].get(f"{group.split}/{key}") for r in group.runs]
    if any(v is None for v in values):
        return None
    return [float(v) for v in values]


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def summary_table(groups: Sequence[Group], columns: Sequence[tuple[str, str]] = SUMMARY_COLUMNS, *,
                  train_time: bool = True) -> str:
    """One row per group: dataset, setup, reported split, seeds, then ``columns`` (mean ± std (range))."""
    head = ["Dataset", "Setup", "Split", "Seeds"] + [c for _, c in columns] + (["Train time / run"] * train_time)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        d = describe_setup(g.config)
        cells = [d["dataset"], short_setup(g.config), f"**{g.split}**", ", ".join(map(str, g.seeds))]
        for key, _ in columns:
            values = group_values(g, key)
            cells.append("n/a" if values is None else format_stats(seed_stats(values)))
        if train_time:
            cells.append(_seconds(seed_stats([float(r.summary["train_seconds"]) for r in g.runs]).mean))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_table(group: Group) -> str:
    """Rows = metrics; columns = mean, std, min, max and each seed (all in %)."""
    seeds = [f"seed {s}" for s in group.seeds]
    head = [f"{group.split} metric at best dev step (%)", "mean", "std", "min", "max"] + seeds
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    rows = [(f"{group.split}/{k}", label) for k, label in METRIC_ROWS]
    if group.split != "dev":
        rows.append(("dev/joint_orig/f1", "dev Joint F1, original (selects the step)"))
    for key, label in rows:
        values = [r.summary["best_scores"].get(key) for r in group.runs]
        if any(v is None for v in values):
            missing = sum(v is None for v in values)
            lines.append(f"| {label} | n/a (absent in {missing} of {len(values)} runs) |"
                         + " |" * (3 + len(seeds)))
            continue
        s = seed_stats([float(v) for v in values])
        cells = [label, _pct(s.mean), _pct(s.std), _pct(s.min), _pct(s.max)] + [_pct(float(v)) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Curves.


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in run.records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(group: Group, path: pathlib.Path) -> None:
    """Dev (and test) joint_orig F1 and train loss against step, one line per seed, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    from matplotlib import pyplot as plt

    panels = [("dev/joint_orig/f1", "dev joint F1 (orig, %)")]
    if any(_series(r, "test/joint_orig/f1")[0] for r in group.runs):
        panels.append(("test/joint_orig/f1", "test joint F1 (orig, %)"))
    panels.append(("train/loss", "train loss"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes[0], panels):
        scale = 1.0 if key.startswith("train/") else 100.0
        for i, run in enumerate(group.runs):
            steps, values = _series(run, key)
            if not steps:
                continue
            color = colors[i % len(colors)]
            ax.plot(steps, [scale * v for v in values], color=color, lw=1.2, label=f"seed {run.seed}")
            best = run.summary["best_step"]
            if scale != 1.0 and best in steps:
                ax.plot([best], [scale * values[steps.index(best)]], "o", color=color, ms=5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title="dot: best dev step", title_fontsize=7)
    fig.suptitle(group.name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------
# Markdown.


def paper_table() -> str:
    lines = [
        "| Approach (paper, Table 3) | Setup | T15 F1 | T15 P | T15 R | T17 F1 | T17 P | T17 R |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, setup, scores in PAPER_ROWS:
        cells = [f"{v:.1f}" for ds in ("twitter2015", "twitter2017") for v in scores[ds]]
        lines.append(f"| {name} | {setup} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_section(group: Group, *, machine: str, image_path: str) -> str:
    d = describe_setup(group.config)
    times = seed_stats([float(r.summary["train_seconds"]) for r in group.runs])
    steps = sorted({int(r.summary["total_steps"]) for r in group.runs})
    split_note = ("test (the checkpoint is chosen on dev; test never selects)" if group.split == "test"
                  else "**dev** (no test scores in these runs: the same dev scores chose the step, so they "
                       "are optimistic)")
    resumed = [r.path.name for r in group.runs if len(r.commands) > 1]
    out = [
        f"### {group.name}",
        "",
        f"- Dataset: `{d['dataset']}`; reported split: {split_note}",
        f"- Backbone: {d['backbone']}; {d['modality']}"
        + (f"; {d['images']}" if "images" in d else ""),
        f"- Optimizer: {d['optimizer']}; attention/softmax masking: {d['attention']}; "
        f"max_seq_length {d['max_seq_length']}; decoding threshold (start + end logit) {d['threshold']}",
        f"- Seeds: {', '.join(map(str, group.seeds))} ({len(group.runs)} run{'s' if len(group.runs) > 1 else ''}); "
        f"best dev steps: {', '.join(str(r.summary['best_step']) for r in group.runs)} "
        f"of {'/'.join(map(str, steps))}",
        f"- Time: {_seconds(times.mean)} per run"
        + (f" on average ({_seconds(times.min)}–{_seconds(times.max)}), {_seconds(times.mean * times.n)} in all"
           if times.n > 1 else "")
        + f", on {machine} (the training loop with its periodic evaluations, from summary.json)",
    ]
    if resumed:
        out.append(f"- Resumed runs ({', '.join(resumed)}): their time counts only the last launch")
    out += ["", "Commands:", "", "```bash"]
    for run in group.runs:
        out += run.commands or [f"# {run.path.name}: command not recorded (no command.txt)"]
    out += ["```", "", metrics_table(group), "",
            f"![{group.name}: joint F1 and train loss against step]({image_path})", ""]
    for run in group.runs:
        if run.sweep is not None:
            out += [sweep_table(run), ""]
    return "\n".join(out)


SWEEP_COLUMNS = (("joint_orig/f1", "Joint F1"), ("mate/p", "MATE P"), ("mate/r", "MATE R"), ("mate/f1", "MATE F1"))


def sweep_table(run: Run) -> str:
    """The decoding-threshold sweep of one run's checkpoint; the row dev picks is in bold."""
    rows, config_threshold = run.sweep["rows"], (run.config.get("decode") or {}).get("logit_threshold")
    splits = [s for s in ("dev", "test") if f"{s}/joint_orig/f1" in rows[0]]
    if "dev" not in splits:
        raise ReportError(f"{run.path / 'threshold_sweep.json'}: has no dev scores to choose a threshold with")
    chosen = max(rows, key=lambda r: r["dev/joint_orig/f1"])
    steps = sorted({int(r["step"]) for r in rows})
    head = ["threshold"] + [f"{s} {label}" for s in splits for _, label in SWEEP_COLUMNS]
    lines = [
        f"Decoding-threshold sweep of `{run.path.name}` (checkpoint step {'/'.join(map(str, steps))}, "
        f"chosen in training at threshold "
        f"{'(not recorded)' if config_threshold is None else format(config_threshold, 'g')}; "
        f"`launch.evaluate --thresholds`). "
        f"Dev picks **{chosen['threshold']:g}**; the test column is read at that row only.",
        "",
        "| " + " | ".join(head) + " |",
        "|---:|" + "---:|" * (len(head) - 1),
    ]
    for r in rows:
        cells = [f"{r['threshold']:g}"] + [_pct(float(r[f"{s}/{k}"])) for s in splits for k, _ in SWEEP_COLUMNS]
        if r is chosen:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_section(groups: Sequence[Group], *, machine: str, image_dir: str, notes: str | None = None,
                   command: str | None = None, metrics_doc: str = "docs/metrics.md") -> str:
    """The body of results.md: summary, one ### section per group, published numbers, notes.

    image_dir: where the PNGs are, relative to the Markdown file ('' for the same folder).
    metrics_doc: docs/metrics.md, relative to the Markdown file.
    """
    prefix = image_dir.rstrip("/") + "/" if image_dir else ""
    out = []
    if command:
        out += [f"Generated by `{command}` from the runs' config.json, metrics.jsonl and summary.json.", ""]
    out += [
        "Scores are in %, taken at each run's best dev step (dev `joint_orig/f1` selects); "
        "mean ± sample standard deviation over seeds (n − 1), with min–max in brackets. "
        f"Metric definitions: [docs/metrics.md]({metrics_doc}); `joint_orig` is the JML paper's joint metric.",
        "",
        "### Summary",
        "",
        summary_table(groups),
        "",
    ]
    for g in groups:
        out.append(group_section(g, machine=machine, image_path=f"{prefix}{g.name}_curves.png"))
    out += [
        "### Other setups (not comparable)",
        "",
        "Published numbers, for orientation only: JML uses the tweet images and bert-base-uncased "
        "with ResNet-152, and reports Twitter-2017 on its test split; SPAN and D-GCN are different "
        "text-only architectures. Same joint metric (`joint_orig`), different setups.",
        "",
        paper_table(),
        "",
    ]
    if notes:
        out += ["### Notes", "", notes.strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def readme_block(groups: Sequence[Group], *, results_link: str, notes_link: str | None = None) -> str:
    """The README's short summary: one table row per group and links to the full report.

    results_link / notes_link: results.md and the notes file, relative to the README.
    """
    jml = {ds: scores[0] for ds, scores in PAPER_ROWS[0][2].items()}
    notes = f"; the notes that explain them: [{notes_link}]({notes_link})" if notes_link else ""
    return "\n".join([
        "Scores in %, at each run's best dev step (dev `joint_orig/f1` selects), on the split marked; "
        "mean ± sample standard deviation over seeds, min–max in brackets. Generated by "
        "`python -m tools.report`: every metric per seed, the curves, threshold sweeps and commands are in "
        f"[{results_link}]({results_link}){notes}.",
        "",
        summary_table(groups, README_COLUMNS, train_time=False),
        "",
        f"For orientation only (a different setup): the paper's JML, with images, bert-base-uncased and "
        f"ResNet-152, reports joint F1 {jml['twitter2015']:.1f} on Twitter-2015 and "
        f"{jml['twitter2017']:.1f} on Twitter-2017 (test).",
    ]) + "\n"


def replace_readme_block(text: str, block: str, *, name: str = "README") -> str:
    """``text`` with everything between the results markers replaced by ``block``.

    Raises:
      ReportError when a marker is missing, repeated or out of order.
    """
    begins, ends = text.count(BEGIN_MARKER), text.count(END_MARKER)
    if begins != 1 or ends != 1:
        raise ReportError(f"{name}: needs exactly one {BEGIN_MARKER!r} and one {END_MARKER!r} "
                          f"(found {begins} and {ends})")
    start, end = text.index(BEGIN_MARKER) + len(BEGIN_MARKER), text.index(END_MARKER)
    if end < start:
        raise ReportError(f"{name}: {END_MARKER!r} comes before {BEGIN_MARKER!r}")
    return text[:start] + "\n" + block.strip() + "\n" + text[end:]


# ---------------------------------------------------------------------------
# Entry point.


def _relative(target: pathlib.Path, start: pathlib.Path) -> str:
    return pathlib.PurePath(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, machine: str,
                 title: str = "Results", group_by: str | None = None,
                 notes_file: str | os.PathLike | None = None,
                 readme: str | os.PathLike | None = None, command: str | None = None) -> list[Group]:
    """Writes ``out/results.md`` and ``out/<group>_curves.png``; returns the groups.

    Args:
      notes_file: Markdown appended to results.md under 'Notes' (and linked from the README block).
      readme: a file whose results markers get the short summary (`readme_block`); the rest of it
        is left byte for byte as it was.
    """
    if not run_dirs:
        raise ReportError("no runs given")
    if not machine or not machine.strip():
        raise ReportError("--machine must describe the machine the runs trained on")
    notes = None
    if notes_file is not None:
        notes_file = pathlib.Path(notes_file)
        if not notes_file.is_file():
            raise ReportError(f"--notes {notes_file}: not found")
        notes = notes_file.read_text(encoding="utf-8")
    groups = group_runs([load_run(p) for p in run_dirs], group_by)
    out = pathlib.Path(out)
    readme_text = None
    if readme is not None:  # check the markers before writing anything
        readme = pathlib.Path(readme)
        if not readme.is_file():
            raise ReportError(f"{readme}: not found")
        readme_text = readme.read_bytes().decode("utf-8")  # bytes: line endings stay as they are
        replace_readme_block(readme_text, "", name=str(readme))
    out.mkdir(parents=True, exist_ok=True)
    for g in groups:
        plot_curves(g, out / f"{g.name}_curves.png")
    body = render_section(groups, machine=machine, image_dir="", notes=notes, command=command,
                          metrics_doc=_relative(METRICS_DOC, out))
    (out / "results.md").write_text(f"# {title}\n\n{body}", encoding="utf-8")
    if readme is not None:
        block = readme_block(
            groups, results_link=_relative(out / "results.md", readme.parent),
            notes_link=None if notes_file is None else _relative(notes_file, readme.parent))
        readme.write_bytes(replace_readme_block(readme_text, block, name=str(readme)).encode("utf-8"))
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="training workdirs")
    parser.add_argument("--out", default="docs/results", help="folder for results.md and the PNGs")
    parser.add_argument("--machine", required=True, help='what the runs trained on, e.g. "2-core CPU (...)"')
    parser.add_argument("--title", default="Results", help="heading of results.md")
    parser.add_argument("--group-by", default=None,
                        help="regex over run folder names; its first group names the group (default: by config)")
    parser.add_argument("--notes", default=None,
                        help="Markdown file appended to results.md under 'Notes' and linked from the README")
    parser.add_argument("--readme", default=None,
                        help="file whose results markers get the short summary table (nothing else changes)")
    args = parser.parse_args(argv)
    try:
        groups = write_report(args.runs, args.out, machine=args.machine, title=args.title,
                              group_by=args.group_by, notes_file=args.notes, readme=args.readme,
                              command="python -m tools.report " + shlex.join(argv))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for g in groups:
        print(f"{g.name}: {len(g.runs)} runs (seeds {g.seeds}), reported on {g.split}")
    print(f"wrote {pathlib.Path(args.out) / 'results.md'}" + (f" and {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
