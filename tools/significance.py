"""Is run A better than run B? Paired tests on per-sentence test predictions.

    python -m tools.significance RUN_A RUN_B [--split test] [--resamples 10000] [--seed 0] \\
        [--test bootstrap|randomization]

RUN_A / RUN_B are training workdirs evaluated with ``python -m launch.evaluate``
(which writes ``<workdir>/predictions/<split>_predictions.jsonl``,
jml_jax/evaluators.py `write_predictions`) or such ``.jsonl`` files themselves.
Both must hold the same sentences (matched by ``example_id``) with the same
gold aspects.

Metrics: the original's joint F1 (``joint_orig/f1``: a predicted aspect counts
when its normalised text and polarity equal a gold aspect's, §7.1,
`jml_jax.metrics.joint_counts_original`) and MATE F1 (``mate/f1``: exact word
spans, `jml_jax.metrics.mate_counts_position`). Both are corpus-level: counts
summed over sentences, then P/R/F1, so the tests resample sentences and
recompute F1 from the summed counts (never an average of per-sentence F1s).

Statistics (Koehn 2004; Berg-Kirkpatrick et al. 2012), both paired by sentence:

* 95% confidence interval of F1(A) - F1(B): percentile interval of the
  paired bootstrap (sentences drawn with replacement, the same draw for A and
  B), always.
* p-value (two-sided, H0: no difference), ``--test``:
  ``bootstrap`` (default): the paired bootstrap with the shifted null,
  p = (1 + #{|d* - d| >= |d|}) / (1 + R), where d is the observed and d* a
  resampled difference; ``randomization``: approximate randomisation, each
  sentence's A and B predictions swapped with probability 1/2,
  p = (1 + #{|d*| >= |d|}) / (1 + R).
  The +1 counts the observed sample, so p is never 0 and equals 1 when the
  runs agree on every sentence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

from jml_jax import metrics as metrics_lib

METRICS = ("joint_orig/f1", "mate/f1")
TESTS = ("bootstrap", "randomization")
_CHUNK = 500  # resamples per vectorised block (memory: chunk x sentences x 3 ints)


def predictions_path(run: str | pathlib.Path, split: str = "test") -> pathlib.Path:
    """A run folder's ``predictions/<split>_predictions.jsonl``, or the file given."""
    path = pathlib.Path(run)
    if path.is_dir():
        path = path / "predictions" / f"{split}_predictions.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run `python -m launch.evaluate --workdir={run} "
                                    "...` first (it writes predictions/<split>_predictions.jsonl)")
    elif not path.exists():
        raise FileNotFoundError(f"{path}: neither a run folder nor a predictions file")
    return path


