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


def test_plan_lists_stage_one_first_and_shares_run_folders(tmp_path):
    runs = pt.plan(7, tmp_path, [1, 2])
    assert runs[0] == (str(tmp_path / "trc_relation"), "configs/trc_relation.py", "")
    assert len(runs) == 1 + 2 * 6 * 2
    by_dir = {pathlib.Path(w).name: (c, e) for w, c, e in runs[1:]}
    assert by_dir["twitter2017_no_relation_masc_s2"][0] == "configs/twitter2017.py:no_relation_masc"
    config, extra = by_dir["twitter2015_full_s1"]
    assert config == "configs/twitter2015.py"
    assert extra.split() == ["--config.seed=1", f"--config.model.relation_init={tmp_path / 'trc_relation' / 'relation'}"]
    # Table 3's JML runs are Table 7's full runs.
    assert {w for w, _, _ in pt.plan(3, tmp_path, [1])} & {w for w, _, _ in runs} >= {
        str(tmp_path / "twitter2015_full_s1"), str(tmp_path / "twitter2017_full_s1")}
    assert pt.plan(4, tmp_path, [1]) == runs[:1]


def test_every_variant_of_the_grids_is_a_config_variant():
    from configs.twitter import FLAGS

    for _, rows, _, _ in pt.GRIDS.values():
        assert {v for _, v in rows} - {""} <= set(FLAGS)


def test_table7_means_seeds_and_marks_missing_runs(tmp_path):
    for seed, f1 in ((1, 0.60), (2, 0.64)):
        write_summary(tmp_path / f"twitter2015_full_s{seed}", {"joint_orig/f1": f1, "joint_orig/p": 0.7,
                                                              "joint_orig/r": 0.5})
    write_summary(tmp_path / "twitter2017_no_relation_mate_s1", {"joint_orig/f1": 0.655, "joint_orig/p": 0.6,
                                                                 "joint_orig/r": 0.7})
    text = pt.render(7, tmp_path, [1, 2])
    lines = text.splitlines()
    assert lines[2] == ("| Approach | twitter2015 F1 | twitter2015 P | twitter2015 R | twitter2017 F1 | "
                        "twitter2017 P | twitter2017 R |")
    assert "| JML (Full) (paper) | 64.1 | 65.0 | 63.2 | 66.0 | 66.5 | 65.5 |" in lines
    assert "| JML (Full) (this run) | 62.0 ± 2.8 | 70.0 ± 0.0 | 50.0 ± 0.0 | … | … | … |" in lines
    assert "| w/o Relation MATE (this run) | … | … | … | 65.5 | 60.0 | 70.0 |" in lines
    assert "| w/o Relation MASC (paper) | 63.3 | 64.1 | 62.5 | 65.3 | 65.8 | 64.8 |" in lines
    missing = next(line for line in lines if line.startswith("Not finished"))
    assert "twitter2015_no_relation_s1" in missing and "twitter2015_full_s1" not in missing
    assert "twitter2017_no_relation_mate_s2" in missing


def test_tables_5_6_read_mate_and_masc(tmp_path):
    write_summary(tmp_path / "twitter2015_full_s42", {"mate/f1": 0.8, "mate/p": 0.81, "mate/r": 0.79,
                                                      "masc/acc": 0.75})
    assert "| JML-MATE (this run) | 80.0 | 81.0 | 79.0 | … | … | … |" in pt.render(5, tmp_path, [42])
    assert "| JML-MASC (this run) | 75.0 | … |" in pt.render(6, tmp_path, [42])
    write_summary(tmp_path / "twitter2017_full_s42", {"mate/f1": 0.9})
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


def test_script_runs_the_grid_resumably_and_renders(tmp_path):
    """scripts/paper_table.sh with a stand-in `python` whose launch.train
    writes a summary.json: every run once, stage one first, finished runs
    skipped on a second call, and the table rendered."""
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m launch.train" ]]; then
  echo "$@" >> {log}
  for a in "$@"; do case "$a" in --workdir=*) w="${{a#--workdir=}}";; esac; done
  mkdir -p "$w"
  echo '{{"best_scores": {{"test/masc/acc": 0.5}}}}' > "$w/summary.json"
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
    assert len(calls) == 1 + 2 * 2
    assert calls[0] == f"-m launch.train --config=configs/trc_relation.py --workdir={root / 'trc_relation'} " \
                       "--config.data.train_file=x.csv"
    assert all(c.endswith("--config.mesh_shape=(1,1,1)") for c in calls[1:])
    assert any("--config=configs/twitter2017.py --workdir=" in c and "--config.seed=2" in c for c in calls)
    table = (root / "table6.md").read_text()
    assert "| JML-MASC (this run) | 50.0 ± 0.0 | 50.0 ± 0.0 |" in table and table in proc.stdout
    # Again: everything is finished, nothing trains.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and len(log.read_text().splitlines()) == len(calls)
    assert proc.stdout.count("== done:") == len(calls)
