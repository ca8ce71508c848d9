"""TFDS builds of the prepared data (data_pipeline/builders/)."""

import logging

import numpy as np
import pytest

from data_pipeline import builders, pipeline
from helpers.tiny_dataset import CORRUPT, MISSING, data_config, write_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """The tiny JMASA set built with fixed crops; returns its data config."""
    cfg = data_config(tiny, prepared_dir=str(tmp_path_factory.mktemp("prepared")), prefetch=0)
    assert not builders.is_built(cfg)
    builders.build(cfg)
    assert builders.is_built(cfg)
    return cfg


def _assert_same_split(a, b):
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert a.image_ids == b.image_ids
    assert [e.example_id for e in a.examples] == [e.example_id for e in b.examples]
    np.testing.assert_array_equal(a.image_ok, b.image_ok)
    if a.images is None:
        assert b.images is None
    else:
        np.testing.assert_array_equal(a.images[a.image_index], b.images[b.image_index])


def test_build_loads_back_equal_to_the_in_memory_path(built):
    assert builders.builder_config_name(built) == "sample_fixed"
    memory_cfg = built.copy_and_resolve_references()
    memory_cfg.prepared_dir = None
    for split in ("train", "dev"):
        from_tfds = pipeline.load_split(built, split)
        in_memory = pipeline.load_split(memory_cfg, split)
        assert from_tfds.source == "tfds" and in_memory.source == "memory"
        _assert_same_split(from_tfds, in_memory)
    report = pipeline.load_split(built, "train").image_report
    assert report.missing_ids == [MISSING] and report.corrupt_ids == [CORRUPT]
    # Batches from the build are the batches of the in-memory path.
    kw = dict(global_batch_size=4, process_index=0, process_count=1, seed=5)
    a = pipeline.make_train_iter(built, pipeline.load_split(built, "train"), **kw).batch_at(3)
    b = pipeline.make_train_iter(memory_cfg, pipeline.load_split(memory_cfg, "train"), **kw).batch_at(3)
    assert a.keys() == b.keys() and "image" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_build_with_another_vocab_or_length_is_refused(built, tmp_path):
    other_vocab = tmp_path / "vocab.txt"
    other_vocab.write_text(open(built.vocab_file).read() + "extra\n")
    cfg = built.copy_and_resolve_references()
    cfg.vocab_file = str(other_vocab)
    with pytest.raises(builders.PreparedDataMismatchError, match="vocab_sha256"):
        pipeline.load_split(cfg, "train")
    with pytest.raises(builders.PreparedDataMismatchError, match="vocab_sha256"):
        builders.build(cfg)
    cfg = built.copy_and_resolve_references()
    cfg.max_seq_length = 64
    with pytest.raises(builders.PreparedDataMismatchError, match="max_seq_length: built with 96, config wants 64"):
        pipeline.load_split(cfg, "train")


def test_another_crop_mode_is_another_build(built, caplog):
    cfg = built.copy_and_resolve_references()
    cfg.crop_mode = "center"
    assert builders.builder_config_name(cfg) == "sample_center" and not builders.is_built(cfg)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.pipeline"):
        split = pipeline.load_split(cfg, "dev")  # not built: prepared in memory, with a hint
    assert split.source == "memory" and "no TFDS build of sample_center" in caplog.text


def test_text_only_trc_build(tiny, tmp_path):
    cfg = data_config(tiny, name="trc", train_file=tiny["trc_file"], dev_file=None, image_dir=None,
                      prepared_dir=str(tmp_path / "prepared"), prefetch=0)
    assert builders.builder_config_name(cfg) == "trc_text"
    builders.build(cfg)
    memory_cfg = cfg.copy_and_resolve_references()
    memory_cfg.prepared_dir = None
    for split in ("train", "test"):
        from_tfds = pipeline.load_split(cfg, split)
        assert from_tfds.source == "tfds" and from_tfds.images is None
        _assert_same_split(from_tfds, pipeline.load_split(memory_cfg, split))