def read_predictions(path: str | pathlib.Path) -> list[dict]:
    with pathlib.Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sentence_counts(records: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per metric, int64 [N, 3] (common, retrieved, relevant) of each sentence."""
    joint, mate = [], []
    for rec in records:
        pred, gold = rec["predicted"], rec["gold"]
        joint.append(metrics_lib.joint_counts_original(
            [a["text"] for a in pred], [a["polarity"] for a in pred],
            [g["text"] for g in gold], [g["polarity"] for g in gold]))
        mate.append(metrics_lib.mate_counts_position(
            [(a["word_start"], a["word_end"]) for a in pred], [(g["word_start"], g["word_end"]) for g in gold]))
    return {"joint_orig/f1": np.asarray(joint, np.int64).reshape(-1, 3),
            "mate/f1": np.asarray(mate, np.int64).reshape(-1, 3)}


def pair_records(a: Sequence[dict], b: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """A's and B's records in one order, matched by example_id; refuses
    different sentence sets or different gold aspects."""
    index_b = {r["example_id"]: r for r in b}
    ids_a = [r["example_id"] for r in a]
    if len(set(ids_a)) != len(ids_a) or len(index_b) != len(b):
        raise ValueError("a predictions file repeats an example_id")
    if set(ids_a) != set(index_b):
        only_a, only_b = set(ids_a) - set(index_b), set(index_b) - set(ids_a)
        raise ValueError(f"the runs predicted different sentences: {len(only_a)} only in A, "
                         f"{len(only_b)} only in B (e.g. {sorted(map(str, only_a | only_b))[:3]})")
    paired_b = [index_b[i] for i in ids_a]
    for ra, rb in zip(a, paired_b):
        if ra["gold"] != rb["gold"]:
            raise ValueError(f"example {ra['example_id']!r}: the two files disagree on the gold aspects")
    return list(a), paired_b


def _f1(sums: np.ndarray) -> np.ndarray:
    """[..., 3] summed (common, retrieved, relevant) -> F1 = 2c / (r + g), which
    is 2PR/(P+R) of `metrics.precision_recall_f1` (0 when c = 0)."""
    c, r, g = sums[..., 0], sums[..., 1], sums[..., 2]
    return np.where(c > 0, 2.0 * c / np.maximum(r + g, 1), 0.0)


@dataclasses.dataclass(frozen=True)
class Comparison:
    metric: str
    a: float  # F1 of A on all sentences
    b: float
    diff: float  # a - b
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    resamples: int
    sentences: int


def compare_counts(counts_a: np.ndarray, counts_b: np.ndarray, *, metric: str = "", resamples: int = 10000,
                   seed: int = 0, test: str = "bootstrap", confidence: float = 0.95) -> Comparison:
    """Paired comparison of one corpus-level F1 from per-sentence counts [N, 3]."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}; valid: {TESTS}")
    counts_a, counts_b = np.asarray(counts_a, np.int64), np.asarray(counts_b, np.int64)
    if counts_a.shape != counts_b.shape or counts_a.ndim != 2 or counts_a.shape[1] != 3:
        raise ValueError(f"counts must both be [N, 3], got {counts_a.shape} and {counts_b.shape}")
    n = counts_a.shape[0]
    if n == 0 or resamples < 1:
        raise ValueError("need at least one sentence and one resample")
    f1_a = metrics_lib.precision_recall_f1(*counts_a.sum(0).tolist())["f1"]
    f1_b = metrics_lib.precision_recall_f1(*counts_b.sum(0).tolist())["f1"]
    diff = f1_a - f1_b
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, (k, n))
        boot[start:start + k] = _f1(counts_a[idx].sum(1)) - _f1(counts_b[idx].sum(1))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    tol = 1e-12  # |d*| equal to |d| up to float noise counts as "as extreme"
    if test == "bootstrap":
        extreme = int(np.sum(np.abs(boot - diff) >= abs(diff) - tol))
    else:
        extreme = 0
        both = np.stack([counts_a, counts_b])  # [2, N, 3]
        for start in range(0, resamples, _CHUNK):
            k = min(_CHUNK, resamples - start)
            swap = rng.integers(0, 2, (k, n))
            perm_a = both[swap, np.arange(n)].sum(1)
            perm_b = both[1 - swap, np.arange(n)].sum(1)
            extreme += int(np.sum(np.abs(_f1(perm_a) - _f1(perm_b)) >= abs(diff) - tol))
    p = (1 + extreme) / (1 + resamples)
    return Comparison(metric, f1_a, f1_b, diff, float(low), float(high), p, test, resamples, n)


def compare_records(records_a: Sequence[dict], records_b: Sequence[dict], *, resamples: int = 10000,
                    seed: int = 0, test: str = "bootstrap") -> list[Comparison]:
    """Every metric of `METRICS`, A against B, on their common sentences."""
    a, b = pair_records(records_a, records_b)
    counts_a, counts_b = sentence_counts(a), sentence_counts(b)
    return [compare_counts(counts_a[m], counts_b[m], metric=m, resamples=resamples, seed=seed, test=test)
            for m in METRICS]


def format_comparisons(results: Sequence[Comparison], name_a: str = "A", name_b: str = "B") -> str:
    r0 = results[0]
    lines = [f"A = {name_a}", f"B = {name_b}",
             f"{r0.sentences} paired sentences; 95% CI: paired bootstrap, {r0.resamples} resamples; "
             f"p-value: {'paired bootstrap (shifted null)' if r0.test == 'bootstrap' else 'approximate randomisation'}"
             ", two-sided", "",
             f"{'metric':<15}{'A':>8}{'B':>8}{'A-B':>8}   {'95% CI':<17}{'p':>8}"]
    for r in results:
        ci = f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]"
        lines.append(f"{r.metric:<15}{100 * r.a:8.2f}{100 * r.b:8.2f}{100 * r.diff:+8.2f}   {ci:<17}{r.p_value:8.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="run folder (or predictions .jsonl) A")
    parser.add_argument("run_b", help="run folder (or predictions .jsonl) B")
    parser.add_argument("--split", default="test")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", choices=TESTS, default="bootstrap", help="how the p-value is computed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = parser.parse_args(argv)
    path_a, path_b = predictions_path(args.run_a, args.split), predictions_path(args.run_b, args.split)
    results = compare_records(read_predictions(path_a), read_predictions(path_b), resamples=args.resamples,
                              seed=args.seed, test=args.test)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    else:
        print(format_comparisons(results, str(path_a), str(path_b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
