"""Every config file x every variant it accepts trains one step and evaluates once.

Each case builds the config exactly as ``--config=configs/X.py:VARIANT`` does,
shrinks only sizes (tiny BERT and ResNet, length 32, small images, two sentences per accumulation group,
one device, the bundled sample data, no pretrained files) and keeps every
switch the variant sets, then runs `train_and_evaluate` for one step: the
step compiles and gives a finite loss, the evaluation reports the selection
metric, and the summary and checkpoint are written. A variant whose switch
nothing reads, or that no longer builds, fails here.

Every case compiles its own model (20-60 s each on a 2-core CPU), so CI runs
one case per model path (`CI_CASES`) and the rest are in the slow set:
``python -m pytest -q -m slow tests/test_every_config.py`` runs them all.
"""

from __future__ import annotations

import importlib
import json
import math

import jax
import pytest

from configs.demo import SAMPLE
from jml_jax.train import train_and_evaluate
from launch import common

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


CONFIGS = ("demo", "twitter2015", "twitter2017", "trc_relation", "text_real")
# CI runs one case per model path: the image model (paper config), the
# text-only model, stage one with images, the real-data config. The variants
# (fixed switches, per-head gates, text-only stage one) are each unit-tested
# on the tiny model elsewhere; their whole-config cases are in the slow set.
CI_CASES = {("demo", "text_only"), ("twitter2015", ""), ("trc_relation", "sample"), ("text_real", "twitter2015")}
TEXT_REAL_DATASETS = ("twitter2015", "twitter2017")


def _cases():
    for name in CONFIGS:
        module = importlib.import_module(f"configs.{name}")
        if name == "trc_relation":  # every variant on the bundled sample ('sample' first)
            args = ["sample"] + [f"sample,{f}" for f in module.FLAGS if f != "sample"]
        elif name == "text_real":
            args = list(TEXT_REAL_DATASETS) + [f"twitter2015,{f}" for f in module.FLAGS]
        else:
            args = [""] + list(module.FLAGS)
        for arg in args:
            marks = [] if (name, arg) in CI_CASES else [pytest.mark.slow]
            yield pytest.param(name, arg, id=f"{name}:{arg or 'default'}", marks=marks)


def _shrink(c) -> None:
    """Tiny sizes and the bundled sample; the variant's switches stay as they are."""
    vocab = SAMPLE / "vocab.txt"
    m = c.model
    m.bert, m.bert_vocab_size, m.bert_init = "tiny", sum(1 for _ in vocab.open(encoding="utf-8")), None
    m.resnet_depth, m.resnet_blocks, m.resnet_width = 50, (1, 1, 1, 1), 8
    m.resnet_init = m.relation_init = m.original_checkpoint = None
    c.data.vocab_file = str(vocab)
    c.data.max_seq_length = 32
    c.data.prefetch = 0
    c.mesh_shape = (1, 1, 1)
    # Two sentences per accumulation group: train-mode BatchNorm needs more
    # than one value per channel in each group.
    c.batch_size = 2 * int(c.optimizer.get("grad_accum_steps", 1))
    c.eval_batch_size = 8
    c.max_steps = 1
    c.eval_start_fraction = 0.0
    c.log_every_steps = 1
    if c.task == "relation":
        c.data.relation_resize = 64
        if c.data.image_dir is not None:
            c.data.image_dir = str(SAMPLE / "images")
        return
    c.data.crop_size = 64
    c.data.train_file, c.data.dev_file = str(SAMPLE / "train.json"), str(SAMPLE / "dev.json")
    c.data.test_file = str(SAMPLE / "test.json")
    c.eval_splits = ("dev",)
    if c.model.use_images:
        c.data.image_dir = str(SAMPLE / "images")


@pytest.mark.parametrize("name,arg", list(_cases()))
def test_config_variant_trains_a_step_and_evaluates(name, arg, tmp_path, monkeypatch):
    monkeypatch.setenv("JML_DATA_ROOT", str(tmp_path / "no_real_data"))  # text_real: sample files below
    config = importlib.import_module(f"configs.{name}").get_config(arg or None)
    _shrink(config)
    config.lock()
    common.resolve_config_paths(config)
    summary = train_and_evaluate(config, tmp_path / "run", common.train_data(config),
                                 common.eval_splits(config, config.eval_splits), devices=jax.devices()[:1])

    assert summary["total_steps"] == summary["final_step"] == 1
    assert summary["task"] == config.task
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]  # step metrics only ('train_set/' for evals)
    assert len(losses) == 1 and math.isfinite(losses[0])
    scores = summary["final_scores"]
    if config.get("select_split"):
        assert f"{config.select_split}/{config.select_metric}" in scores
        assert summary["best_step"] == 1
    else:
        assert scores and summary["best_step"] is None
    assert (tmp_path / "run" / "checkpoints" / "1").is_dir()


# The runs path (jml_jax/population.py): one config per model path, two runs in
# one program; the image model's case is in the slow set.
RUNS_CASES = (pytest.param("demo", "text_only", id="demo:text_only"),
              pytest.param("twitter2015", "", id="twitter2015:default", marks=pytest.mark.slow))


@pytest.mark.parametrize("name,arg", RUNS_CASES)
def test_config_population_trains_a_step_and_evaluates(name, arg, tmp_path):
    from jml_jax.population import train_population

    config = importlib.import_module(f"configs.{name}").get_config(arg or None)
    _shrink(config)
    config.runs.seeds = (3, 4)
    config.runs.learning_rate = (1e-5, 2e-5)
    config.lock()
    common.resolve_config_paths(config)
    summary = train_population(config, tmp_path / "run", common.population_train_data(config),
                               common.eval_splits(config, config.eval_splits), devices=jax.devices()[:1])
    assert list(summary["runs"]) == ["seed_3", "seed_4"]
    for name_, run in summary["runs"].items():
        folder = tmp_path / "run" / "runs" / name_
        assert run["total_steps"] == run["final_step"] == 1 and "stopped" not in run
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        losses = [r["train/loss"] for r in records if "train/loss" in r]
        assert len(losses) == 1 and math.isfinite(losses[0])
        assert f"{config.select_split}/{config.select_metric}" in run["final_scores"] and run["best_step"] == 1
        assert (folder / "best").is_dir() and (folder / "config.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "1").is_dir()
