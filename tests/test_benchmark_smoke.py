"""tools/benchmarks.py subcommands (python -m launch.benchmark) run at tiny sizes and report sane fields.

Speed is never asserted (the machine is shared); only that each benchmark
runs what it claims and reports positive rates, the fields the docs/benchmarks.md tables
are built from, and consistent counts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import benchmarks as benchmark
from tools.benchmark_model import ModelSpec, make_batch

TINY = ["--bert", "tiny", "--resnet-depth", "50", "--resnet-blocks", "1,1,1,1", "--resnet-width", "8",
        "--batch", "8", "--length", "16", "--steps", "1", "--warmup", "0"]


def test_batch_has_two_gold_aspects_per_row_inside_the_sentence():
    spec = ModelSpec(bert="tiny", batch=8, length=16, seed=3)
    b = make_batch(spec, vocab_size=100)
    lengths = b["input_mask"].sum(1)
    assert b["input_ids"].shape == (8, 16) and b["image"].shape == (8, 224, 224, 3)
    assert b["image"].dtype == np.uint8
    assert (b["span_mask"].sum(1) == 2).all() and (b["start_positions"].sum(1) == 2).all()
    valid = b["span_mask"].astype(bool)
    assert (b["span_starts"][valid] >= 1).all()
    assert (b["span_ends"] >= b["span_starts"]).all()
    assert (b["span_ends"][:, :2] <= lengths[:, None] - 2).all()  # never [SEP] or padding
    assert set(np.unique(b["polarity_labels"][valid])) <= {1, 2, 3}
    assert (b["input_ids"][b["input_mask"] == 0] == 0).all()
    assert "image" not in make_batch(ModelSpec(text_only=True, batch=2, length=8), 100)


def test_decode_benchmark_reports_a_rate():
    r = benchmark.decode_benchmark(sentences=300, batch=64)
    assert r["benchmark"] == "decode" and r["sentences"] == 300
    assert np.isfinite(r["sentences_per_s"]) and r["sentences_per_s"] > 0


def test_data_benchmark_reads_the_tfds_build_with_images(tmp_path):
    r = benchmark.data_benchmark(str(tmp_path / "prepared"), batch=8, batches=3)
    assert r["source"] == "tfds" and r["images"] is True
    assert r["global_batch_size"] == 8 and r["batches"] == 3 and r["examples"] > 0
    assert r["examples_per_s"] > 0 and r["build_s"] > 0


def test_torch_model_bench_reports_train_and_eval():
    pytest.importorskip("torch")
    from tools.benchmark_model import bench_torch_model

    spec = ModelSpec(bert="tiny", resnet_depth=50, resnet_blocks=(1, 1, 1, 1), resnet_width=8,
                     batch=4, length=16, steps=1, warmup=1, grad_accum=2)
    r = bench_torch_model(spec)
    assert r["framework"] == "torch (eager)" and r["num_params"] > 0
    for phase in ("train", "eval"):
        p = r[phase]
        assert p["steps_per_s"] > 0 and p["peak_bytes"] > 0
        assert p["examples_per_s"] == pytest.approx(p["steps_per_s"] * spec.batch)
    assert np.isfinite(r["train"]["final_loss"]) and r["train"]["final_loss"] > 0


@pytest.mark.slow
def test_model_subcommand_runs_both_frameworks(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert benchmark.main(["model", *TINY, "--text-only", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    flax, torch_r = summary["results"]
    assert flax["framework"] == "flax (jit)" and torch_r["framework"] == "torch (eager)"
    assert summary["spec"]["text_only"] is True and summary["spec"]["batch"] == 8
    for r in (flax, torch_r):
        for phase in ("train", "eval"):
            assert r[phase]["steps_per_s"] > 0 and r[phase]["compile_s"] > 0 and r[phase]["peak_bytes"] > 0
    assert flax["num_params"] == torch_r["num_params"]  # the same model on both sides
    assert summary["flax_over_torch"]["train"] > 0
    assert "flax / torch steps/s ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_model_with_images_and_grad_accum_counts_the_same_parameters(tmp_path):
    out = tmp_path / "model.json"
    assert benchmark.main(["model", *TINY, "--grad-accum", "2", "--json", str(out)]) == 0
    flax, torch_r = json.loads(out.read_text())["results"]
    assert flax["num_params"] == torch_r["num_params"]
    assert np.isfinite(flax["train"]["final_loss"]) and np.isfinite(torch_r["train"]["final_loss"])


@pytest.mark.slow
def test_all_prints_a_markdown_table(tmp_path, capsys):
    assert benchmark.main(["all", *TINY, "--text-only", "--skip-torch",
                           "--prepared-dir", str(tmp_path / "prepared")]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("|")]
    assert lines[0].startswith("| benchmark |") and set(lines[1]) <= {"|", "-"}
    names = [l.split("|")[1].strip() for l in lines[2:]]
    assert names == ["JML train step", "JML eval step", "span decoding", "train iterator"]


def test_benchmark_decode_runs():
    from tools.benchmark_host import benchmark_decode

    assert benchmark_decode(n=200, seed=1, batch_size=64) > 0


@pytest.mark.long  # three compiles of the tiny text model
def test_population_benchmark_reports_both_ways(tmp_path, capsys):
    from tools import benchmark_population

    out = tmp_path / "population.json"
    assert benchmark_population.main(["--config", "configs/demo.py:text_only", "--runs", "2", "--steps", "1",
                                      "--warmup", "0", "--override=--config.data.max_seq_length=16",
                                      "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["alone"]["runs"] == 1 and [t["runs"] for t in r["together"]] == [2]
    together = r["together"][0]
    assert together["examples_per_s"] > 0 and len(together["loss"]) == 2
    # Two runs hold two states: the planned memory grows with the runs.
    assert together["planned_mib"] > 1.5 * r["alone"]["planned_mib"]
    assert "| 2 |" in capsys.readouterr().out
