"""Convert PyTorch checkpoints to Orbax checkpoints of jml_jax parameters.

    python -m launch.convert_checkpoint bert --src DIR_OR_FILE --out OUT_DIR \
        [--config CONFIG_JSON_OR_PRESET] [--prefix bert.] [--no-pooler] [--overwrite]

Writes ``OUT_DIR/params`` (Orbax StandardCheckpointer, the ``params``
collection) and ``OUT_DIR/bert_config.json``. When torch and transformers are
importable and ``--src`` is a folder transformers can load, prints the largest
difference between our Flax BERT and ``transformers.BertModel`` on a few
sample sentences. Use it as ``model.bert_init=OUT_DIR``.

    python -m launch.convert_checkpoint resnet --src resnet152-b121ed2d.pth --out OUT_DIR \
        [--depth 152] [--blocks 3,8,36,3] [--kind auto|torchvision|timm|hf] [--prefix P] [--overwrite]

torchvision / timm ``.pth`` (or ``.safetensors``) or a transformers ResNet
folder -> ``OUT_DIR/variables`` ({'params', 'batch_stats'} without ``fc``),
what ``model.resnet_init=OUT_DIR`` reads.

    python -m launch.convert_checkpoint jml --src checkpoint.pth.tar --out OUT_DIR \
        --config configs/twitter2015.py[:VARIANTS] [--set model.bert=minilm-l6 ...] [--overwrite]

The authors' joint ``checkpoint.pth.tar`` (or an ``.npz`` of its state dict)
-> ``OUT_DIR/variables``, the whole model's {'params', 'batch_stats'}; their
relation checkpoint (``model_rel``, e.g. ``rel_pre_soft_new``) -> the relation
subtree in ``OUT_DIR/relation``, what ``model.relation_init=OUT_DIR/relation``
reads. The experiment config gives the model's shapes; every source key is
mapped or reported, and a mismatch names every missing, unexpected and
mis-shaped key.

Each model family is one subcommand: an entry of SUBCOMMANDS mapping its name
to (add_arguments, run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any, Callable

from launch.subcommands import run_subcommands


def save_params(out_dir: str | os.PathLike, params: Any, overwrite: bool = False) -> pathlib.Path:
    """Writes ``params`` to ``OUT_DIR/params`` with Orbax; returns that path."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(os.path.abspath(out_dir)) / "params"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params, force=overwrite)
    checkpointer.wait_until_finished()
    return path


# ---------------------------------------------------------------------------- bert

def _bert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True,
                   help="HF folder (config.json + model.safetensors | pytorch_model.bin) "
                        "or a single .safetensors/.bin file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default=None,
                   help="config.json path or preset name (default: config.json beside --src)")
    p.add_argument("--prefix", default=None,
                   help="key prefix of the BERT, e.g. 'bert.' (default: detected)")
    p.add_argument("--no-pooler", action="store_true", help="drop the pooler")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/params")
    p.add_argument("--skip-parity", action="store_true",
                   help="do not compare with transformers even when installed")


def _bert_run(args: argparse.Namespace) -> int:
    from jml_jax.convert.bert import load_bert_checkpoint
    from jml_jax.models.bert import BERT_PRESETS, BertConfig, get_bert_config

    config = None
    if args.config:
        config = (get_bert_config(args.config) if args.config in BERT_PRESETS
                  else BertConfig.from_hf_json(args.config))
    config, params = load_bert_checkpoint(
        args.src, config, add_pooler=not args.no_pooler, prefix=args.prefix
    )
    path = save_params(args.out, params, overwrite=args.overwrite)
    (path.parent / "bert_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    n = sum(v.size for v in _leaves(params))
    print(f"wrote {path} ({n:,} parameters) and {path.parent / 'bert_config.json'}")

    have_ref = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    if args.skip_parity or not have_ref or not pathlib.Path(args.src).is_dir():
        print("parity check skipped (needs torch, transformers and a model folder)")
        return 0
    from jml_jax.convert.bert_reference import compare_with_transformers

    try:
        summary = compare_with_transformers(args.src, config, params)
    except Exception as e:  # the conversion itself succeeded; report, do not fail
        print(f"parity check could not run: {type(e).__name__}: {e}")
        return 0
    pooled = summary["max_abs_diff_pooled"]
    print("parity vs transformers.BertModel "
          f"(batch {summary['batch_shape']}, tokenized={summary['tokenized']}): "
          f"max |diff| last hidden {summary['max_abs_diff_last_hidden']:.3g}, "
          f"pooled {'n/a' if pooled is None else format(pooled, '.3g')}")
    return 0


# ---------------------------------------------------------------------------- resnet

def _resnet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True,
                   help="torchvision/timm .pth/.pt/.bin/.safetensors file, or a transformers ResNet folder")
    p.add_argument("--out", required=True, help="output folder (OUT/variables is written)")
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (default: inferred from the keys)")
    p.add_argument("--blocks", default=None, help="per-stage block counts, e.g. 1,1,1,1")
    p.add_argument("--kind", default="auto", choices=("auto", "torchvision", "timm", "hf"))
    p.add_argument("--prefix", default="", help="key prefix, e.g. 'resnet152.resnet.'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/variables")


