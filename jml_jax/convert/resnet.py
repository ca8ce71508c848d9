"""ResNet checkpoints (torchvision, timm, transformers) -> our Flax ResNet tree.

The key mapping is a table (our tree: jml_jax/models/resnet.py). torchvision
and plain timm ResNets share one naming; transformers' is on the right::

    ours                                 torchvision / timm      transformers
    params/conv1/kernel                  conv1.weight            <E>.convolution.weight
    bn1                                  bn1.*                   <E>.normalization.*
    params/layer{s}_{j}/conv{k}/kernel   layer{s}.{j}.conv{k}.*  <L>.layer.{k-1}.convolution.weight
    layer{s}_{j}/bn{k}                   layer{s}.{j}.bn{k}.*    <L>.layer.{k-1}.normalization.*
    layer{s}_{j}/downsample_conv/kernel  <D>.0.weight            <L>.shortcut.convolution.weight
    layer{s}_{j}/downsample_bn           <D>.1.*                 <L>.shortcut.normalization.*
    params/fc/{kernel,bias}              fc.{weight,bias}        classifier.1.{weight,bias}

with <D> = layer{s}.{j}.downsample, <E> = embedder.embedder and
<L> = encoder.stages.{s-1}.layers.{j}; transformers keys may carry 'resnet.'
(ResNetForImageClassification).

BatchNorm tensors: ``weight`` -> params ``scale``, ``bias`` -> params
``bias``, ``running_mean``/``running_var`` -> batch_stats ``mean``/``var``.
``num_batches_tracked`` is dropped: torch reads it only when momentum is None
(cumulative averaging); torchvision's and JML's BatchNorms use the fixed
momentum 0.1 (original-checkpoint-layout.md §5), so it never affects a number.
Conv kernels go OIHW -> HWIO, the fc weight [out, in] -> kernel [in, out].

Conversion itself is pure NumPy. Only `load_resnet_checkpoint` on a
.pth/.pt/.bin file imports torch (lazily), and it builds the model's expected
tree with jax.eval_shape and checks it with `strict_merge`, so a checkpoint
that does not fit fails once, naming every missing, unexpected and wrongly
shaped key.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from jml_jax.convert.common import flatten_tree, read_safetensors, strict_merge, torch_load

log = logging.getLogger(__name__)

# BatchNorm2d tensor name -> (collection, our name); None = dropped.
_BN_FIELDS: dict[str, tuple[str, str] | None] = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "num_batches_tracked": None,
}
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _block(m: re.Match, stage_offset: int = 0) -> str:
    return f"layer{int(m[1]) + stage_offset}_{int(m[2])}"


# (regex on the key without prefix, kind, match -> our module path)
_TORCHVISION_RULES = [
    (re.compile(r"^conv1\.weight$"), "conv", lambda m: "conv1"),
    (re.compile(rf"^bn1\.{_BN}$"), "bn", lambda m: "bn1"),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3])\.weight$"),
        "conv",
        lambda m: f"{_block(m)}/{m[3]}",
    ),
    (
        re.compile(rf"^layer([1-4])\.(\d+)\.(bn[1-3])\.{_BN}$"),
        "bn",
        lambda m: f"{_block(m)}/{m[3]}",
    ),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
        "conv",
        lambda m: f"{_block(m)}/downsample_conv",
    ),
    (
        re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN}$"),
        "bn",
        lambda m: f"{_block(m)}/downsample_bn",
    ),
    (re.compile(r"^fc\.(weight|bias)$"), "fc", lambda m: "fc"),
]

_HF_STAGE = r"^encoder\.stages\.([0-3])\.layers\.(\d+)\."
_HF_RULES = [
    (re.compile(r"^embedder\.embedder\.convolution\.weight$"), "conv", lambda m: "conv1"),
    (re.compile(rf"^embedder\.embedder\.normalization\.{_BN}$"), "bn", lambda m: "bn1"),
    (
        re.compile(_HF_STAGE + r"shortcut\.convolution\.weight$"),
        "conv",
        lambda m: f"{_block(m, 1)}/downsample_conv",
    ),
    (
        re.compile(_HF_STAGE + rf"shortcut\.normalization\.{_BN}$"),
        "bn",
        lambda m: f"{_block(m, 1)}/downsample_bn",
    ),
    (
        re.compile(_HF_STAGE + r"layer\.([0-2])\.convolution\.weight$"),
        "conv",
        lambda m: f"{_block(m, 1)}/conv{int(m[3]) + 1}",
    ),
    (
        re.compile(_HF_STAGE + rf"layer\.([0-2])\.normalization\.{_BN}$"),
        "bn",
        lambda m: f"{_block(m, 1)}/bn{int(m[3]) + 1}",
    ),
    (re.compile(r"^classifier\.1\.(weight|bias)$"), "fc", lambda m: "fc"),
]

# timm ResNet variants whose layout is not torchvision's (deep stem, avg-pool
# downsample, squeeze-excitation, attention); plain timm resnets share
# torchvision's names exactly.
_TIMM_VARIANT = re.compile(
    r"^(conv1\.\d+\.|.*\.downsample\.2\.|.*\.(se|attn|aa)\.|.*\.drop_block)"
)


def _to_numpy(value: Any, key: str) -> np.ndarray:
    """A torch tensor or array-like -> np.ndarray, without importing torch."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        value = value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise TypeError(f"{key}: cannot convert {type(value).__name__} to an array") from e


