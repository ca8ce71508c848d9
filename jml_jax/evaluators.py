"""The evaluators of both stages: a state and a split in, scores and predictions out.

This is the lower layer of evaluation: the tasks (jml_jax/tasks.py) build
these evaluators, and nothing here knows about experiments, checkpoints or
runs; restoring a run and scoring it (training's periodic scores, checkpoint
evaluation, threshold sweeps) is jml_jax/scoring.py.

Joint model (`Evaluator`): jitted extraction -> host decoding -> jitted
classification -> metrics. As the original (§6, §7): the MATE logits of a batch are decoded on the host
into at most 10 spans per sentence, those spans are classified from the stored
token representation S and gated image features, and the predictions are
scored with every metric of jml_jax/metrics.py. MASC is also run on the gold
spans (``masc_gold/*``).

An evaluation split is anything that provides padded batches (with ``mask``
[b] and ``row`` [b], the row into the split's features) and the host-side
features (tokens, words, gold aspects). Outputs are gathered to every process
(`replicated`), so each process decodes the whole global batch and all
processes compute identical metrics.

Relation module (`RelationEvaluator`): a jitted forward over the split ->
`jml_jax.metrics.relation_metrics`.

Both send the devices exactly the task's evaluation inputs (jml_jax/contract.py)
and are traced under the same logical-axis rules as the train step
(`jml_jax.steps.tracing_context`), so the activations are laid out alike.
`validate_eval_setup` checks the selection metric and batch sizes before
training starts, not at the first evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from jml_jax import contract
from jml_jax import decode as decode_lib
from jml_jax import metrics as metrics_lib
from jml_jax.models.jml import JMLModel
from jml_jax.sharding import batch_sharding, global_batch_from_process_local, process_batch_rows, replicated
from jml_jax.steps import make_eval_step, tracing_context

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSplit:
    """One evaluation split.

    Attributes:
      name: 'dev', 'test', ...
      make_iter: () -> iterator of per-process padded batches (dict of NumPy
        with mask [b] (1 = real row) and row [b] (the row's index into the
        split); joint: input_ids, input_mask, span_starts, span_ends,
        span_mask, image?; relation: input_ids, input_mask, labels, image?).
      features: the joint split's host-side FeatureSet (arrays, examples,
        tokens); None for a relation split.
      num_examples: N, the number of real rows (default: len(features.examples)).
      source: the annotation file, named in errors.
      data_counts: what data preparation replaced or cut (data_pipeline
        PreparedSplit.data_counts), reported with the scores.
    """

    name: str
    make_iter: Callable[[], Iterable[dict]]
    features: Any = None
    num_examples: int | None = None
    source: str | None = None
    data_counts: dict | None = None

    def __post_init__(self):
        if self.num_examples is None:
            if self.features is None:
                raise ValueError(f"eval split {self.name!r}: give features or num_examples")
            self.num_examples = len(self.features.examples)


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


class Evaluator:
    """The joint model's two jitted eval functions on a mesh, and their pipeline.

    Per batch, one device call does the extraction (MATE logits, §3) and the
    classification of the gold spans (``masc_gold``, §4); after host decoding
    (§6) a second call classifies the decoded spans. The host reads each
    batch's extraction once (one blocking device-to-host transfer per batch,
    counted in ``transfers``), and only after the next batch's extraction has
    been dispatched, so decoding overlaps the device; the classifications are
    read together at the end (one more transfer per split).

    Args:
      inputs: the names of the task's evaluation inputs (``task.inputs(...,
        train=False)``): exactly these entries of a batch are sent.
      decode_config: the default span decoding (§6); `evaluate` and
        `predict_split` take another one as an argument (threshold sweeps).
      rules: the logical-axis rules the train step is traced with; the eval
        functions are traced under the same ones.
    """

    def __init__(self, model: JMLModel, mesh, state_shardings, decode_config: decode_lib.DecodeConfig, *,
                 inputs: Sequence[str], rules=None):
        self.model = model
        self.mesh = mesh
        self.decode_config = decode_config
        self.inputs = tuple(inputs)
        self.transfers = 0  # device-to-host reads made by predict_split
        rep, bsh = replicated(mesh), batch_sharding(mesh)
        p_sh, s_sh = state_shardings.params, state_shardings.batch_stats

        def extract(params, batch_stats, batch):
            variables = _variables(params, batch_stats)
            extra = {"relation_probs": batch["relation_probs"]} if "relation_probs" in batch else {}
            with tracing_context(mesh, rules):
                out = model.apply(variables, batch["input_ids"], batch["input_mask"], batch.get("image"),
                                  method=JMLModel.extract, **extra)
                gold = model.apply(variables, out["sequence_output"], out["image_features"],
                                   batch["input_mask"], batch["span_starts"], batch["span_ends"],
                                   method=JMLModel.classify)
            host = {"start_logits": out["start_logits"], "end_logits": out["end_logits"],
                    "gold_polarity": gold.argmax(-1).astype(jax.numpy.int32),
                    "mask": batch["mask"], "row": batch["row"]}
            if "relation_probs" in out:
                host["relation_probs"] = out["relation_probs"]
            return host, (out["sequence_output"], out["image_features"])

        self._extract = jax.jit(
            extract, in_shardings=(p_sh, s_sh, bsh), out_shardings=(rep, (bsh, bsh))
        )

        def classify(params, batch_stats, kept, input_mask, starts, ends):
            seq, img = kept
            with tracing_context(mesh, rules):
                return model.apply(
                    _variables(params, batch_stats), seq, img, input_mask, starts, ends,
                    method=JMLModel.classify,
                )

        self._classify = jax.jit(
            classify, in_shardings=(p_sh, s_sh, (bsh, bsh), bsh, bsh, bsh), out_shardings=rep
        )

    def _local_rows(self, array: np.ndarray) -> np.ndarray:
        return array[process_batch_rows(self.mesh, array.shape[0])]

    def _fetch(self, tree):
        """The one way evaluation reads device arrays (counted)."""
        self.transfers += 1
        return jax.device_get(tree)

    def _decode_and_classify(self, state, gbatch, out, split, words_all, decode) -> dict:
        """Reads a batch's extraction, decodes its spans on the host and
        dispatches their classification (not waited for)."""
        host, kept = out
        host = self._fetch(host)
        feats = split.features
        arrays = feats.arrays
        valid = host["mask"].astype(bool)
        rows = host["row"]
        safe_rows = np.where(valid, rows, 0)
        decoded = decode_lib.decode_spans(
            host["start_logits"], host["end_logits"],
            arrays["num_tokens"][safe_rows], arrays["token_to_word"][safe_rows],
            [feats.tokens[r] for r in safe_rows], [words_all[r] for r in safe_rows],
            decode,
        )
        starts = np.where(valid[:, None], decoded.span_starts, 0).astype(np.int32)
        ends = np.where(valid[:, None], decoded.span_ends, 0).astype(np.int32)
        spans = global_batch_from_process_local(
            {"s": self._local_rows(starts), "e": self._local_rows(ends)}, self.mesh
        )
        logits = self._classify(state.params, state.batch_stats, kept, gbatch["input_mask"], spans["s"], spans["e"])
        b_idx = np.arange(len(rows))[:, None]
        scores = host["start_logits"][b_idx, starts] + host["end_logits"][b_idx, ends]
        return {"host": host, "valid": valid, "rows": rows, "decoded": decoded, "starts": starts,
                "ends": ends, "scores": scores, "logits": logits}

    def predict_split(self, state, split: EvalSplit,
                      decode: decode_lib.DecodeConfig | None = None) -> dict[str, np.ndarray]:
        """Runs the model over a split; returns per-row arrays in row order:
        span_starts/ends/mask [N, 20], polarity [N, 20], polarity_probs
        [N, 20, 4], span_scores [N, 20], gold_polarity [N, 20],
        relation_probs [N, 2] (when images are on), texts (list).
        ``decode``: the span decoding (default: the evaluator's own)."""
        decode = self.decode_config if decode is None else decode
        feats = split.features
        n = len(feats.examples)
        words_all = [[w.lower() for w in ex.words] for ex in feats.examples]
        done, pending = [], None
        batches = split.make_iter()
        try:
            for batch in batches:
                gbatch = global_batch_from_process_local(
                    contract.take(batch, self.inputs, "the joint model's evaluation"), self.mesh)
                out = self._extract(state.params, state.batch_stats, gbatch)  # dispatched, not waited for
                if pending is not None:
                    done.append(self._decode_and_classify(state, *pending, split, words_all, decode))
                pending = (gbatch, out)
        finally:
            if hasattr(batches, "close"):
                batches.close()
        if pending is not None:
            done.append(self._decode_and_classify(state, *pending, split, words_all, decode))
        all_logits = self._fetch([d.pop("logits") for d in done])
        m = decode.n_best_size
        res = {
            "span_starts": np.zeros((n, m), np.int32), "span_ends": np.zeros((n, m), np.int32),
            "span_mask": np.zeros((n, m), np.int32), "polarity": np.zeros((n, m), np.int32),
            "polarity_probs": np.zeros((n, m, 4), np.float32), "span_scores": np.zeros((n, m), np.float32),
            "gold_polarity": np.zeros(feats.arrays["span_mask"].shape, np.int32),
        }
        texts: list[list[str]] = [[] for _ in range(n)]
        rel = np.zeros((n, 2), np.float32)
        seen = np.zeros(n, bool)
        has_relation = False
        for d, logits in zip(done, all_logits):
            host, rows, valid = d["host"], d["rows"], d["valid"]
            probs = _softmax(logits)
            for i in np.nonzero(valid)[0]:
                r = rows[i]
                seen[r] = True
                res["span_starts"][r], res["span_ends"][r] = d["starts"][i], d["ends"][i]
                res["span_mask"][r] = d["decoded"].span_mask[i]
                res["polarity"][r] = logits[i].argmax(-1)
                res["polarity_probs"][r] = probs[i]
                res["span_scores"][r] = d["scores"][i]
                res["gold_polarity"][r] = host["gold_polarity"][i]
                texts[r] = d["decoded"].texts[i]
                if "relation_probs" in host:
                    rel[r] = host["relation_probs"][i]
                    has_relation = True
        if not seen.all():
            raise RuntimeError(f"split {split.name!r}: {int((~seen).sum())} of {n} rows were never evaluated")
        res["texts"] = texts
        if has_relation:
            res["relation_probs"] = rel
        return res

    def evaluate(self, state, split: EvalSplit,
                 decode: decode_lib.DecodeConfig | None = None) -> tuple[dict[str, float], dict]:
        """Scores one split: (metrics, raw predictions of `predict_split`),
        decoded with ``decode`` (default: the evaluator's own)."""
        pred = self.predict_split(state, split, decode)
        feats = split.features
        words = [[w.lower() for w in ex.words] for ex in feats.examples]
        gold = [[(a.start, a.end, a.polarity) for a in ex.aspects] for ex in feats.examples]
        gold_pol = _gold_span_predictions(feats, pred["gold_polarity"])
        scores = metrics_lib.evaluate_predictions(
            pred["span_starts"], pred["span_ends"], pred["span_mask"], pred["texts"],
            pred["polarity"], feats.arrays["token_to_word"], gold, words,
            gold_span_polarity_ids=gold_pol,
        )
        if "relation_probs" in pred:
            scores["relation/text_represented_frac"] = float((pred["relation_probs"][:, 0] > 0.5).mean())
            scores["relation/image_adds_frac"] = float((pred["relation_probs"][:, 1] > 0.5).mean())
        return scores, pred


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _gold_span_predictions(feats, gold_polarity: np.ndarray) -> list[list[int]]:
    """Per sentence, the polarity predicted for each gold aspect given its span.

    MASC trains on text-deduplicated gold spans (§5.2); an aspect whose text
    repeats an earlier one in the sentence takes that span's prediction.
    """
    out = []
    for r, ex in enumerate(feats.examples):
        words = [w.lower() for w in ex.words]
        first: dict[str, int] = {}
        preds = []
        slot = 0
        for a in ex.aspects:
            text = " ".join(words[a.start : a.end + 1])
            if text not in first:
                first[text] = slot
                slot += 1
            preds.append(int(gold_polarity[r, min(first[text], gold_polarity.shape[1] - 1)]))
        out.append(preds)
    return out


def write_predictions(path: str | pathlib.Path, split: EvalSplit, pred: dict) -> None:
    """JSON lines: one sentence per line with predicted and gold aspects."""
    from jml_jax.metrics import POLARITY_NAMES

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = split.features
    with path.open("w", encoding="utf-8") as f:
        for r, ex in enumerate(feats.examples):
            t2w = feats.arrays["token_to_word"][r]
            aspects = []
            for j in np.nonzero(pred["span_mask"][r])[0]:
                s, e = int(pred["span_starts"][r, j]), int(pred["span_ends"][r, j])
                pol = int(pred["polarity"][r, j])
                aspects.append({
                    "text": pred["texts"][r][len(aspects)] if len(aspects) < len(pred["texts"][r]) else "",
                    "word_start": int(t2w[s]), "word_end": int(t2w[e]),
                    "polarity": POLARITY_NAMES[pol],
                    "span_score": float(pred["span_scores"][r, j]),
                    "polarity_prob": float(pred["polarity_probs"][r, j, pol]),
                })
            record = {
                "example_id": ex.example_id, "image_id": ex.image_id, "words": list(ex.words),
                "predicted": aspects,
                "gold": [{"word_start": a.start, "word_end": a.end, "polarity": a.polarity,
                          "text": " ".join(w.lower() for w in ex.words[a.start : a.end + 1])} for a in ex.aspects],
            }
            if "relation_probs" in pred:
                record["p_text_represented"], record["p_image_adds"] = map(float, pred["relation_probs"][r])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- relation module


class RelationEvaluator:
    """Jitted forward of the relation module over a split -> `metrics.relation_metrics`."""

    def __init__(self, task, mesh, state_shardings, rules=None):
        self.mesh = mesh
        model = task.model
        self.inputs = tuple(task.inputs(1, train=False))  # what a batch sends (jml_jax/contract.py)

        def forward(params, batch_stats, batch):
            variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
            logits = model.apply(variables, batch["input_ids"], batch["input_mask"], task.images(batch),
                                 deterministic=True, train=False)
            return {"logits": logits, "labels": batch["labels"], "mask": batch["mask"], "row": batch["row"]}

        self._step = make_eval_step(forward, state_shardings, batch_sharding(mesh), rules=rules)

    def predict(self, state, split: EvalSplit) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, 2, 2], labels [N, 2]) in row order; every row exactly once."""
        n = split.num_examples
        logits = np.zeros((n, 2, 2), np.float32)
        labels = np.zeros((n, 2), np.int32)
        seen = np.zeros(n, bool)
        batches = split.make_iter()
        try:
            for batch in batches:
                out = jax.device_get(self._step(state, global_batch_from_process_local(
                    contract.take(batch, self.inputs, "the relation module's evaluation"), self.mesh)))
                real = out["mask"] > 0
                rows = out["row"][real]
                logits[rows], labels[rows] = out["logits"][real], out["labels"][real]
                seen[rows] = True
        finally:
            if hasattr(batches, "close"):
                batches.close()
        if not seen.all():
            raise RuntimeError(f"split {split.name!r}: {int((~seen).sum())} of {n} rows were never evaluated")
        return logits, labels

    def evaluate(self, state, split: EvalSplit, decode=None) -> tuple[dict[str, float], dict]:
        """Scores one split: (`metrics.relation_metrics`, raw logits and labels)."""
        if decode is not None:
            raise ValueError("the relation module decodes no spans: a decode setting does not apply")
        logits, labels = self.predict(state, split)
        return metrics_lib.relation_metrics(logits, labels), {"logits": logits, "labels": labels}


# --------------------------------------------------------------------------- set-up checks


def decode_config_from(config) -> decode_lib.DecodeConfig:
    d = config.decode
    return decode_lib.DecodeConfig(
        n_best_size=d.n_best_size, max_answer_length=d.max_answer_length,
        logit_threshold=d.logit_threshold, max_spans=d.max_spans,
    )


def joint_metric_names() -> list[str]:
    """Every metric `Evaluator.evaluate` reports (computed from a one-sentence
    case, so the list cannot drift from the metric code)."""
    names = metrics_lib.evaluate_predictions(
        np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32), [[]],
        np.zeros((1, 1), np.int32), np.zeros((1, 2), np.int32), [[(0, 0, "positive")]], [["w"]],
        gold_span_polarity_ids=[[0]])
    return sorted({**names, "relation/text_represented_frac": 0.0, "relation/image_adds_frac": 0.0})


def relation_metric_names() -> list[str]:
    """Every metric `RelationEvaluator.evaluate` reports."""
    return sorted(metrics_lib.relation_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2), int)))


def validate_eval_setup(config, task, eval_splits: Mapping[str, EvalSplit], mesh) -> None:
    """Fails at start-up, naming the config field, on what would otherwise
    fail only at the first evaluation (after training): an unknown select
    split or metric, an eval batch that does not divide over the devices, a
    gradient accumulation that does not divide the batch."""
    select_split = config.get("select_split")
    if select_split:
        if select_split not in eval_splits:
            raise ValueError(f"select_split={select_split!r} is not among the eval splits {sorted(eval_splits)} "
                             f"(config.eval_splits)")
        valid = task.metric_names()
        if config.select_metric not in valid:
            raise ValueError(f"select_metric={config.select_metric!r} is not a metric of the {task.name} task; "
                             f"valid: {valid}")
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    for field in ("batch_size", "eval_batch_size"):
        size = int(config[field])
        if size % devices:
            raise ValueError(f"{field}={size} does not divide over the mesh's {devices} batch devices "
                             f"('data' x 'fsdp' of mesh_shape={tuple(config.mesh_shape)})")
    accum = int(config.optimizer.get("grad_accum_steps", 1))
    if accum < 1 or config.batch_size % accum:
        raise ValueError(f"optimizer.grad_accum_steps={accum} must be >= 1 and divide batch_size={config.batch_size}")
    for name, split in eval_splits.items():
        if split.num_examples < 1:
            raise ValueError(f"eval split {name!r} is empty" + (f" ({split.source})" if split.source else ""))
