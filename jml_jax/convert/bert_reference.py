"""Compare converted BERT parameters with transformers' PyTorch BertModel.

Used by ``launch/convert_checkpoint.py bert`` to print a parity summary after
conversion. Needs torch and transformers (imported inside the function).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from jml_jax.models.bert import BertConfig

SAMPLE_SENTENCES = (
    "RT @user: Great game tonight by LeBron James in Cleveland!",
    "The new camera is amazing, but the battery life is disappointing.",
    "Obama speaks at the White House.",
)


def compare_with_transformers(
    model_dir: str | os.PathLike,
    config: BertConfig,
    params: Mapping[str, Any],
    sentences: Sequence[str] = SAMPLE_SENTENCES,
) -> dict[str, Any]:
    """Runs both models on ``sentences`` and returns the largest differences.

    ``model_dir`` must be loadable by ``transformers.BertModel.from_pretrained``
    (config.json + weights). Sentences are tokenised with its vocab.txt when
    present (lower-cased, as bert-base-uncased), else random ids are used.

    Returns:
      ``{"max_abs_diff_last_hidden": float, "max_abs_diff_pooled": float or
      None, "batch_shape": (B, L), "tokenized": bool}``; differences are over
      real (non-padded) positions.
    """
    import jax.numpy as jnp
    import torch
    import transformers

    from jml_jax.models.bert import BertModel

    model_dir = pathlib.Path(model_dir)
    vocab = model_dir / "vocab.txt"
    if vocab.is_file():
        tok = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
        enc = tok(list(sentences), padding=True, truncation=True,
                  max_length=config.max_position_embeddings, return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        types = enc["token_type_ids"]
    else:
        rng = np.random.default_rng(0)
        length = min(16, config.max_position_embeddings)
        lengths = np.array([length, max(2, length // 2)])
        mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(1, config.vocab_size, mask.shape) * mask
        types = np.zeros_like(ids)
    hf, info = transformers.BertModel.from_pretrained(str(model_dir), output_loading_info=True)
    if info.get("missing_keys"):
        # The reference would run with random tensors: its numbers would mislead.
        raise ValueError(
            f"transformers left tensors of {model_dir} at random init: "
            + ", ".join(sorted(info["missing_keys"]))
        )
    hf.eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types))
    add_pooler = "pooler" in params
    hidden, pooled = BertModel(config, add_pooler=add_pooler).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)
    )
    real = mask.astype(bool)
    diff = np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy())[real].max()
    pooled_diff = None
    if add_pooler and ref.pooler_output is not None:
        pooled_diff = float(np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max())
    return {
        "max_abs_diff_last_hidden": float(diff),
        "max_abs_diff_pooled": pooled_diff,
        "batch_shape": tuple(ids.shape),
        "tokenized": vocab.is_file(),
    }
