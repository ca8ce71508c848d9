"""BERT checkpoint conversion: key variants, strict errors, round trip, file
formats, and parity with the original JML BERT outputs (fixtures)."""

import json
import logging
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jml_jax.convert.bert import (
    bert_state_to_flat,
    bert_state_to_params,
    detect_bert_prefix,
    expected_bert_params,
    flat_to_bert_state,
    load_bert_checkpoint,
)
from jml_jax.convert.common import CheckpointMismatchError, flatten_tree
from jml_jax.models.bert import BertConfig, BertModel, get_bert_config

TINY = get_bert_config("tiny")


def _random_flat(cfg: BertConfig, seed=0, add_pooler=True):
    """Random float32 values in our flat layout, shapes from the model itself."""
    rng = np.random.default_rng(seed)
    shapes = flatten_tree(expected_bert_params(cfg, add_pooler))
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}


def _original_state(cfg=TINY, seed=0):
    """An original-format state dict: `bert.` prefix, LayerNorm gamma/beta (§11)."""
    return flat_to_bert_state(_random_flat(cfg, seed), prefix="bert.")


def _assert_trees_equal(a, b):
    fa, fb = flatten_tree(a), flatten_tree(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_original_and_modern_key_names_load_identically(caplog):
    original = _original_state()
    assert "bert.embeddings.LayerNorm.gamma" in original
    modern = {
        k[len("bert."):].replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        ): v
        for k, v in original.items()
    }
    # Non-encoder tensors of real checkpoints: dropped, and the drop is logged.
    modern["embeddings.position_ids"] = np.arange(TINY.max_position_embeddings)[None]
    with_heads = dict(original)
    with_heads["cls.predictions.bias"] = np.zeros(TINY.vocab_size, np.float32)
    with_heads["cls.seq_relationship.weight"] = np.zeros((2, 32), np.float32)

    ref = bert_state_to_params(original, TINY)
    _assert_trees_equal(bert_state_to_params(modern, TINY), ref)
    with caplog.at_level(logging.INFO, logger="jml_jax.convert.bert"):
        _assert_trees_equal(bert_state_to_params(with_heads, TINY), ref)
    assert "cls.predictions.bias" in caplog.text and "cls.seq_relationship.weight" in caplog.text

    # The relation BERT of a joint checkpoint, beside other modules: explicit prefix.
    joint = {"pretrain_model.mybert." + k: v for k, v in original.items()}
    joint.update({k: v + 1 for k, v in original.items()})  # the main BERT, other values
    joint["pretrain_model.mybert.aaali.weight"] = np.zeros((32, 128), np.float32)
    rel = bert_state_to_params(joint, TINY, prefix="pretrain_model.mybert.bert.")
    _assert_trees_equal(rel, ref)
    with pytest.raises(ValueError, match="several BERTs"):
        detect_bert_prefix(joint)


def test_linear_weights_are_transposed_and_values_kept():
    original = _original_state()
    flat, unrecognised = bert_state_to_flat(original, TINY)
    assert unrecognised == []
    np.testing.assert_array_equal(
        flat["encoder/layer_1/intermediate/dense/kernel"],
        original["bert.encoder.layer.1.intermediate.dense.weight"].T,
    )
    assert flat["encoder/layer_1/intermediate/dense/kernel"].shape == (32, 64)
    np.testing.assert_array_equal(
        flat["embeddings/LayerNorm/scale"], original["bert.embeddings.LayerNorm.gamma"]
    )


def test_longer_position_table_is_cut_to_config():
    long_cfg = BertConfig(**{**TINY.to_dict(), "max_position_embeddings": 128})
    state = flat_to_bert_state(_random_flat(long_cfg), prefix="bert.")
    params = bert_state_to_params(state, TINY)
    table = params["embeddings"]["position_embeddings"]["embedding"]
    assert table.shape == (64, 32)
    np.testing.assert_array_equal(table, state["bert.embeddings.position_embeddings.weight"][:64])


def test_mismatch_error_names_missing_extra_and_misshaped_at_once():
    state = _original_state()
    del state["bert.encoder.layer.0.attention.self.key.bias"]
    state["bert.encoder.layer.0.attention.self.extra.weight"] = np.zeros((32, 32), np.float32)
    state["bert.encoder.layer.1.output.dense.weight"] = np.zeros((32, 65), np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        bert_state_to_params(state, TINY, source="broken.bin")
    msg = str(info.value)
    assert "broken.bin" in msg
    assert "encoder/layer_0/attention/self/key/bias" in msg  # missing
    assert "bert.encoder.layer.0.attention.self.extra.weight" in msg  # unexpected
    assert "encoder/layer_1/output/dense/kernel expected (64, 32) got (65, 32)" in msg
    assert info.value.missing and info.value.unexpected and info.value.mismatched


def test_deeper_checkpoint_and_missing_pooler_are_errors():
    deep = BertConfig(**{**TINY.to_dict(), "num_hidden_layers": 3})
    with pytest.raises(CheckpointMismatchError, match=r"bert\.encoder\.layer\.2\."):
        bert_state_to_params(flat_to_bert_state(_random_flat(deep)), TINY)
    no_pooler = flat_to_bert_state(_random_flat(TINY, add_pooler=False))
    with pytest.raises(CheckpointMismatchError, match="pooler/dense/kernel"):
        bert_state_to_params(no_pooler, TINY)
    params = bert_state_to_params(no_pooler, TINY, add_pooler=False)
    assert "pooler" not in params
    # A checkpoint with a pooler also loads into a model without one.
    assert "pooler" not in bert_state_to_params(_original_state(), TINY, add_pooler=False)


def test_auto_detected_prefix_reports_foreign_keys():
    state = _original_state()
    state["classifier.weight"] = np.zeros((3, 32), np.float32)
    flat, unrecognised = bert_state_to_flat(state, TINY)
    assert unrecognised == ["classifier.weight"]
    # With an explicit prefix the caller owns keys outside it.
    _, unrecognised = bert_state_to_flat(state, TINY, prefix="bert.")
    assert unrecognised == []


@pytest.mark.parametrize("names", [("gamma", "beta"), ("weight", "bias")])
@pytest.mark.parametrize("prefix", ["bert.", "", "pretrain_model.mybert.bert."])
def test_round_trip_is_bit_exact(names, prefix):
    rng = np.random.default_rng(5)
    flat = _random_flat(TINY, seed=1)
    state = flat_to_bert_state(flat, prefix=prefix, layer_norm_names=names)
    state = {k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in state.items()}
    back_flat, unrecognised = bert_state_to_flat(state, TINY, prefix=prefix)
    assert unrecognised == []
    back = flat_to_bert_state(back_flat, prefix=prefix, layer_norm_names=names)
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == state[k].dtype
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    with pytest.raises(ValueError, match="encoder/layer_0/nonsense/kernel"):
        flat_to_bert_state({"encoder/layer_0/nonsense/kernel": np.zeros(1)})


def _write_hf_folder(folder, cfg, state):
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({**cfg.to_dict(), "hidden_act": "gelu", "model_type": "bert"})
    )


