"""Convert PyTorch checkpoints to weight artifacts (jml_jax/weights.py) that configs read.

    python -m launch.convert_checkpoint bert --src DIR_OR_FILE --out OUT_DIR \
        [--config CONFIG_JSON_OR_PRESET] [--prefix bert.] [--no-pooler] [--overwrite]

An HF BERT folder / .safetensors / .bin -> a 'bert' artifact in OUT_DIR, with
the source's ``vocab.txt`` beside it: ``model.bert_init=OUT_DIR`` and
``data.vocab_file=OUT_DIR/vocab.txt``. When torch and transformers are
importable and ``--src`` is a folder transformers can load, prints the largest
difference between our Flax BERT and ``transformers.BertModel`` on a few
sample sentences.

    python -m launch.convert_checkpoint resnet --src resnet152-b121ed2d.pth --out OUT_DIR \
        [--depth 152] [--blocks 3,8,36,3] [--kind auto|torchvision|timm|hf] [--prefix P] [--overwrite]

torchvision / timm ``.pth`` (or ``.safetensors``) or a transformers ResNet
folder -> a 'resnet' artifact ({'params', 'batch_stats'} without ``fc``),
what ``model.resnet_init=OUT_DIR`` reads without PyTorch.

    python -m launch.convert_checkpoint jml --src checkpoint.pth.tar --out OUT_DIR \
        --config configs/twitter2015.py[:VARIANTS] [--config.model.bert=minilm-l6 ...] [--overwrite]

The authors' joint ``checkpoint.pth.tar`` (or an ``.npz`` of its state dict)
-> a 'jml' artifact (``model.original_checkpoint=OUT_DIR``); their relation
checkpoint (``model_rel``, e.g. ``rel_pre_soft_new``) -> a 'relation' artifact
(``model.relation_init=OUT_DIR``). The experiment config, given and
overridden exactly as for ``launch.train``, fixes the model's shapes; every
source key is mapped or reported, and a mismatch names every missing,
unexpected and mis-shaped key.

Each model family is one subcommand: an entry of SUBCOMMANDS mapping its name
to (add_arguments, run).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
from typing import Callable

from tools.subcommands import run_subcommands


# ---------------------------------------------------------------------------- bert

def _bert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True,
                   help="HF folder (config.json + model.safetensors | pytorch_model.bin) "
                        "or a single .safetensors/.bin file")
    p.add_argument("--out", required=True, help="output folder (a 'bert' artifact and vocab.txt)")
    p.add_argument("--config", default=None,
                   help="config.json path or preset name (default: config.json beside --src)")
    p.add_argument("--prefix", default=None,
                   help="key prefix of the BERT, e.g. 'bert.' (default: detected)")
    p.add_argument("--no-pooler", action="store_true", help="drop the pooler")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact in OUT")
    p.add_argument("--skip-parity", action="store_true",
                   help="do not compare with transformers even when installed")


def _bert_run(args: argparse.Namespace) -> int:
    from jml_jax.models.bert import BERT_PRESETS, BertConfig, get_bert_config
    from jml_jax.convert.artifacts import convert_bert

    config = None
    if args.config:
        config = (get_bert_config(args.config) if args.config in BERT_PRESETS
                  else BertConfig.from_hf_json(args.config))
    r = convert_bert(args.src, args.out, bert=config, add_pooler=not args.no_pooler, prefix=args.prefix,
                     overwrite=args.overwrite)
    config, params = r["config"], r["params"]
    n = sum(v.size for v in _leaves(params))
    vocab = f" and {r['path'] / 'vocab.txt'}" if r["vocab"] else " (no vocab.txt beside the source)"
    print(f"wrote {r['path']} ({n:,} parameters){vocab}; use it as model.bert_init={r['path']}")

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
    p.add_argument("--out", required=True, help="output folder (a 'resnet' artifact)")
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (default: inferred from the keys)")
    p.add_argument("--blocks", default=None, help="per-stage block counts, e.g. 1,1,1,1")
    p.add_argument("--kind", default="auto", choices=("auto", "torchvision", "timm", "hf"))
    p.add_argument("--prefix", default="", help="key prefix, e.g. 'resnet152.resnet.'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact in OUT")


def _resnet_run(args: argparse.Namespace) -> int:
    from jml_jax.convert.artifacts import convert_resnet

    blocks = tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None
    r = convert_resnet(args.src, args.out, depth=args.depth, blocks=blocks, kind=args.kind,
                       prefix=args.prefix, overwrite=args.overwrite)
    shape = f"depth {r['depth']}" + (f", blocks {tuple(r['blocks'])}" if r["blocks"] else "")
    print(f"wrote {r['path']} (ResNet {shape}, width {r['width']}, {r['num_params']:,} parameters "
          f"+ batch_stats); use it as model.resnet_init={r['path']}")
    return 0


# ---------------------------------------------------------------------------- jml

def _jml_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True,
                   help="the authors' checkpoint.pth.tar / relation checkpoint, or an .npz of a state dict")
    p.add_argument("--out", required=True, help="output folder (a 'jml' or 'relation' artifact)")
    p.add_argument("--config", required=True,
                   help="experiment config file giving the model's shapes, e.g. configs/twitter2015.py "
                        "or configs/twitter2015.py:minilm; override fields as for launch.train: "
                        "--config.model.bert=tiny (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(config_overrides=True)


def _jml_run(args: argparse.Namespace) -> int:
    from jml_jax.convert.artifacts import convert_original_checkpoint
    from launch.common import load_config

    config = load_config(args.config, args.overrides)
    r = convert_original_checkpoint(args.src, args.out, config, overwrite=args.overwrite)
    n = sum(v.size for v in _leaves(r["variables"]))
    print(f"{r['kind']} checkpoint {args.src}: {r['report'].summary()}")
    if r["report"].dropped:
        shown = ", ".join(r["report"].dropped[:6]) + (" ..." if len(r["report"].dropped) > 6 else "")
        print(f"  known-unused (not used by the forward pass): {shown}")
    if r["kind"] == "relation":
        print(f"wrote {r['path']} ({n:,} values); use it as model.relation_init={r['path']}")
    else:
        print(f"wrote {r['path']} ({n:,} values): the whole model; use it as "
              f"model.original_checkpoint={r['path']}")
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
