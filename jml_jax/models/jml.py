"""The joint JML model: relation-gated image features feeding MATE and MASC.

Data flow of one forward (original-jml-code.md §2.5, §3, §4, §13)::

    images -> main ResNet grid [B,49,2048] -> align_res -> V [B,49,D]
    (ids, images) -> frozen relation module -> p = [P(R), P(V)]      (stop_gradient)
        (or p read from the batch: ``relation_inputs='batch'``, see JMLConfig)
    V_gate = gate(P(V)) * V          (align_res bias scaled too, §2.5)
    ids -> main BERT -> H [B,L,D] -> MateHead(H, V_gate) -> start, end, S
    (S, spans) -> MascHead(S, V_gate) -> polarity logits [B,M,4]

Top-level parameter tree: ``bert``, ``resnet`` (main ResNet, with
``batch_stats``), ``align_res``, ``mate``, ``masc``, ``relation`` (absent with
``relation_inputs='batch'``). The original's never-run modules (``text2span``, ``img_label_emb``, ResNet ``fc``)
and the discarded BERT poolers have no parameters here; the converter reports
them (jml_jax/convert/original.py).

Three entry points, all called through ``model.apply(..., method=...)``:
``__call__`` (training: both heads on gold spans), ``extract`` (MATE logits
plus the tensors MASC needs) and ``classify`` (MASC on given spans), matching
the original's modes ``train``, ``extraction`` and ``classification``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jml_jax.axes import EMBED, IMG_EMBED
from jml_jax.facts import GRID_CHANNELS, IMAGE_MEAN, IMAGE_REGIONS, IMAGE_STD  # noqa: F401 (re-exported)
from jml_jax.models import layers
from jml_jax.models.bert import BertConfig, BertModel
from jml_jax.models.heads import MascHead, MateHead
from jml_jax.models.relation import GATES, RelationModule, gate_value, relation_probabilities
from jml_jax.models.resnet import ResNet
from jml_jax.models.spans import PACKINGS

RELATION_INPUTS = ("module", "batch")


@dataclasses.dataclass(frozen=True)
class JMLConfig:
    """Everything that shapes the joint model. Defaults reproduce the original.

    Switches (paper Table 7 ablations and fixes):
      relation_gate: 'soft' (original), 'hard', or 'none' (without relation).
      mate_relation_gate / masc_relation_gate: per-head override of
        relation_gate (None = relation_gate): 'none' for one head is paper
        Table 7's "w/o Relation MATE" / "w/o Relation MASC" (that head sees the
        ungated grid, the other keeps the gate). The original feeds both heads
        the same gated tensor (§2.5, §10.5).
      mate_vision / masc_vision: False feeds that head zero image features
        (without vision for MATE / MASC).
      use_images: False = text-only: no ResNets and no relation module run;
        both heads see zero image features.
      mask_attention: fix: text padding masked as attention keys and in the
        relation module's means (the original masks nothing).
      span_packing: 'batch' (original, bit-faithful) or 'row' (identical for
        spans inside their row; shards over the batch). See models/spans.py.
      train_main_resnet: the main ResNet is fine-tuned with BatchNorm in
        training mode (original); False freezes it (eval BN, no gradient).
      main_resnet_bn_updates: momentum updates of the main ResNet's BatchNorm
        running statistics per training mini-batch (per group with
        ``groups``). 1 by default; the original updates them twice, once in
        its extraction and once in its train forward (§5.4, §10.8), which is 2.
      relation_inputs: where P(text represented), P(image adds) come from.
        'module' (default): the model holds the frozen relation module
        (``relation`` subtree) and runs it on every call. 'batch': the model
        has no relation module and reads ``relation_probs`` [B, 2] given to
        its entry points, the frozen module's outputs computed once per
        example beforehand (jml_jax/relation_cache.py); the gate math is the
        same (§2.5).
      relation_pad_group: stage one only (`build_relation_model`;
        the joint model's own relation module ignores it and sees text padded
        to L, §2.5): N > 0 gives the relation module the original's TRC text
        padding, to each batch of N rows' longest tweet, unmasked (§2.3,
        §10.6; `RelationModule.pad_group`); 0 pads to L.
    """

    bert: BertConfig
    relation_bert: BertConfig | None = None
    resnet_depth: int = 152
    resnet_blocks: tuple[int, ...] | None = None
    resnet_width: int = 64
    num_heads: int = 8
    dropout_rate: float = 0.1
    num_polarities: int = 4
    relation_gate: str = "soft"
    mate_relation_gate: str | None = None
    masc_relation_gate: str | None = None
    mate_vision: bool = True
    masc_vision: bool = True
    use_images: bool = True
    mask_attention: bool = False
    span_packing: str = "batch"
    train_main_resnet: bool = True
    main_resnet_bn_updates: int = 1
    relation_inputs: str = "module"
    relation_pad_group: int = 0
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD
    dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        if self.relation_gate not in GATES:
            raise ValueError(f"unknown relation_gate {self.relation_gate!r}; valid: {GATES}")
        for name in ("mate_relation_gate", "masc_relation_gate"):
            value = getattr(self, name)
            if value is not None and value not in GATES:
                raise ValueError(f"unknown {name} {value!r}; valid: {GATES} or None (= relation_gate)")
        if self.span_packing not in PACKINGS:
            raise ValueError(f"unknown span_packing {self.span_packing!r}; valid: {PACKINGS}")
        if self.main_resnet_bn_updates < 1:
            raise ValueError(
                f"main_resnet_bn_updates must be >= 1, got {self.main_resnet_bn_updates}"
            )
        if self.relation_inputs not in RELATION_INPUTS:
            raise ValueError(f"unknown relation_inputs {self.relation_inputs!r}; valid: {RELATION_INPUTS}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def head_gates(self) -> tuple[str, str]:
        """(MATE's gate, MASC's gate) after the per-head overrides."""
        return (self.mate_relation_gate or self.relation_gate,
                self.masc_relation_gate or self.relation_gate)

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @property
    def relation_bert_config(self) -> BertConfig:
        return self.relation_bert or self.bert


def build_relation_model(jml: JMLConfig, *, use_images: bool | None = None,
                         pad_group: int | None = None) -> RelationModule:
    """The relation module of ``jml``: the one builder, used by `JMLModel.setup`
    (its ``relation`` subtree, §2.5) and by stage one (jml_jax/tasks.py
    RelationTask, §2.2-§2.4), so stage one's weights drop into the joint model.

    ``use_images`` (default ``jml.use_images``) False gives the text-only
    module (zero image grid, no ``pre_resnet``). ``pad_group`` (default
    ``jml.relation_pad_group``): the joint model passes 0, it feeds its module
    text padded to L (§2.5).
    """
    return RelationModule(
        bert=jml.relation_bert_config,
        resnet_depth=jml.resnet_depth,
        resnet_blocks=jml.resnet_blocks,
        resnet_width=jml.resnet_width,
        num_heads=jml.num_heads,
        dropout_rate=jml.dropout_rate,
        mask_text=jml.mask_attention,
        pad_group=jml.relation_pad_group if pad_group is None else pad_group,
        use_images=jml.use_images if use_images is None else use_images,
        dtype=jml.compute_dtype,
        remat=jml.remat,
    )


def normalize_images(images, mean=IMAGE_MEAN, std=IMAGE_STD):
    """uint8 [B, H, W, 3] -> float32 ``(x/255 - mean)/std``; float input is
    taken as already normalised and returned unchanged (§1.4)."""
    if images.dtype != jnp.uint8:
        return images.astype(jnp.float32)
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class JMLModel(nn.Module):
    """The joint model of §2.5-§4. See the module docstring for the entry points."""

    config: JMLConfig

    def setup(self):
        c = self.config
        dt = c.compute_dtype
        self.bert = BertModel(c.bert, dtype=dt, remat=c.remat, add_pooler=False)
        if c.use_images:
            self.resnet = ResNet(
                depth=c.resnet_depth,
                blocks=c.resnet_blocks,
                width=c.resnet_width,
                dtype=dt,
                frozen=not c.train_main_resnet,
                bn_updates=c.main_resnet_bn_updates,
            )
        if c.use_images and c.relation_inputs == "module":
            self.relation = build_relation_model(c, pad_group=0)
        self.align_res = layers.dense(c.bert.hidden_size, (IMG_EMBED, EMBED), "align_res", dt)
        self.mate = MateHead(c.num_heads, c.dropout_rate, dt)
        self.masc = MascHead(c.num_heads, c.num_polarities, c.dropout_rate, c.span_packing, dt)

    def gated_image(self, input_ids, input_mask, images, *, train: bool = False, groups: int = 1,
                    relation_probs=None):
        """Main image grid, projected and gated (§2.5).

        ``groups``: in training, the main ResNet's BatchNorm works per group of
        rows (see `__call__`). Everything else here is per row: the relation
        module runs frozen in eval mode (BatchNorm on running statistics), so
        its gate of a row does not depend on the other rows.

        ``relation_probs`` [B, 2]: with ``relation_inputs='batch'`` (required
        then), the frozen module's outputs computed beforehand on the same
        pixels (jml_jax/relation_cache.py); with 'module' it must be None.

        Returns:
          (MATE's V_gate [B, 49, D], MASC's V_gate [B, 49, D], relation_probs
          [B, 2] or None when text-only). The two grids are one array unless
          ``mate_relation_gate`` / ``masc_relation_gate`` differ.
          The relation module always runs frozen: eval mode, no dropout,
          ``stop_gradient`` on its output.
        """
        c = self.config
        batch = input_ids.shape[0]
        if not c.use_images:
            zeros = jnp.zeros((batch, IMAGE_REGIONS, c.bert.hidden_size), c.compute_dtype)
            return zeros, zeros, None
        pixels = normalize_images(images, c.image_mean, c.image_std).astype(c.compute_dtype)
        grid, _ = self.resnet(pixels, train=train and c.train_main_resnet, groups=groups)
        self.sow("intermediates", "main_resnet_grid", grid)
        projected = self.align_res(grid)
        self.sow("intermediates", "align_res_out", projected)
        if c.relation_inputs == "batch":
            if relation_probs is None and self.is_initializing():
                relation_probs = jnp.zeros((batch, 2), jnp.float32)  # no parameters depend on them
            if relation_probs is None:
                raise ValueError(
                    "relation_inputs='batch': the model has no relation module and needs relation_probs "
                    "[B, 2] (the batch key 'relation_probs', added by JointTask.prepare_inputs)")
            if tuple(relation_probs.shape) != (batch, 2):
                raise ValueError(f"relation_probs has shape {relation_probs.shape}, expected {(batch, 2)}")
            probs = relation_probs.astype(jnp.float32)
        else:
            if relation_probs is not None:
                raise ValueError("relation_probs given, but relation_inputs='module' computes them itself")
            # §2.5: the frozen module sees the same normalised crop as the main ResNet.
            logits = self.relation(input_ids, input_mask, pixels, deterministic=True, train=False)
            probs = relation_probabilities(logits)
        probs = jax.lax.stop_gradient(probs)
        # One gate per head (§2.5: the original's is the same for both).
        mate_gate, masc_gate = c.head_gates
        grids = {g: projected * gate_value(probs[:, 1], g)[:, None, None].astype(projected.dtype)
                 for g in dict.fromkeys((mate_gate, masc_gate))}
        return grids[mate_gate], grids[masc_gate], probs

    def _head_images(self, gated):
        c = self.config
        mate_img = gated if c.mate_vision else jnp.zeros_like(gated)
        masc_img = gated if c.masc_vision else jnp.zeros_like(gated)
        return mate_img, masc_img

    def extract(self, input_ids, input_mask, images=None, *, deterministic: bool = True, train: bool = False,
                groups: int = 1, relation_probs=None):
        """Mode ``extraction`` (§3): MATE logits and what MASC needs later.

        ``groups``: see `__call__` (BERT and the MATE head are per row).
        ``relation_probs``: see `gated_image`.

        Returns a dict: start_logits, end_logits [B, L]; sequence_output S
        [B, L, D]; image_features (the gated grid MASC reads) [B, 49, D];
        relation_probs [B, 2] (absent when text-only; present in both
        relation_inputs modes).
        """
        mate_grid, gated, probs = self.gated_image(input_ids, input_mask, images, train=train, groups=groups,
                                                     relation_probs=relation_probs)
        text, _ = self.bert(input_ids, input_mask, jnp.zeros_like(input_ids), deterministic=deterministic)
        self.sow("intermediates", "main_bert_last", text)
        mate_img, _ = self._head_images(mate_grid)
        start, end, seq = self.mate(text, mate_img, deterministic=deterministic)
        out = {"start_logits": start, "end_logits": end, "sequence_output": seq, "image_features": gated}
        if probs is not None:
            out["relation_probs"] = probs
        return out

    def classify(self, sequence_output, image_features, input_mask, span_starts, span_ends, *,
                 deterministic: bool = True, groups: int = 1):
        """Mode ``classification`` (§4): polarity logits [B, M, 4] of spans,
        from the stored S and gated image features of `extract`; with
        ``groups``, 'batch' span packing packs each group on its own."""
        _, masc_img = self._head_images(image_features)
        return self.masc(sequence_output, input_mask, span_starts, span_ends, masc_img,
                         deterministic=deterministic, groups=groups)

    def __call__(self, input_ids, input_mask, span_starts, span_ends, images=None, *, deterministic: bool = True,
                 train: bool = False, groups: int = 1, relation_probs=None):
        """Mode ``train``: both heads, MASC on the given (gold) spans.

        ``groups``: the batch is ``groups`` contiguous groups of B/groups rows,
        each one of the original's mini-batches (§5.4): the main ResNet's
        train-mode BatchNorm normalises each group with its own statistics and
        updates the running ones group after group, and 'batch' span packing
        packs each group on its own, so the outputs and statistics equal
        ``groups`` calls on the groups in order. Every other layer is per row.
        Used by one-pass gradient accumulation (`jml_jax.steps`).
        ``relation_probs``: see `gated_image`.

        Returns the dict of `extract` plus polarity_logits [B, M, 4].
        """
        out = self.extract(input_ids, input_mask, images, deterministic=deterministic, train=train,
                           groups=groups, relation_probs=relation_probs)
        out["polarity_logits"] = self.classify(
            out["sequence_output"], out["image_features"], input_mask, span_starts, span_ends,
            deterministic=deterministic, groups=groups,
        )
        return out
