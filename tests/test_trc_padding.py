"""TRC text padded to each batch's longest tweet, unmasked, as the original
(original-jml-code.md §2.3, §10.6): ``data.trc_pad_to_batch_max``.

The relation module keeps the fixed length L (one compiled shape) and limits
its means and attention keys to each batch's first max-length positions; that
must equal running it on the batch trimmed to that length.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs.trc_relation import get_config as trc_config
from configs.twitter2015 import get_config as joint_config
from data_pipeline import pipeline
from jml_jax import model_factory
from jml_jax.models.bert import BertConfig
from jml_jax.models.jml import normalize_images
from jml_jax.models.relation import RelationModule, batch_max_positions
from helpers.tiny_dataset import data_config, write_tiny_dataset
from jml_jax.tasks import RelationTask

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


L, GROUP = 16, 4
LENGTHS = np.array([5, 9, 3, 7, 4, 6, 2, 6])  # groups' longest: 9 and 6


def module(pad_group=0, mask_text=False) -> RelationModule:
    bert = BertConfig(100, 32, 2, 2, 64, 64, 2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RelationModule(bert=bert, resnet_depth=50, resnet_blocks=(1, 1, 1, 1), resnet_width=8, num_heads=2,
                          dropout_rate=0.0, mask_text=mask_text, pad_group=pad_group)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    mask = (np.arange(L)[None, :] < LENGTHS[:, None]).astype(np.int32)
    ids = rng.integers(1, 100, (len(LENGTHS), L)).astype(np.int32) * mask
    pixels = normalize_images(rng.integers(0, 256, (len(LENGTHS), 32, 32, 3)).astype(np.uint8))
    variables = module().init(jax.random.PRNGKey(0), ids, mask, pixels)
    return ids, mask, pixels, variables


def test_batch_max_positions():
    mask = (np.arange(L)[None, :] < LENGTHS[:, None]).astype(np.int32)
    pos = np.asarray(batch_max_positions(mask, GROUP))
    np.testing.assert_array_equal(pos.sum(1), [9] * 4 + [6] * 4)
    np.testing.assert_array_equal(pos[:, :6], 1)
    # Fewer rows than a group (the init's one row): one group.
    np.testing.assert_array_equal(np.asarray(batch_max_positions(mask[:1], GROUP)).sum(1), [5])
    with pytest.raises(ValueError, match="whole number"):
        batch_max_positions(mask[:6], GROUP)


def test_equals_the_batch_trimmed_to_its_longest_row(batch):
    ids, mask, pixels, variables = batch
    padded = np.asarray(module(pad_group=GROUP).apply(variables, ids, mask, pixels))
    for g in range(len(LENGTHS) // GROUP):
        rows = slice(g * GROUP, (g + 1) * GROUP)
        n = int(LENGTHS[rows].max())
        trimmed = np.asarray(module().apply(variables, ids[rows, :n], mask[rows, :n], pixels[rows]))
        np.testing.assert_allclose(padded[rows], trimmed, rtol=1e-5, atol=1e-6)
    # ... and differs from the fixed-length padding the joint model feeds (§2.5).
    fixed = np.asarray(module().apply(variables, ids, mask, pixels))
    assert np.abs(fixed - padded).max() > 1e-3


def test_mask_text_fix_takes_precedence(batch):
    ids, mask, pixels, variables = batch
    a = module(pad_group=GROUP, mask_text=True).apply(variables, ids, mask, pixels)
    b = module(mask_text=True).apply(variables, ids, mask, pixels)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_switch_reaches_the_stage_one_module_only():
    c = trc_config("sample")
    assert RelationTask(c).jml.relation_pad_group == 0  # default: padded to L
    c.data.trc_pad_to_batch_max = True
    jml = RelationTask(c).jml
    assert jml.relation_pad_group == c.batch_size == 8
    assert model_factory.build_relation_model(jml).pad_group == 8
    c.eval_batch_size = 12
    with pytest.raises(ValueError, match="multiple of batch_size"):
        RelationTask(c)
    # The joint model's relation module (and the relation cache) sees text padded to L (§2.5).
    j = joint_config("text_only,minilm")
    j.data.trc_pad_to_batch_max = True
    j.model.bert, j.model.bert_init = "tiny", None
    assert model_factory.jml_config_from(j).relation_pad_group == 0


def test_eval_padding_rows_do_not_lengthen_the_last_batch(tmp_path):
    paths = write_tiny_dataset(tmp_path)
    for flag in (False, True):
        cfg = data_config(paths, name="trc", train_file=paths["trc_file"], dev_file=None, image_dir=None,
                          prefetch=0, trc_pad_to_batch_max=flag)
        split = pipeline.load_split(cfg, "train")  # 8 rows
        batches = list(pipeline.make_eval_iter(cfg, split, global_batch_size=6, process_index=0,
                                               process_count=1))
        last = batches[-1]
        assert list(last["mask"]) == [1, 1, 0, 0, 0, 0]
        pad_rows = last["input_mask"][last["mask"] == 0]
        assert (pad_rows.sum() == 0) == flag
        np.testing.assert_array_equal(last["input_mask"][:2], split.arrays["input_mask"][6:8])
