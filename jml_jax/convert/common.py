"""Shared pieces of every checkpoint converter: flat paths and one strict merge.

A converter turns a source checkpoint (a flat ``{key: np.ndarray}`` state dict)
into a flat ``{"a/b/c": np.ndarray}`` dict in our parameter layout, and reports
the source keys it did not recognise. `strict_merge` then checks the result
against the tree the model expects and fails once, naming every missing,
unexpected and wrongly shaped entry: nothing is silently dropped or left at
random init.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

SEP = "/"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: lists every problem at once."""

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=()):
        self.source = source
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        lines = [f"checkpoint {source!r} does not fit the model:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(
                f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected)
            )
        if self.mismatched:
            lines.append(
                f"  wrong shape ({len(self.mismatched)}): "
                + ", ".join(f"{k} expected {e} got {g}" for k, e, g in self.mismatched)
            )
        super().__init__("\n".join(lines))


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a/b/c": leaf}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{SEP}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path))
        else:
            flat[path] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` -> nested dicts."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def strict_merge(
    expected: Mapping[str, Any],
    provided: Mapping[str, np.ndarray],
    *,
    source: str,
    unrecognised: Iterable[str] = (),
    dtype: Any = None,
) -> dict[str, Any]:
    """Checks ``provided`` (flat, our layout) against ``expected`` (nested tree).

    Args:
      expected: the tree the model expects; leaves have ``.shape`` (arrays or
        ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``).
      provided: flat ``{"a/b/c": array}`` produced by a converter.
      source: name of the checkpoint, for the error message.
      unrecognised: source keys the converter could not map (reported as
        unexpected).
      dtype: cast every leaf to this dtype (default: the expected leaf's dtype).

    Returns:
      A nested tree of NumPy arrays with exactly the expected structure.

    Raises:
      CheckpointMismatchError naming every missing, unexpected and wrongly
      shaped entry.
    """
    want = flatten_tree(expected)
    missing = [k for k in want if k not in provided]
    unexpected = [k for k in provided if k not in want] + list(unrecognised)
    mismatched = [
        (k, tuple(want[k].shape), tuple(np.shape(provided[k])))
        for k in want
        if k in provided and tuple(want[k].shape) != tuple(np.shape(provided[k]))
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    out = {}
    for k, leaf in want.items():
        target = dtype if dtype is not None else getattr(leaf, "dtype", None)
        out[k] = np.asarray(provided[k], dtype=target)
    return unflatten_tree(out)


# --------------------------------------------------------------------------- reading files


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be read; the message names the file."""


def _torch_reason(error: BaseException) -> str:
    """The useful part of a torch.load error, without PyTorch's advice to load
    untrusted pickles (a file this project reads must hold plain tensors)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation of torch.load", 1)[0]
        text = text.split(" Please use `torch.serialization", 1)[0]
        return "it holds something other than tensors and plain containers, or is not a PyTorch file: " + \
            " ".join(text.split())
    return " ".join(text.split())[:300] or type(error).__name__


def read_safetensors(path) -> dict[str, np.ndarray]:
    """``{key: np.ndarray}`` of a .safetensors file (NumPy only).

    Raises CheckpointReadError naming the file (truncated, not safetensors).
    """
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointReadError(f"{path}: not a readable .safetensors file ({e})") from None


def torch_load(path, *, weights_only: bool = True):
    """torch.load on CPU; raises CheckpointReadError naming the file instead of
    torch's error (which does not name it and may advise unsafe loading)."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs torch (pip install torch); or convert it to "
                          ".safetensors first") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise CheckpointReadError(f"{path}: cannot read this PyTorch file ({_torch_reason(e)})") from None


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz file; raises CheckpointReadError naming the file."""
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # BadZipFile, ValueError, EOFError, ...
        raise CheckpointReadError(f"{path}: not a readable .npz file ({e})") from None