def test_load_checkpoint_folder_single_file_and_torch_bin(tmp_path):
    state = flat_to_bert_state(_random_flat(TINY, seed=2), prefix="", layer_norm_names=("weight", "bias"))
    ref = bert_state_to_params(state, TINY)

    _write_hf_folder(tmp_path / "hf", TINY, state)
    cfg, params = load_bert_checkpoint(tmp_path / "hf")
    assert cfg == TINY
    _assert_trees_equal(params, ref)
    cfg, params = load_bert_checkpoint(tmp_path / "hf" / "model.safetensors", TINY)
    _assert_trees_equal(params, ref)

    (tmp_path / "lone").mkdir()
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "lone" / "w.safetensors")
    with pytest.raises(ValueError, match="no config.json"):
        load_bert_checkpoint(tmp_path / "lone" / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_bert_checkpoint(tmp_path / "hf")

    torch = pytest.importorskip("torch")
    torch.save(
        {"bert." + k: torch.from_numpy(v) for k, v in state.items()},
        tmp_path / "hf" / "pytorch_model.bin",
    )
    cfg, params = load_bert_checkpoint(tmp_path / "hf", add_pooler=False)
    assert "pooler" not in params
    _assert_trees_equal(params, {k: v for k, v in ref.items() if k != "pooler"})


def test_original_jml_bert_outputs(fixtures_dir):
    """Main and relation BERTs of the original tiny JointMMwithRel (fixtures
    §1.4: inter/main_bert_last, main_bert_pooled, rel_bert_last)."""
    npz = np.load(fixtures_dir / "orig_tiny_model.npz")
    cfg_json = json.loads((fixtures_dir / "orig_tiny_model.json").read_text())["config"]["bert"]
    cfg = BertConfig.from_dict(cfg_json)
    assert cfg == TINY
    state = {k: npz[k] for k in npz.files if "/" not in k}
    ids = jnp.asarray(npz["input/input_ids"])
    mask = jnp.asarray(npz["input/input_mask"])
    types = jnp.asarray(npz["input/segment_ids"])
    model = BertModel(cfg)

    main = bert_state_to_params(state, cfg, prefix="bert.")
    hidden, pooled = model.apply({"params": main}, ids, mask, types)
    # Every position, padding included: the mask constant is the original's -10000.
    assert np.abs(np.asarray(hidden) - npz["inter/main_bert_last"]).max() <= 1e-5
    assert np.abs(np.asarray(pooled) - npz["inter/main_bert_pooled"]).max() <= 1e-5

    rel = bert_state_to_params(state, cfg, prefix="pretrain_model.mybert.bert.")
    hidden, _ = model.apply({"params": rel}, ids, mask, types)
    assert np.abs(np.asarray(hidden) - npz["inter/rel_bert_last"]).max() <= 1e-5


def test_convert_checkpoint_cli_writes_a_bert_artifact_with_its_vocab(tmp_path, capsys):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import orbax.checkpoint as ocp

    from launch.convert_checkpoint import main

    hf_cfg = transformers.BertConfig(
        vocab_size=TINY.vocab_size, hidden_size=TINY.hidden_size,
        num_hidden_layers=TINY.num_hidden_layers,
        num_attention_heads=TINY.num_attention_heads,
        intermediate_size=TINY.intermediate_size,
        max_position_embeddings=TINY.max_position_embeddings,
    )
    transformers.BertModel(hf_cfg).save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(TINY.vocab_size)))
    out = tmp_path / "out"
    assert main(["bert", "--src", str(tmp_path / "src"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"max \|diff\| last hidden (\S+), pooled (\S+)", printed)
    assert match, printed
    assert float(match.group(1)) <= 1e-5 and float(match.group(2)) <= 1e-5

    record = json.loads((out / "artifact.json").read_text())
    assert record["kind"] == "bert" and BertConfig.from_dict(record["bert_config"]) == TINY
    assert (out / "vocab.txt").read_text() == (tmp_path / "src" / "vocab.txt").read_text()
    restored = ocp.StandardCheckpointer().restore(out / "variables")
    _, expected = load_bert_checkpoint(tmp_path / "src")
    _assert_trees_equal(_to_numpy(restored)["params"], expected)


def _to_numpy(tree):
    return {k: _to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}
