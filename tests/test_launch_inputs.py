"""launch.train checks every input before any data is read: a missing
annotation file or a config error is named (field, split) before the first
image is decoded (minutes on the real data sets)."""

from __future__ import annotations

import pytest

from helpers import small_demo
from helpers.runs import with_changes
from data_pipeline import images
from launch import train as launch_train


@pytest.fixture
def no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("an image was decoded before the config was checked")

    monkeypatch.setattr(images, "preprocess_images", fail)
    monkeypatch.setattr(images, "decode_image_file", fail)


def _config(**changes):
    return with_changes(small_demo.small_demo_config(images=True), **changes)


def test_a_missing_dev_file_is_named_with_its_split_before_any_image_is_decoded(tmp_path, no_decoding):
    missing = str(tmp_path / "nowhere" / "dev.json")
    with pytest.raises(FileNotFoundError, match=rf"data.dev_file='{missing}' \(split 'dev'\): no such file"):
        launch_train.run(_config(**{"data.dev_file": missing}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written, no lock taken


@pytest.mark.parametrize("changes, error, message", [
    ({"data.test_file": None}, ValueError, r"data.test_file is not set, so split 'test' cannot be loaded"),
    ({"data.vocab_file": "/nowhere/vocab.txt"}, FileNotFoundError, r"data.vocab_file='/nowhere/vocab.txt'"),
    ({"data.image_dir": "/nowhere/images"}, FileNotFoundError, r"data.image_dir='/nowhere/images'"),
    ({"data.fallback_image": "nope.jpg"}, FileNotFoundError, r"data.fallback_image='nope.jpg'"),
    ({"data.crop_mode": "diagonal"}, ValueError, r"data.crop_mode='diagonal'"),
    ({"data.on_error": "ignore"}, ValueError, r"data.on_error='ignore'"),
    ({"model.bert_init": "/nowhere/bert"}, FileNotFoundError, r"model.bert_init='/nowhere/bert'"),
    ({"eval_splits": ("dev", "tets")}, ValueError, r"unknown split 'tets'"),
    ({"select_metric": "joint_orig/f"}, ValueError, r"select_metric='joint_orig/f' is not a metric"),
    ({"eval_batch_size": 6}, ValueError, r"eval_batch_size=6 does not divide over the mesh's 8"),
    ({"optimizer.grad_accum_steps": 3}, ValueError, r"optimizer.grad_accum_steps=3 must be >= 1"),
    ({"optimizer.t_total": "epochs"}, ValueError, r"optimizer.t_total='epochs'"),
    ({"runs.seeds": (1, 1)}, ValueError, r"runs.seeds=\(1, 1\): seed\(s\) \[1\] appear twice"),
    ({"runs.seeds": (1, 2, 3), "runs.axis": 3}, ValueError, r"runs.axis=3 does not divide the 8 devices"),
    ({"runs.seeds": (1, 2), "runs.warmup_proportion": (0.1,)}, ValueError,
     r"runs.warmup_proportion has 1 values for 2 seeds"),
])
def test_config_errors_are_named_before_any_image_is_decoded(tmp_path, no_decoding, changes, error, message):
    with pytest.raises(error, match=message):
        launch_train.run(_config(**changes), str(tmp_path / "run"))


def test_on_error_skip_leaves_out_bad_records_and_counts_them(tmp_path):
    import json

    from data_pipeline.reader_common import DataFormatError
    from launch import common

    good = json.loads(open(small_demo.small_demo_config(images=False).data.train_file).read())
    records = good[:30] + [{"image_id": "x.jpg", "aspects": []}] + good[30:]  # no "words": malformed
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records, indent=1))
    config = small_demo.small_demo_config(images=False)
    config.data.train_file = str(path)
    with pytest.raises(DataFormatError, match=rf"data.train_file \(split 'train'\): {path}:\d+"):
        common.train_data(config)
    config.data.on_error = "skip"
    data = common.train_data(config)
    assert data.data_counts["records_skipped"] == 1 and data.num_examples == len(good)
    assert common.eval_splits(config, ["dev"])["dev"].data_counts["records_skipped"] == 0


@pytest.mark.long  # second tier (tests/README.md): a whole population
def test_launch_train_trains_runs_seeds_as_one_population(tmp_path):
    import json

    from jml_jax.population import RUNS_DIR

    config = with_changes(small_demo.small_demo_config(images=False), **{"runs.seeds": (5, 6), "max_steps": 2})
    summary = launch_train.run(config, str(tmp_path / "run"))
    assert list(summary["runs"]) == ["seed_5", "seed_6"]
    for seed in (5, 6):
        folder = tmp_path / "run" / RUNS_DIR / f"seed_{seed}"
        assert json.loads((folder / "config.json").read_text())["seed"] == seed
        assert (folder / "command.txt").read_text() == (tmp_path / "run" / "command.txt").read_text()
        assert json.loads((folder / "summary.json").read_text())["final_step"] == 2

