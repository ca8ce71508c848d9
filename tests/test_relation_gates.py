"""Per-head relation gates (paper Table 7 "w/o Relation MATE" / "w/o Relation MASC").

One set of parameters, four switches: the full model (soft gate for both
heads), ``relation_gate='none'`` (w/o Relation All) and the two per-head
overrides. MATE reads the text and its own image grid; MASC reads MATE's
token states S (original-jml-code.md §3, last paragraph) and its own grid, so
the heads are compared where each one's inputs are the same: MATE outputs as
they come, MASC through ``classify`` on a given S.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from configs.twitter import twitter_config
from jml_jax import model_factory
from jml_jax.models.bert import BertConfig
from jml_jax.models.jml import JMLConfig, JMLModel

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


B, L, M, SIZE = 3, 12, 4, 64
MATE_KEYS = ("start_logits", "end_logits", "sequence_output")


def same(a, b, what=""):
    """Equal up to float noise, relative to b's scale (the random heads'
    logits are ~1e-3)."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=what)


def differs(a, b, what=""):
    """Far apart relative to b's scale: 1000x the tolerance of `same`."""
    assert np.abs(a - b).max() > 1e-2 * np.abs(b).max(), what


def tiny(**overrides) -> JMLConfig:
    bert = BertConfig(100, 32, 2, 2, 64, 64, 2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return JMLConfig(bert=bert, resnet_depth=50, resnet_blocks=(1, 1, 1, 1), resnet_width=8, num_heads=2,
                     dropout_rate=0.0, **overrides)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    mask[1, 8:] = 0
    ids = ids * mask
    starts = np.array([[1, 3, 0, 0], [2, 0, 0, 0], [1, 4, 6, 0]], np.int32)
    ends = starts + np.array([[1, 0, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0]], np.int32)
    images = rng.integers(0, 256, (B, SIZE, SIZE, 3)).astype(np.uint8)
    base = tiny()
    variables = JMLModel(base).init(jax.random.PRNGKey(0), ids, mask, starts, ends, images)
    # Random init projects the image grid to tiny values; scale it up so the
    # gate moves the heads' outputs far above float noise.
    params = dict(variables["params"])
    params["align_res"] = jax.tree.map(lambda x: x * 200.0, params["align_res"])
    variables = {**variables, "params": params}
    configs = {
        "full": base,
        "no_relation": dataclasses.replace(base, relation_gate="none"),
        "no_relation_mate": dataclasses.replace(base, mate_relation_gate="none"),
        "no_relation_masc": dataclasses.replace(base, masc_relation_gate="none"),
    }
    out = {}
    for name, cfg in configs.items():
        model = JMLModel(cfg)
        res = model.apply(variables, ids, mask, starts, ends, images)
        out[name] = {k: np.asarray(v) for k, v in res.items()}

    def classify(name, sequence_output, image_features):
        return np.asarray(JMLModel(configs[name]).apply(
            variables, sequence_output, image_features, mask, starts, ends, method=JMLModel.classify))

    return out, classify


def test_the_gate_matters_here(runs):
    """Guards the comparisons below: with random weights P(image adds) is far
    from 1, so gating changes both heads' outputs."""
    out, _ = runs
    p = out["full"]["relation_probs"][:, 1]
    assert np.all(np.abs(p - 1.0) > 1e-3)
    for key in ("start_logits", "polarity_logits", "image_features"):
        differs(out["full"][key], out["no_relation"][key], key)


def test_no_relation_mate(runs):
    out, classify = runs
    x = out["no_relation_mate"]
    for key in MATE_KEYS:  # MATE: as without relation
        same(x[key], out["no_relation"][key], key)
    # MASC keeps the soft gate: its image grid is the full model's ...
    same(x["image_features"], out["full"]["image_features"])
    # ... and on the same S its polarity logits are the full model's MASC.
    same(x["polarity_logits"], classify("full", x["sequence_output"], out["full"]["image_features"]))
    differs(x["start_logits"], out["full"]["start_logits"])
    same(x["relation_probs"], out["full"]["relation_probs"])


def test_no_relation_masc(runs):
    out, classify = runs
    x = out["no_relation_masc"]
    for key in MATE_KEYS:  # MATE: as the full model
        same(x[key], out["full"][key], key)
    # MASC without relation: the ungated grid, and the no-relation model's MASC on the same S.
    same(x["image_features"], out["no_relation"]["image_features"])
    same(x["polarity_logits"],
         classify("no_relation", x["sequence_output"], out["no_relation"]["image_features"]))
    differs(x["polarity_logits"], out["full"]["polarity_logits"])


def test_both_overrides_are_without_relation():
    both = dataclasses.replace(tiny(), mate_relation_gate="none", masc_relation_gate="none")
    assert both.head_gates == ("none", "none") == tiny(relation_gate="none").head_gates
    assert tiny().head_gates == ("soft", "soft")
    assert tiny(relation_gate="hard", masc_relation_gate="none").head_gates == ("hard", "none")


def test_unknown_head_gate_is_refused():
    with pytest.raises(ValueError, match="mate_relation_gate"):
        tiny(mate_relation_gate="off")


@pytest.mark.parametrize("flag, field", [("no_relation_mate", "mate_relation_gate"),
                                         ("no_relation_masc", "masc_relation_gate")])
def test_variants_reach_the_model(flag, field):
    config = twitter_config("twitter2015", "/data/twitter2015", 65, flags=(flag,))
    config.model.bert, config.model.bert_init = "tiny", None
    jml = model_factory.jml_config_from(config)
    assert getattr(jml, field) == "none" and jml.relation_gate == "soft"
    other = {"mate_relation_gate": "masc_relation_gate", "masc_relation_gate": "mate_relation_gate"}[field]
    assert getattr(jml, other) is None