def _put(flat: dict, kind: str, module: str, field: str, value: np.ndarray, key: str):
    """Stores one source tensor at its flat path, checking its rank."""
    if kind == "conv":
        if value.ndim != 4:
            raise ValueError(f"{key}: a conv weight must be 4-D OIHW, got shape {value.shape}")
        flat[f"params/{module}/kernel"] = value.transpose(2, 3, 1, 0)
    elif kind == "bn":
        target = _BN_FIELDS[field]
        if target is None:
            return  # num_batches_tracked: see the module docstring.
        if value.ndim != 1:
            raise ValueError(f"{key}: a BatchNorm {field} must be 1-D, got shape {value.shape}")
        col, name = target
        flat[f"{col}/{module}/{name}"] = value
    elif field == "weight":  # fc
        if value.ndim != 2:
            raise ValueError(f"{key}: fc weight must be [out, in], got shape {value.shape}")
        flat["params/fc/kernel"] = value.T
    else:
        flat["params/fc/bias"] = value


def _convert(state: Mapping[str, Any], rules, prefix: str, source: str):
    flat: dict[str, np.ndarray] = {}
    unrecognised: list[str] = []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue  # another module's tensor in a larger checkpoint
        local = key[len(prefix):]
        for pattern, kind, module_of in rules:
            m = pattern.match(local)
            if m:
                field = local.rsplit(".", 1)[1]
                _put(flat, kind, module_of(m), field, _to_numpy(value, key), key)
                break
        else:
            unrecognised.append(key)
    if prefix and not flat and not unrecognised:
        raise ValueError(f"{source}: no key starts with prefix {prefix!r}")
    return flat, unrecognised


