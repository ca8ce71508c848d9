"""tools/paper_table.py and scripts/paper_table.sh on synthetic runs."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from tools import paper_table as pt

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_summary(folder: pathlib.Path, scores: dict, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"task": "joint", "best_step": 10, "best_scores": {f"test/{k}": v for k, v in scores.items()}, **extra}
    (folder / "summary.json").write_text(json.dumps(body))


def test_plan_lists_stage_one_first_then_one_line_per_row(tmp_path):
    runs = pt.plan(7, tmp_path, [1, 2])
    assert runs[0] == (str(tmp_path / "trc_relation"), "configs/trc_relation.py", "", "")
    assert len(runs) == 1 + 2 * 6
    by_dir = {pathlib.Path(r[0]).name: r[1:] for r in runs[1:]}
    assert by_dir["twitter2017_no_relation_masc"][0] == "configs/twitter2017.py:no_relation_masc"
    config, extra, seeds, *folders = by_dir["twitter2015_full"]
    assert config == "configs/twitter2015.py"
    assert extra.split() == [f"--config.model.relation_init={tmp_path / 'trc_relation' / 'relation'}"]
    assert seeds == "1,2"
    assert folders == [str(tmp_path / "twitter2015_full" / "runs" / f"seed_{s}") for s in (1, 2)]
    assert folders == [str(pt.run_dir(tmp_path, "twitter2015", "", s)) for s in (1, 2)]
    # Table 3's JML rows are Table 7's full rows.
    assert {r[0] for r in pt.plan(3, tmp_path, [1, 2])} & {r[0] for r in runs} >= {
        str(tmp_path / "twitter2015_full"), str(tmp_path / "twitter2017_full")}
    assert pt.plan(4, tmp_path, [1]) == runs[:1]


def test_run_dir_is_where_a_population_puts_its_runs(tmp_path):
    from jml_jax.population import RUNS_DIR
    from jml_jax.runs import RunsSpec

    spec = RunsSpec(seeds=(7, 42), values={})
    assert [pt.run_dir(tmp_path, "twitter2017", "hard_gate", s) for s in spec.seeds] == [
        tmp_path / "twitter2017_hard_gate" / RUNS_DIR / name for name in spec.names]


def test_plan_refuses_a_row_holding_other_seeds(tmp_path, capsys):
    pt.check_rows(7, tmp_path, [1, 2])  # nothing there yet
    row = tmp_path / "twitter2017_no_mate_vision"
    row.mkdir()
    (row / "config.json").write_text(json.dumps({"seed": 42, "runs": {"seeds": [1, 2], "axis": 0}}))
    pt.check_rows(7, tmp_path, [1, 2])  # an interrupted row of the same seeds resumes
    with pytest.raises(ValueError, match=r"twitter2017_no_mate_vision holds the population of seeds \[1, 2\]"):
        pt.check_rows(7, tmp_path, [1, 2, 3])
    pt.check_rows(3, tmp_path, [1, 2, 3])  # not a row of Table 3
    (tmp_path / "twitter2015_full").mkdir()
    (tmp_path / "twitter2015_full" / "summary.json").write_text(json.dumps({"runs": {}, "seeds": [5]}))
    assert pt.main(["--table", "3", "--root", str(tmp_path), "--seeds", "1", "2", "--plan"]) == 1
    assert "seeds [5], not [1, 2]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="given twice"):
        pt.check_rows(4, tmp_path, [1, 1])


def test_every_variant_of_the_grids_is_a_config_variant():
    from configs.twitter import FLAGS

    for _, rows, _, _ in pt.GRIDS.values():
        assert {v for _, v in rows} - {""} <= set(FLAGS)


def test_table7_means_seeds_and_marks_missing_runs(tmp_path):
    for seed, f1 in ((1, 0.60), (2, 0.64)):
        write_summary(tmp_path / "twitter2015_full" / "runs" / f"seed_{seed}",
                      {"joint_orig/f1": f1, "joint_orig/p": 0.7, "joint_orig/r": 0.5})
    write_summary(tmp_path / "twitter2017_no_relation_mate" / "runs" / "seed_1",
                  {"joint_orig/f1": 0.655, "joint_orig/p": 0.6, "joint_orig/r": 0.7})
    # A run its population stopped (non-finite) is not in the mean.
    write_summary(tmp_path / "twitter2017_no_relation_mate" / "runs" / "seed_2",
                  {"joint_orig/f1": 0.1, "joint_orig/p": 0.1, "joint_orig/r": 0.1},
                  stopped={"step": 7, "reason": "non-finite loss"})
    text = pt.render(7, tmp_path, [1, 2])
    lines = text.splitlines()
    assert lines[2] == ("| Approach | twitter2015 F1 | twitter2015 P | twitter2015 R | twitter2017 F1 | "
                        "twitter2017 P | twitter2017 R |")
    assert "| JML (Full) (paper) | 64.1 | 65.0 | 63.2 | 66.0 | 66.5 | 65.5 |" in lines
    assert "| JML (Full) (this run) | 62.0 ± 2.8 | 70.0 ± 0.0 | 50.0 ± 0.0 | … | … | … |" in lines
    assert "| w/o Relation MATE (this run) | … | … | … | 65.5 | 60.0 | 70.0 |" in lines
    assert "| w/o Relation MASC (paper) | 63.3 | 64.1 | 62.5 | 65.3 | 65.8 | 64.8 |" in lines
    missing = next(line for line in lines if line.startswith("Not finished"))
    assert "twitter2015_no_relation/runs/seed_1" in missing and "twitter2015_full/runs/seed_1" not in missing
    assert "twitter2017_no_relation_mate/runs/seed_2" not in missing
    assert "Stopped by a non-finite loss, left out of the mean: twitter2017_no_relation_mate/runs/seed_2 (step 7)." \
        in lines


def test_tables_5_6_read_mate_and_masc(tmp_path):
    write_summary(pt.run_dir(tmp_path, "twitter2015", "", 42), {"mate/f1": 0.8, "mate/p": 0.81, "mate/r": 0.79,
                                                      "masc/acc": 0.75})
    assert "| JML-MATE (this run) | 80.0 | 81.0 | 79.0 | … | … | … |" in pt.render(5, tmp_path, [42])
    assert "| JML-MASC (this run) | 75.0 | … |" in pt.render(6, tmp_path, [42])
    write_summary(pt.run_dir(tmp_path, "twitter2017", "", 42), {"mate/f1": 0.9})
    with pytest.raises(KeyError, match="test/mate/p"):
        pt.render(5, tmp_path, [42])


def test_table4_reads_stage_one(tmp_path):
    assert "Not finished (no summary.json): trc_relation." in pt.render(4, tmp_path, [42])
    folder = tmp_path / "trc_relation"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({
        "task": "relation", "best_scores": {"test/image_adds/f1": 0.9},
        "final_scores": {"test/image_adds/f1": 0.88, "test/text_represented/f1": 0.7}}))
    text = pt.render(4, tmp_path, [42])
    assert "| JML (paper) | 89.8 |" in text
    assert "| JML, this run: F1 image adds (last epoch) | 88.0 |" in text
    assert "| JML, this run: F1 image adds (best epoch) | 90.0 |" in text
    assert "| JML, this run: F1 text represented (last epoch) | 70.0 |" in text


def test_script_trains_each_row_as_one_population_resumably_and_renders(tmp_path):
    """scripts/paper_table.sh with a stand-in `python` whose launch.train
    writes a summary.json (a population's: one per seed folder and the row's):
    stage one first and alone, then one launch.train per row with
    --config.runs.seeds=1,2, finished rows skipped on a second call, each
    seed's folder evaluated with EVALUATE=1, and the table rendered from the
    per-seed folders."""
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m launch.train" ]]; then
  echo "$@" >> {log}
  seeds=
  for a in "$@"; do case "$a" in --workdir=*) w="${{a#--workdir=}}";; --config.runs.seeds=*) seeds="${{a#*=}}";; esac; done
  mkdir -p "$w"
  for s in ${{seeds//,/ }}; do
    mkdir -p "$w/runs/seed_$s"
    echo '{{"best_scores": {{"test/masc/acc": 0.5}}}}' > "$w/runs/seed_$s/summary.json"
  done
  echo '{{"runs": {{}}, "seeds": [1, 2]}}' > "$w/summary.json"
  exit 0
fi
if [[ "$1 $2" == "-m launch.evaluate" ]]; then
  echo "$@" >> {log}
  for a in "$@"; do case "$a" in --workdir=*) w="${{a#--workdir=}}";; esac; done
  mkdir -p "$w/predictions" && touch "$w/predictions/test_predictions.jsonl"
  exit 0
fi
exec {sys.executable} "$@"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SEEDS="1 2",
               TRC_FLAGS="--config.data.train_file=x.csv")
    root = tmp_path / "root"
    cmd = ["bash", str(REPO_ROOT / "scripts" / "paper_table.sh"), "6", str(root), "--config.mesh_shape=(1,1,1)"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = log.read_text().splitlines()
    assert len(calls) == 1 + 2  # stage one, then one population per row (two datasets x JML-MASC)
    assert calls[0] == f"-m launch.train --config=configs/trc_relation.py --workdir={root / 'trc_relation'} " \
                       "--config.data.train_file=x.csv"
    relation = f"--config.model.relation_init={root / 'trc_relation' / 'relation'}"
    assert calls[1:] == [f"-m launch.train --config=configs/{d}.py --workdir={root / (d + '_full')} "
                         f"--config.runs.seeds=1,2 {relation} --config.mesh_shape=(1,1,1)"
                         for d in ("twitter2015", "twitter2017")]
    table = (root / "table6.md").read_text()
    assert "| JML-MASC (this run) | 50.0 ± 0.0 | 50.0 ± 0.0 |" in table and table in proc.stdout
    assert "Not finished" not in table
    # Again, evaluating: every row is finished, nothing trains; each seed's folder is evaluated as a run.
    proc = subprocess.run(cmd, env=dict(env, EVALUATE="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== done:") == len(calls)
    evaluations = log.read_text().splitlines()[len(calls):]
    assert evaluations == [f"-m launch.evaluate --config=configs/{d}.py --workdir={root / (d + '_full') / 'runs' / f'seed_{s}'} "
                           f"--config.seed={s} --config.runs.seeds=() --split=test {relation} --config.mesh_shape=(1,1,1)"
                           for d in ("twitter2015", "twitter2017") for s in (1, 2)]
    # Once more: nothing trains, nothing is evaluated again; other seeds are refused before anything runs.
    proc = subprocess.run(cmd, env=dict(env, EVALUATE="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and len(log.read_text().splitlines()) == len(calls) + len(evaluations)
    proc = subprocess.run(cmd, env=dict(env, SEEDS="1 2 3"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "holds the population of seeds [1, 2]" in proc.stderr
    assert len(log.read_text().splitlines()) == len(calls) + len(evaluations)
