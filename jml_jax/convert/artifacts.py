"""Source weights -> saved artifacts: what `launch.convert_checkpoint` runs.

The converting side of the weights: each function reads a source checkpoint
(an HF BERT, a torchvision / timm / HF ResNet, the authors' checkpoint),
converts it strictly and writes an artifact (`jml_jax.weights.save_artifact`)
that the configs then read without PyTorch. The reading side,
`jml_jax.weights`, imports nothing from here, so `jml_jax.model_factory` (which
reads artifacts) and this module (which builds the model it converts into) form
no import circle.
"""

from __future__ import annotations

import logging
import pathlib

import jax

from jml_jax import model_factory
from jml_jax.weights import save_artifact

log = logging.getLogger(__name__)


def convert_bert(src, out, *, bert=None, add_pooler: bool = True, prefix: str | None = None,
                 overwrite: bool = False) -> dict:
    """An HF BERT folder / .safetensors / .bin -> a 'bert' artifact, with the
    source's vocab.txt beside it (what the configs' data.vocab_file reads).

    Returns {'path', 'config' (BertConfig), 'params' (NumPy), 'vocab' (bool)}.
    """
    from jml_jax.convert.bert import load_bert_checkpoint

    config, params = load_bert_checkpoint(src, bert, add_pooler=add_pooler, prefix=prefix)
    src_dir = pathlib.Path(src) if pathlib.Path(src).is_dir() else pathlib.Path(src).parent
    vocab = src_dir / "vocab.txt"
    if not vocab.is_file():
        log.warning("no vocab.txt beside %s: give the tokenizer's vocabulary as data.vocab_file", src)
    path = save_artifact(out, "bert", {"params": params}, overwrite=overwrite,
                         vocab_file=vocab if vocab.is_file() else None, bert_config=config.to_dict(),
                         source=str(src))
    return {"path": path, "config": config, "params": params, "vocab": vocab.is_file()}


def convert_resnet(src, out, *, depth=None, blocks=None, kind: str = "auto", prefix: str = "",
                   overwrite: bool = False) -> dict:
    """A torchvision / timm / HF ResNet -> a 'resnet' artifact (no ``fc``: JML reads the grid).

    Returns {'path', 'depth', 'blocks', 'width', 'num_params', 'variables'}.
    """
    from jml_jax.convert.resnet import load_resnet_checkpoint

    module, variables = load_resnet_checkpoint(
        src, depth, tuple(blocks) if blocks else None, kind=kind, prefix=prefix, include_fc=False)
    blocks_out = list(module.blocks) if module.blocks else None
    path = save_artifact(out, "resnet", variables, overwrite=overwrite, depth=module.depth,
                         blocks=blocks_out, width=module.width, source=str(src))
    num_params = sum(v.size for v in jax.tree.leaves(variables["params"]))
    return {"path": path, "depth": module.depth, "blocks": module.blocks, "width": module.width,
            "num_params": num_params, "variables": variables}


def convert_original_checkpoint(src, out, config, *, overwrite: bool = False) -> dict:
    """The authors' joint checkpoint -> a 'jml' artifact, or their relation
    checkpoint (``model_rel``) -> a 'relation' artifact, strictly checked
    against the model that ``config`` builds.

    Returns {'kind', 'path', 'report' (ConversionReport), 'variables'}.
    """
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
    else:
        variables, report = original.convert_original(state, model.config, abstract, source=str(src))
    path = save_artifact(out, "relation" if kind == "relation" else "jml", variables,
                         overwrite=overwrite, source=str(src))
    return {"kind": kind, "path": path, "report": report, "variables": variables}
