"""launch.train checks every input before any data is read: a missing
annotation file or a config error is named (field, split) before the first
image is decoded (minutes on the real data sets)."""

from __future__ import annotations

import pytest

import small_demo
from data_pipeline import images
from launch import train as launch_train


@pytest.fixture
def no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("an image was decoded before the config was checked")

    monkeypatch.setattr(images, "preprocess_images", fail)
    monkeypatch.setattr(images, "decode_image_file", fail)


def _config(**changes):
    c = small_demo.small_demo_config(images=True)
    for dotted, value in changes.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


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
    ({"model.bert_init": "/nowhere/bert"}, FileNotFoundError, r"model.bert_init='/nowhere/bert'"),
    ({"eval_splits": ("dev", "tets")}, ValueError, r"unknown split 'tets'"),
    ({"select_metric": "joint_orig/f"}, ValueError, r"select_metric='joint_orig/f' is not a metric"),
    ({"eval_batch_size": 6}, ValueError, r"eval_batch_size=6 does not divide over the mesh's 8"),
    ({"optimizer.grad_accum_steps": 3}, ValueError, r"optimizer.grad_accum_steps=3 must be >= 1"),
    ({"optimizer.t_total": "epochs"}, ValueError, r"optimizer.t_total='epochs'"),
])
def test_config_errors_are_named_before_any_image_is_decoded(tmp_path, no_decoding, changes, error, message):
    with pytest.raises(error, match=message):
        launch_train.run(_config(**changes), str(tmp_path / "run"))