def convert_resnet(src, out, *, depth=None, blocks=None, kind="auto", prefix="", overwrite=False) -> dict:
    """A ResNet checkpoint -> ``OUT/variables`` (no ``fc``: JML reads the grid).

    Returns {'path', 'depth', 'blocks', 'width', 'num_params', 'variables'}
    (``variables`` the NumPy tree that was written).
    """
    from jml_jax.checkpointing import save_params
    from jml_jax.convert.resnet import load_resnet_checkpoint

    module, variables = load_resnet_checkpoint(
        src, depth, tuple(blocks) if blocks else None, kind=kind, prefix=prefix, include_fc=False
    )
    path = pathlib.Path(os.path.abspath(out)) / "variables"
    save_params(path, variables, overwrite=overwrite)
    return {"path": path, "depth": module.depth, "blocks": module.blocks, "width": module.width,
            "num_params": sum(v.size for v in _leaves(variables["params"])), "variables": variables}


def _resnet_run(args: argparse.Namespace) -> int:
    blocks = tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None
    r = convert_resnet(args.src, args.out, depth=args.depth, blocks=blocks, kind=args.kind,
                       prefix=args.prefix, overwrite=args.overwrite)
    shape = f"depth {r['depth']}" + (f", blocks {tuple(r['blocks'])}" if r["blocks"] else "")
    print(f"wrote {r['path']} (ResNet {shape}, width {r['width']}, {r['num_params']:,} parameters "
          f"+ batch_stats); use it as model.resnet_init={r['path'].parent}")
    return 0


# ---------------------------------------------------------------------------- jml

def _jml_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True,
                   help="the authors' checkpoint.pth.tar / relation checkpoint, or an .npz of a state dict")
    p.add_argument("--out", required=True,
                   help="output folder: OUT/variables (joint) or OUT/relation (relation checkpoint)")
    p.add_argument("--config", required=True,
                   help="experiment config file giving the model's shapes, e.g. configs/twitter2015.py "
                        "or configs/twitter2015.py:minilm")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override, e.g. --set model.bert=tiny (repeatable; values are Python "
                        "literals or plain strings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def load_experiment_config(spec: str, overrides=()):
    """``PATH[:ARG]`` -> ``get_config(ARG)`` of that file, with ``FIELD=VALUE`` overrides."""
    import ast
    import importlib.util

    path, _, arg = spec.partition(":")
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"--config {spec!r}: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(f"_config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for item in overrides:
        field, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = field.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"--set {item!r}: the config has no field {field!r}")
        node[leaf] = value
    return config


def convert_jml(src, out, config, *, overwrite=False) -> dict:
    """The authors' joint or relation checkpoint -> Orbax, strictly checked
    against the model that ``config`` builds.

    Returns {'kind': 'joint'|'relation', 'path', 'report' (ConversionReport),
    'variables' (the NumPy tree written)}.
    """
    from jml_jax import model_factory
    from jml_jax.checkpointing import save_params
    from jml_jax.convert import original

    model = model_factory.build_model(config)
    if not model.config.use_images:
        raise ValueError("the config is text-only (model.use_images=False): the authors' checkpoints "
                         "hold the image model; convert with an image config")
    abstract = model_factory.abstract_variables(model, config)
    state, kind = original.load_original_state(src)
    if kind == "relation":
        expected = {c: {"relation": abstract[c]["relation"]} for c in ("params", "batch_stats")}
        variables, report = original.convert_original(state, model.config, expected, source=str(src))
        variables = {c: variables[c]["relation"] for c in variables}
        path = pathlib.Path(os.path.abspath(out)) / "relation"
    else:
        variables, report = original.convert_original(state, model.config, abstract, source=str(src))
        path = pathlib.Path(os.path.abspath(out)) / "variables"
    save_params(path, variables, overwrite=overwrite)
    return {"kind": kind, "path": path, "report": report, "variables": variables}


def _jml_run(args: argparse.Namespace) -> int:
    config = load_experiment_config(args.config, args.overrides)
    r = convert_jml(args.src, args.out, config, overwrite=args.overwrite)
    n = sum(v.size for v in _leaves(r["variables"]))
    print(f"{r['kind']} checkpoint {args.src}: {r['report'].summary()}")
    if r["report"].dropped:
        shown = ", ".join(r["report"].dropped[:6]) + (" ..." if len(r["report"].dropped) > 6 else "")
        print(f"  known-unused (not used by the forward pass): {shown}")
    if r["kind"] == "relation":
        print(f"wrote {r['path']} ({n:,} values); use it as model.relation_init={r['path']}")
    else:
        print(f"wrote {r['path']} ({n:,} values): the whole model's variables "
              f"(jml_jax.checkpointing.restore_params)")
    return 0


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


# Subcommands: name -> (add_arguments, run).
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "bert": (_bert_args, _bert_run),
    "resnet": (_resnet_args, _resnet_run),
    "jml": (_jml_args, _jml_run),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands(__doc__.split("\n\n")[0], SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
