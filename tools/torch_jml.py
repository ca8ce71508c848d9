"""The JML model in eager PyTorch, only for the speed comparison of tools/benchmarks.py (python -m launch.benchmark) and the parity tests.

It re-states the original's computation (original-jml-code.md §2-§5) on
transformers' ``BertModel`` and a torchvision-layout ResNet, with the same
shapes and the same work per step as `jml_jax.models.jml.JMLModel`:

    images -> main ResNet grid [B, 49, C] -> align_res -> V [B, 49, D]
    (ids, images) -> frozen relation module (eval, no grad) -> P(image adds)
    V_gate = P(image adds) * V                                      (§2.5)
    ids -> BERT -> H -> imgLa2text(H, V_gate) -> S -> start/end logits   (§3)
    (S, spans) -> batch-packed span pooling -> res2span -> polarity      (§4)

It is not a parity reference (the numbers are never compared with ours) and
it is not part of the library: importing this module imports torch and
transformers, so tools/benchmarks.py imports it inside the function that runs
the torch side, in its own process.
"""

from __future__ import annotations

import math

import torch
import transformers
from torch import nn
from torch.nn import functional as F

from jml_jax.facts import IMAGE_REGIONS, MASK_VALUE


class MultiHeadAttention(nn.Module):
    """§2.1: heads as wide as the model, no biases, 1/sqrt(D) scaling, no mask,
    ``LayerNorm(q + Dropout(fc(heads)))`` with torch's eps 1e-5."""

    def __init__(self, n_head: int, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.n_head, self.d_model = n_head, d_model
        self.w_qs = nn.Linear(d_model, n_head * d_model, bias=False)
        self.w_ks = nn.Linear(d_model, n_head * d_model, bias=False)
        self.w_vs = nn.Linear(d_model, n_head * d_model, bias=False)
        self.fc = nn.Linear(n_head * d_model, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q [B, Lq, D], kv [B, Lk, D] -> [B, Lq, D]."""
        b, lq, d = q.shape
        lk = kv.shape[1]
        h = self.n_head
        qh = self.w_qs(q).view(b, lq, h, d).transpose(1, 2)
        kh = self.w_ks(kv).view(b, lk, h, d).transpose(1, 2)
        vh = self.w_vs(kv).view(b, lk, h, d).transpose(1, 2)
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out = (self.dropout(probs) @ vh).transpose(1, 2).reshape(b, lq, h * d)
        return self.layer_norm(q + self.dropout(self.fc(out)))


# ----------------------------------------------------------------------------- ResNet
# torchvision's ResNet v1.5 (stride on the 3x3 conv), the same attribute names.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ResNetGrid(nn.Module):
    """torchvision ResNet trunk; forward: [B, 3, H, W] -> layer4 grid [B, h*w, C].

    The same attribute names (state_dict keys) as torchvision's ResNet, so
    `jml_jax.convert.resnet` reads it; with ``num_classes`` it has torchvision's
    ``fc`` head too (`logits`).
    """

    def __init__(self, blocks: tuple[int, ...], bottleneck: bool, width: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for s, n in enumerate(blocks, start=1):
            setattr(self, f"layer{s}", self._make_layer(block, width * 2 ** (s - 1), n, 1 if s == 1 else 2))
        self.out_channels = width * 8 * block.expansion
        if num_classes is not None:
            self.fc = nn.Linear(self.out_channels, num_classes)

    def _make_layer(self, block, planes, n, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def feature_map(self, x):
        """[B, 3, H, W] -> the layer4 map [B, C, h, w]."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return x

    def forward(self, x):
        return self.feature_map(x).flatten(2).transpose(1, 2)  # [B, 49, C] for 224x224 (§1.4)

    def logits(self, x):
        """torchvision's classifier output: fc of the spatial mean of the layer4 map."""
        return self.fc(self.feature_map(x).mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- JML


def hf_bert_config(cfg) -> transformers.BertConfig:
    """Our `jml_jax.models.bert.BertConfig` -> transformers' BertConfig."""
    return transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
    )


class Relation(nn.Module):
    """§2.2: own BERT and ResNet, four attention blocks, means, aaali, pair_preject."""

    def __init__(self, bert_cfg, blocks, bottleneck, width, n_head, dropout):
        super().__init__()
        d = bert_cfg.hidden_size
        self.bert = transformers.BertModel(hf_bert_config(bert_cfg), add_pooling_layer=False)
        self.pre_resnet = ResNetGrid(blocks, bottleneck, width)
        self.aling_img_1 = nn.Linear(self.pre_resnet.out_channels, d)
        self.img2txt = MultiHeadAttention(n_head, d, dropout)
        self.txt2img = MultiHeadAttention(n_head, d, dropout)
        self.txt2txt = MultiHeadAttention(n_head, d, dropout)
        self.img2img = MultiHeadAttention(n_head, d, dropout)
        self.aaali = nn.Linear(4 * d, d)
        self.pair_preject = nn.Linear(d, 4)

    def forward(self, ids, mask, images):
        """-> logits [B, 2, 2] (row 0: text represented, row 1: image adds)."""
        img = self.aling_img_1(self.pre_resnet(images))
        txt = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        pooled = torch.cat([
            self.img2txt(img, txt).mean(1), self.txt2img(txt, img).mean(1),
            self.txt2txt(txt, txt).mean(1), self.img2img(img, img).mean(1),
        ], dim=-1)
        return self.pair_preject(self.aaali(torch.tanh(pooled))).view(-1, 2, 2)


class TorchJML(nn.Module):
    """The joint model of §2.5-§4 with a frozen relation module."""

    def __init__(self, bert_cfg, *, resnet_blocks=(3, 8, 36, 3), bottleneck=True, resnet_width=64,
                 num_heads=8, dropout=0.1, use_images=True, num_polarities=4):
        super().__init__()
        d = bert_cfg.hidden_size
        self.use_images = use_images
        self.bert = transformers.BertModel(hf_bert_config(bert_cfg), add_pooling_layer=False)
        if use_images:
            self.resnet = ResNetGrid(resnet_blocks, bottleneck, resnet_width)
            self.align_res = nn.Linear(self.resnet.out_channels, d)
            self.relation = Relation(bert_cfg, resnet_blocks, bottleneck, resnet_width, num_heads, dropout)
            self.relation.requires_grad_(False)  # §2.5: always frozen
        self.imgLa2text = MultiHeadAttention(num_heads, d, dropout)
        self.align_imgLA_and_text = nn.Linear(2 * d, d)
        self.binary_affine = nn.Linear(d, 2)
        self.unary_affine = nn.Linear(d, 1)
        self.dense = nn.Linear(d, d)
        self.res2span = MultiHeadAttention(num_heads, d, dropout)
        self.align_all_1 = nn.Linear(2 * d, 2 * d)
        self.align_all_2 = nn.Linear(2 * d, d)
        self.classifier = nn.Linear(d, num_polarities)
        self.dropout = nn.Dropout(dropout)

    def extract(self, ids, mask, images=None):
        """Mode ``extraction`` (§3): (start [B, L], end [B, L], S [B, L, D], V_gate [B, 49, D])."""
        b = ids.shape[0]
        d = self.align_imgLA_and_text.out_features
        if self.use_images:
            image = self.align_res(self.resnet(images))
            self.relation.eval()  # the original's fix_params() on every forward (§2.5)
            with torch.no_grad():
                p = torch.softmax(self.relation(ids, mask, images).float(), dim=-1)[..., 1]
            image = image * p[:, 1, None, None].to(image.dtype)
        else:
            image = torch.zeros(b, IMAGE_REGIONS, d, device=ids.device)
        text = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        cross = self.imgLa2text(text, image.to(text.dtype))
        seq = self.dropout(self.align_imgLA_and_text(torch.cat([text, cross], dim=-1)))
        logits = self.binary_affine(seq)
        return logits[..., 0], logits[..., 1], seq, image

    def classify(self, seq, image, mask, starts, ends):
        """Mode ``classification`` (§4): polarity logits [B, M, 4] of inclusive spans."""
        b, m = starts.shape
        lengths = mask.sum(1)
        packed = seq[mask.bool()]  # valid tokens of all rows, row after row (§4 step 1)
        offsets = torch.cumsum(lengths, 0) - lengths
        widths = ends - starts + 1
        jr = int(widths.max())
        steps = torch.arange(jr, device=seq.device)
        index = (offsets[:, None, None] + starts[..., None] + steps).clamp(max=packed.shape[0] - 1)
        spans = packed[index]  # [B, M, JR, D]
        scores = self.unary_affine(spans).squeeze(-1).float()
        scores = scores + (steps >= widths[..., None]).float() * MASK_VALUE
        weights = torch.softmax(scores, dim=-1).to(spans.dtype)
        pooled = (weights[..., None] * spans).sum(2)
        u = self.dropout(torch.tanh(self.dense(pooled)))
        z = self.res2span(u, image.to(u.dtype))
        f = self.align_all_2(self.dropout(self.align_all_1(torch.cat([u, z], dim=-1))))
        return self.classifier(f)

    def forward(self, ids, mask, starts, ends, images=None):
        """Mode ``train``: (start, end, polarity logits) on the given spans."""
        start, end, seq, image = self.extract(ids, mask, images)
        return start, end, self.classify(seq, image, mask, starts, ends)


def jml_loss(start, end, polarity, batch) -> torch.Tensor:
    """§5: mean over rows of the gold boundaries' mean log-likelihood (start and
    end averaged) plus the masked polarity cross entropy over the batch."""

    def boundary(logits, gold):
        logp = torch.log_softmax(logits.float(), dim=-1)
        return (-(gold * logp).sum(-1) / gold.sum(-1).clamp(min=1)).mean()

    l_ae = (boundary(start, batch["start_positions"]) + boundary(end, batch["end_positions"])) / 2
    ce = F.cross_entropy(polarity.float().flatten(0, 1), batch["polarity_labels"].flatten(), reduction="none")
    span_mask = batch["span_mask"].flatten().float()
    return l_ae + (ce * span_mask).sum() / span_mask.sum().clamp(min=1)
