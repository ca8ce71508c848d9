"""Import (and export) the authors' PyTorch JML checkpoints.

Layouts (original-checkpoint-layout.md §2-§4):
  * joint model ``checkpoint.pth.tar``: ``{'model': JointMMwithRel.state_dict(),
    'optimizer': ..., 'step': int}``; a bare state dict works too;
  * relation checkpoint (``rel_pre_soft_new``, ``rel_mode_*.pth``):
    ``{'model_rel': BertRel.state_dict(), ...}``;
  * an ``.npz`` holding the state-dict tensors under their original names (what
    the parity fixture ships).

Every key is either mapped into our variables or named in the report: the
original's never-run modules (``text2span``, ``img_label_emb``, both ResNet
``fc`` layers), the discarded BERT poolers and the ``num_batches_tracked``
counters are listed as ``dropped`` (known, unused by the forward pass), and
anything else is an error through `strict_merge`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Mapping

import numpy as np

from jml_jax.convert import bert as bert_convert
from jml_jax.convert import resnet as resnet_convert
from jml_jax.convert.common import flatten_tree, load_npz, strict_merge, torch_load

MHA_NAMES = ("imgLa2text", "res2span", "img2txt", "txt2img", "txt2txt", "img2img")
# original key prefix -> our params path, for plain Linear layers.
JOINT_LINEARS = {
    "align_res": "align_res",
    "align_imgLA_and_text": "mate/align_imgLA_and_text",
    "binary_affine": "mate/binary_affine",
    "unary_affine": "masc/unary_affine",
    "dense": "masc/dense",
    "align_all_1": "masc/align_all_1",
    "align_all_2": "masc/align_all_2",
    "classifier": "masc/classifier",
}
JOINT_MHAS = {"imgLa2text": "mate/imgLa2text", "res2span": "masc/res2span"}
RELATION_LINEARS = {
    "mybert.aling_img_1": "aling_img_1",
    "mybert.aaali": "aaali",
    "pair_preject": "pair_preject",
}
RELATION_MHAS = {f"mybert.{n}": n for n in ("img2txt", "txt2img", "txt2txt", "img2img")}
# Present in the original checkpoints, never used by the forward pass (§3.5).
UNUSED_PATTERNS = (
    r"^text2span\.",
    r"^img_label_emb\.",
    r"(^|\.)resnet\.fc\.",
    r"(^|\.)bert\.pooler\.",
    r"num_batches_tracked$",
)


@dataclasses.dataclass
class ConversionReport:
    """What happened to every source key."""

    mapped: list[str]
    dropped: list[str]  # known-unused keys (see UNUSED_PATTERNS)

    def summary(self) -> str:
        return f"{len(self.mapped)} keys mapped, {len(self.dropped)} known-unused keys dropped"


def _linear(flat, state, src, dst, used):
    flat[f"params/{dst}/kernel"] = np.ascontiguousarray(state[f"{src}.weight"].T)
    used.append(f"{src}.weight")
    if f"{src}.bias" in state:
        flat[f"params/{dst}/bias"] = state[f"{src}.bias"]
        used.append(f"{src}.bias")


def _mha(flat, state, src, dst, used):
    """torch w_qs [heads*D, D] -> [D, heads, D]; fc [D, heads*D] -> [heads, D, D]."""
    w_q = state[f"{src}.w_qs.weight"]
    width = w_q.shape[1]
    heads = w_q.shape[0] // width
    for name in ("w_qs", "w_ks", "w_vs"):
        w = state[f"{src}.{name}.weight"]
        flat[f"params/{dst}/{name}/kernel"] = np.ascontiguousarray(w.T.reshape(width, heads, -1))
        used.append(f"{src}.{name}.weight")
    fc = state[f"{src}.fc.weight"]
    flat[f"params/{dst}/fc/kernel"] = np.ascontiguousarray(fc.T.reshape(heads, -1, fc.shape[0]))
    flat[f"params/{dst}/layer_norm/scale"] = state[f"{src}.layer_norm.weight"]
    flat[f"params/{dst}/layer_norm/bias"] = state[f"{src}.layer_norm.bias"]
    used += [f"{src}.fc.weight", f"{src}.layer_norm.weight", f"{src}.layer_norm.bias"]


def _present(state, prefix):
    return any(k.startswith(prefix) for k in state)


def _add_resnet(flat, state, src_prefix, dst, used):
    sub, unrecognised = resnet_convert.torchvision_state_to_flat(state, prefix=src_prefix)
    for key, value in sub.items():
        collection, rest = key.split("/", 1)
        flat[f"{collection}/{dst}/{rest}"] = value
    used.extend(k for k in state if k.startswith(src_prefix) and k not in set(unrecognised))


def _add_bert(flat, state, config, src_prefix, dst, used):
    sub, unrecognised = bert_convert.bert_state_to_flat(state, config, prefix=src_prefix)
    for key, value in sub.items():
        flat[f"params/{dst}/{key}"] = value
    used.extend(k for k in state if k.startswith(src_prefix) and k not in set(unrecognised))


def original_state_to_flat(state: Mapping[str, np.ndarray], config) -> tuple[dict, ConversionReport]:
    """Maps a JointMMwithRel (or BertRel) state dict to flat variable paths.

    Args:
      state: original key -> array. A joint state dict (``bert.*``,
        ``pretrain_model.*``, ...) or a relation state dict (``mybert.*``,
        ``pair_preject.*``), whose keys land under ``relation/``.
      config: a `JMLConfig` (BERT sizes for position-embedding cuts).

    Returns:
      (flat ``{"params/...": array, "batch_stats/...": array}``, report).
      Keys neither mapped nor known-unused are left out of ``flat`` and show up
      as unexpected through the caller's `strict_merge`.
    """
    state = {k: np.asarray(v) for k, v in state.items()}
    dropped = [k for k in state if any(re.search(p, k) for p in UNUSED_PATTERNS)]
    live = {k: v for k, v in state.items() if k not in set(dropped)}
    flat: dict[str, np.ndarray] = {}
    used: list[str] = []
    is_relation_only = not _present(live, "pretrain_model.") and _present(live, "mybert.")
    rel = "" if is_relation_only else "pretrain_model."
    if not is_relation_only:
        if _present(live, "bert."):
            _add_bert(flat, live, config.bert, "bert.", "bert", used)
        if _present(live, "resnet152.resnet."):
            _add_resnet(flat, live, "resnet152.resnet.", "resnet", used)
        for src, dst in JOINT_LINEARS.items():
            if f"{src}.weight" in live:
                _linear(flat, live, src, dst, used)
        for src, dst in JOINT_MHAS.items():
            if f"{src}.w_qs.weight" in live:
                _mha(flat, live, src, dst, used)
    if _present(live, f"{rel}mybert.bert."):
        _add_bert(flat, live, config.relation_bert_config, f"{rel}mybert.bert.", "relation/bert", used)
    if _present(live, f"{rel}mybert.pre_resnet.resnet."):
        _add_resnet(flat, live, f"{rel}mybert.pre_resnet.resnet.", "relation/pre_resnet", used)
    for src, dst in RELATION_LINEARS.items():
        if f"{rel}{src}.weight" in live:
            _linear(flat, live, f"{rel}{src}", f"relation/{dst}", used)
    for src, dst in RELATION_MHAS.items():
        if f"{rel}{src}.w_qs.weight" in live:
            _mha(flat, live, f"{rel}{src}", f"relation/{dst}", used)
    leftover = sorted(set(live) - set(used))
    for key in leftover:  # reported as unexpected by strict_merge
        flat[f"unmapped_source_key/{key}"] = live[key]
    return flat, ConversionReport(mapped=sorted(set(used)), dropped=sorted(dropped))


def load_original_state(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    """Reads a checkpoint file into (state dict of NumPy arrays, kind).

    kind is 'joint' (``{'model': ...}`` or a bare joint state dict) or
    'relation' (``{'model_rel': ...}``). ``.npz`` files keep only the keys
    without '/' (the fixture's weights). ``.pth``/``.tar``/``.bin`` need torch.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".npz":
        state = {k: v for k, v in load_npz(path).items() if "/" not in k}
    else:
        obj = torch_load(path)  # a dict of state dicts, optimizer state and ints: plain data
        if isinstance(obj, Mapping) and "model" in obj:
            obj = obj["model"]
        elif isinstance(obj, Mapping) and "model_rel" in obj:
            obj = obj["model_rel"]
        state = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    kind = "relation" if any(k.startswith("mybert.") for k in state) else "joint"
    return state, kind


def convert_original(state: Mapping[str, np.ndarray], config, expected_variables, *, source: str):
    """State dict -> our variables tree, strictly checked against ``expected_variables``.

    ``expected_variables`` is the (abstract) tree from ``jax.eval_shape`` of
    the model's init, unboxed, holding 'params' and 'batch_stats'. For a
    relation checkpoint pass only the ``relation`` subtrees (wrapped as
    ``{'params': {'relation': ...}, 'batch_stats': {'relation': ...}}``).

    Returns (variables as NumPy, ConversionReport). Raises
    CheckpointMismatchError naming every missing, unexpected and mis-shaped key.
    """
    flat, report = original_state_to_flat(state, config)
    unexpected = [k.split("/", 1)[1] for k in flat if k.startswith("unmapped_source_key/")]
    flat = {k: v for k, v in flat.items() if not k.startswith("unmapped_source_key/")}
    variables = strict_merge(expected_variables, flat, source=source, unrecognised=unexpected)
    return variables, report


def variables_to_original_state(variables, *, relation_only: bool = False) -> dict[str, np.ndarray]:
    """Our variables -> original key layout (the inverse of `original_state_to_flat`
    for every key the model uses). ``relation_only`` writes ``BertRel`` keys."""
    flat = flatten_tree(variables)
    out: dict[str, np.ndarray] = {}
    rel = "" if relation_only else "pretrain_model."

    def sub(prefix):
        return {k[len(prefix):]: np.asarray(v) for k, v in flat.items() if k.startswith(prefix)}

    def linear(src, dst):
        out[f"{src}.weight"] = np.ascontiguousarray(flat[f"params/{dst}/kernel"].T)
        if f"params/{dst}/bias" in flat:
            out[f"{src}.bias"] = np.asarray(flat[f"params/{dst}/bias"])

    def mha(src, dst):
        for name in ("w_qs", "w_ks", "w_vs"):
            k = np.asarray(flat[f"params/{dst}/{name}/kernel"])
            out[f"{src}.{name}.weight"] = np.ascontiguousarray(k.reshape(k.shape[0], -1).T)
        fc = np.asarray(flat[f"params/{dst}/fc/kernel"])
        out[f"{src}.fc.weight"] = np.ascontiguousarray(fc.reshape(-1, fc.shape[-1]).T)
        out[f"{src}.layer_norm.weight"] = np.asarray(flat[f"params/{dst}/layer_norm/scale"])
        out[f"{src}.layer_norm.bias"] = np.asarray(flat[f"params/{dst}/layer_norm/bias"])

    def resnet(dst, prefix):
        tree = {f"params/{k}": v for k, v in sub(f"params/{dst}/").items()}
        tree.update({f"batch_stats/{k}": v for k, v in sub(f"batch_stats/{dst}/").items()})
        out.update(resnet_convert.flat_to_torchvision_state(tree, prefix=prefix))

    if not relation_only:
        out.update(bert_convert.flat_to_bert_state(sub("params/bert/"), prefix="bert."))
        if any(k.startswith("params/resnet/") for k in flat):
            resnet("resnet", "resnet152.resnet.")
        for src, dst in JOINT_LINEARS.items():
            if f"params/{dst}/kernel" in flat:
                linear(src, dst)
        for src, dst in JOINT_MHAS.items():
            mha(src, dst)
    if any(k.startswith("params/relation/") for k in flat):
        out.update(
            bert_convert.flat_to_bert_state(sub("params/relation/bert/"), prefix=f"{rel}mybert.bert.")
        )
        resnet("relation/pre_resnet", f"{rel}mybert.pre_resnet.resnet.")
        for src, dst in RELATION_LINEARS.items():
            linear(f"{rel}{src}", f"relation/{dst}")
        for src, dst in RELATION_MHAS.items():
            mha(f"{rel}{src}", f"relation/{dst}")
    return out
