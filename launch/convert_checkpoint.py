"""Convert PyTorch checkpoints to Orbax checkpoints of jml_jax parameters.

    python -m launch.convert_checkpoint bert --src DIR_OR_FILE --out OUT_DIR \
        [--config CONFIG_JSON_OR_PRESET] [--prefix bert.] [--no-pooler] [--overwrite]

Writes ``OUT_DIR/params`` (Orbax StandardCheckpointer, the ``params``
collection) and ``OUT_DIR/bert_config.json``. When torch and transformers are
importable and ``--src`` is a folder transformers can load, prints the largest
difference between our Flax BERT and ``transformers.BertModel`` on a few
sample sentences.

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


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


# Subcommands: name -> (add_arguments, run). `resnet` and `jml` are added here.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "bert": (_bert_args, _bert_run),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name)
        add_arguments(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