def torchvision_state_to_flat(
    state: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Maps a torchvision ResNet state dict to flat paths of our variables tree.

    Args:
      state: ``{key: tensor or array}``, e.g. resnet152-b121ed2d.pth or an
        original JML checkpoint.
      prefix: only keys starting with it are read (and it is stripped), e.g.
        'resnet152.resnet.' or 'pretrain_model.mybert.pre_resnet.resnet.';
        other keys are ignored. With the default '' every key is read.

    Returns:
      (flat, unrecognised): ``{"params/conv1/kernel": array,
      "batch_stats/bn1/mean": array, ...}`` and the source keys (within the
      prefix) that match no rule.

    Raises:
      ValueError naming the key when a tensor has the wrong rank for its role.
    """
    return _convert(state, _TORCHVISION_RULES, prefix, "torchvision state")


def timm_state_to_flat(
    state: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, np.ndarray], list[str]]:
    """timm's plain ResNets (resnet18..152) use torchvision's key names.

    Variants with another layout (deep stem 'd'/'c', avg-pool downsample,
    SE/attention blocks) are refused with the offending keys named.
    """
    odd = [k for k in state if k.startswith(prefix) and _TIMM_VARIANT.match(k[len(prefix):])]
    if odd:
        raise ValueError(
            "timm ResNet variant with a non-torchvision layout (deep stem, avg-pool "
            "downsample or SE/attention) is not supported; offending keys: "
            + ", ".join(sorted(odd)[:8])
            + (f" ... ({len(odd)} in all)" if len(odd) > 8 else "")
        )
    return _convert(state, _TORCHVISION_RULES, prefix, "timm state")


def hf_resnet_state_to_flat(
    state: Mapping[str, Any], config: Any = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Maps a transformers ResNetModel / ResNetForImageClassification state dict.

    Keys may carry the 'resnet.' prefix of ResNetForImageClassification; its
    'classifier.1.*' becomes ``fc``. The stride position (v1.5 vs v1) is not
    visible in the weights, so pass the model's ``config`` (a ResNetConfig or
    the config.json dict) to have it checked with `check_hf_resnet_config`.
    Returns (flat, unrecognised) like `torchvision_state_to_flat`.
    """
    if config is not None:
        check_hf_resnet_config(config)
    source_key = {}
    for key in state:
        local = key[len("resnet."):] if key.startswith("resnet.") else key
        if local in source_key:
            raise ValueError(f"{key} and {source_key[local]} map to the same tensor")
        source_key[local] = key
    local_state = {local: state[key] for local, key in source_key.items()}
    flat, unrec = _convert(local_state, _HF_RULES, "", "transformers state")
    return flat, [source_key[k] for k in unrec]


def _cfg_get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def check_hf_resnet_config(config: Any) -> tuple[int, tuple[int, ...], int]:
    """Checks a transformers ResNetConfig against our torchvision v1.5 layout.

    Returns (depth, blocks, width) for `ResNet`. Raises ValueError listing
    every setting that differs (stride on the first 1x1 conv, a stride-2
    first stage, another activation, widths that do not double, ...).
    """
    problems = []
    layer_type = _cfg_get(config, "layer_type", "bottleneck")
    if layer_type not in ("basic", "bottleneck"):
        problems.append(f"layer_type={layer_type!r} (want 'basic' or 'bottleneck')")
    if _cfg_get(config, "downsample_in_bottleneck", False):
        problems.append("downsample_in_bottleneck=True (stride on the 1x1 conv; want False)")
    if _cfg_get(config, "downsample_in_first_stage", False):
        problems.append("downsample_in_first_stage=True (want False)")
    act = _cfg_get(config, "hidden_act", "relu")
    if act != "relu":
        problems.append(f"hidden_act={act!r} (want 'relu')")
    if _cfg_get(config, "num_channels", 3) != 3:
        problems.append(f"num_channels={_cfg_get(config, 'num_channels')} (want 3)")
    depths = tuple(int(d) for d in _cfg_get(config, "depths", ()))
    hidden = [int(h) for h in _cfg_get(config, "hidden_sizes", ())]
    width = int(_cfg_get(config, "embedding_size", 64))
    expansion = 4 if layer_type == "bottleneck" else 1
    want_hidden = [width * expansion * 2**i for i in range(4)]
    if len(depths) != 4:
        problems.append(f"depths={list(depths)} (want 4 stages)")
    if hidden != want_hidden:
        problems.append(f"hidden_sizes={hidden} with embedding_size={width} (want {want_hidden})")
    if problems:
        raise ValueError(
            "transformers ResNet config differs from the torchvision v1.5 layout: "
            + "; ".join(problems)
        )
    return _depth_for(depths, layer_type == "bottleneck"), depths, width


def _depth_for(blocks: tuple[int, ...], bottleneck: bool) -> int:
    """The standard depth with these blocks, else 50 / 18 (block type only)."""
    from jml_jax.models.resnet import BASIC_DEPTHS, RESNET_BLOCKS

    for depth, counts in RESNET_BLOCKS.items():
        if counts == tuple(blocks) and (depth not in BASIC_DEPTHS) == bottleneck:
            return depth
    return 50 if bottleneck else 18


# --------------------------------------------------------------------------- inverse

_TV_NAME = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_TV_FIELD = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_ORDER = {
    "conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "conv3": 4, "bn3": 5,
    "downsample": 6, "fc": 9, "weight": 0, "bias": 1, "running_mean": 2,
    "running_var": 3, "num_batches_tracked": 4,
}  # fmt: skip


def _torch_order(key: str):
    """Sort key giving torchvision's state_dict order (layers numerically)."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, _ORDER.get(p, 7), p) for p in key.split(".")
    )


def flat_to_torchvision_state(
    flat: Mapping[str, Any], prefix: str = ""
) -> dict[str, np.ndarray]:
    """Inverse of `torchvision_state_to_flat`: our variables -> torchvision keys.

    Args:
      flat: flat ``{"params/...": array, "batch_stats/...": array}`` or the
        nested ``{'params': ..., 'batch_stats': ...}`` tree (unboxed).
      prefix: prepended to every key, e.g. 'resnet152.resnet.'.

    Returns:
      ``{key: np.ndarray}`` in torchvision's module order, OIHW kernels,
      ``num_batches_tracked`` written as int64 zeros for every BatchNorm.

    Raises:
      ValueError naming every path that is not a ResNet variable.
    """
    if any(isinstance(v, Mapping) for v in flat.values()):
        flat = flatten_tree(flat)
    out: dict[str, np.ndarray] = {}
    bad = []
    for path, value in flat.items():
        value = np.asarray(value)
        col, *modules, leaf = path.split("/")
        torch_mod = ".".join(
            _TV_NAME.get(m, m.replace("_", ".") if m.startswith("layer") else m)
            for m in modules
        )
        last = modules[-1] if modules else ""
        if col == "params" and leaf == "kernel" and last.startswith(("conv", "downsample_conv")):
            out[f"{prefix}{torch_mod}.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        elif col == "params" and modules == ["fc"] and leaf in ("kernel", "bias"):
            name, v = ("weight", value.T) if leaf == "kernel" else ("bias", value)
            out[f"{prefix}fc.{name}"] = np.ascontiguousarray(v)
        elif (col, leaf) in _TV_FIELD and last.startswith(("bn", "downsample_bn")):
            out[f"{prefix}{torch_mod}.{_TV_FIELD[(col, leaf)]}"] = value
            if leaf == "scale":
                out[f"{prefix}{torch_mod}.num_batches_tracked"] = np.zeros((), np.int64)
        else:
            bad.append(path)
    if bad:
        raise ValueError(f"not a ResNet variable path: {', '.join(sorted(bad))}")
    return {k: out[k] for k in sorted(out, key=lambda k: _torch_order(k[len(prefix):]))}


# --------------------------------------------------------------------------- loading


def _read_tensors(path: pathlib.Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin", ".tar"):
        obj = torch_load(path)  # torch is imported lazily: only .pth-style files need it
        # Training checkpoints wrap the weights ({'state_dict': ...}).
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
        return dict(obj)
    raise ValueError(
        f"{path}: unknown checkpoint type {path.suffix!r} "
        "(want .pth/.pt/.bin/.tar, .safetensors or a transformers folder)"
    )


def infer_architecture(flat: Mapping[str, Any]) -> tuple[bool, tuple[int, ...], int]:
    """(bottleneck, blocks per stage, stem width) from converted flat paths."""
    counts = [0, 0, 0, 0]
    bottleneck = False
    for path in flat:
        m = re.match(r"^params/layer([1-4])_(\d+)/(\w+)/", path)
        if m:
            counts[int(m[1]) - 1] = max(counts[int(m[1]) - 1], int(m[2]) + 1)
            bottleneck |= m[3] == "conv3"
    if "params/conv1/kernel" not in flat or not all(counts):
        raise ValueError(
            "cannot infer the ResNet architecture: the checkpoint lacks conv1 or a "
            f"stage (blocks found per stage: {counts})"
        )
    return bottleneck, tuple(counts), int(np.shape(flat["params/conv1/kernel"])[-1])


def load_resnet_checkpoint(
    path: str | pathlib.Path,
    depth: int | None = None,
    blocks: tuple[int, ...] | None = None,
    *,
    kind: str = "auto",
    prefix: str = "",
    include_fc: bool = True,
    dtype: Any = None,
    frozen: bool = False,
):
    """Loads a ResNet checkpoint into our module and variables.

    Args:
      path: a torchvision/timm .pth/.pt/.bin (needs torch), a .safetensors
        file, or a transformers ResNet folder (config.json + model.safetensors
        or pytorch_model.bin).
      depth, blocks: the architecture. When ``depth`` is None both are
        inferred from the keys (block type and per-stage counts; counts that
        match no standard depth give depth 50 / 18 for the block type plus
        ``blocks``). A given ``depth`` without ``blocks`` means
        RESNET_BLOCKS[depth], and a checkpoint that differs fails.
      kind: 'auto', 'torchvision', 'timm' or 'hf'.
      prefix: torchvision/timm only: read keys under it (e.g.
        'resnet152.resnet.' in an original JML checkpoint).
      include_fc: keep ``fc`` when the checkpoint has it (num_classes from its
        shape; it never changes the grid). False drops it with a logged note.
      dtype, frozen: passed to `ResNet` (dtype default float32).

    Returns:
      (module, variables): a `ResNet` and ``{'params': ..., 'batch_stats': ...}``
      of float32 NumPy arrays (unboxed), ready for ``module.apply``.

    Raises:
      CheckpointMismatchError naming every missing, unexpected and wrongly
      shaped key; ValueError for unreadable files or a foreign layout.
    """
    import jax
    import jax.numpy as jnp
    from flax.linen import meta

    from jml_jax.models.resnet import ResNet

    path = pathlib.Path(path)
    kinds = ("auto", "torchvision", "timm", "hf")
    if kind not in kinds:
        raise ValueError(f"kind={kind!r}; valid kinds: {kinds}")
    config = None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path}: a checkpoint folder needs config.json")
        config = json.loads(cfg_file.read_text())
        weights = [path / n for n in ("model.safetensors", "pytorch_model.bin")]
        weights = [w for w in weights if w.is_file()]
        if not weights:
            raise ValueError(f"{path}: no model.safetensors or pytorch_model.bin")
        state = _read_tensors(weights[0])
        kind = "hf" if kind == "auto" else kind
    elif path.is_file():
        state = _read_tensors(path)
    else:
        raise FileNotFoundError(f"no checkpoint at {path}")
    if kind == "auto":
        is_hf = any(re.match(r"^(resnet\.)?(embedder|encoder)\.", k) for k in state)
        kind = "hf" if is_hf else "torchvision"

    if kind == "hf":
        if prefix:
            raise ValueError("prefix applies to torchvision/timm checkpoints only")
        flat, unrecognised = hf_resnet_state_to_flat(state, config)
    elif kind == "timm":
        flat, unrecognised = timm_state_to_flat(state, prefix)
    else:
        flat, unrecognised = torchvision_state_to_flat(state, prefix)

    bottleneck, found_blocks, width = infer_architecture(flat)
    if depth is None:
        blocks = blocks or found_blocks
        depth = _depth_for(blocks, bottleneck)
    num_classes = None
    if "params/fc/kernel" in flat:
        n_fc = int(np.shape(flat["params/fc/kernel"])[-1])
        if include_fc:
            num_classes = n_fc
        else:
            log.info("%s: dropping fc (%d classes) as include_fc=False", path, n_fc)
            flat = {k: v for k, v in flat.items() if not k.startswith("params/fc/")}
    module = ResNet(
        depth=depth,
        blocks=tuple(blocks) if blocks is not None else None,
        width=width,
        dtype=dtype if dtype is not None else jnp.float32,
        frozen=frozen,
        num_classes=num_classes,
    )
    expected = meta.unbox(
        jax.eval_shape(
            lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
        )
    )
    variables = strict_merge(
        expected, flat, source=str(path), unrecognised=unrecognised, dtype=np.float32
    )
    return module, variables
