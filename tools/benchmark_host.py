"""Host-side throughput: span decoding (§6) and the training iterator.

What `python -m launch.benchmark decode` and `... data` (tools/benchmarks.py)
time; neither needs an accelerator. The library and the data pipeline hold no
benchmark code: these functions drive their public entry points
(`jml_jax.decode.decode_spans`, `data_pipeline.pipeline.make_train_iter`).
"""

from __future__ import annotations

import time

import numpy as np

from jml_jax.decode import DecodeConfig, decode_spans
from jml_jax.text_projection import clear_projection_cache


def _realistic_batch(n: int, seed: int, length: int = 96):
    """Random sentences and logits in the style of the parity fixture.

    Sentences of 6-30 words drawn Zipf-like from 5,000 random word types
    (about a third split into two WordPieces); logits are N(0, 2) noise plus
    1-2 boosted spans (+U(6, 9) on start and end), so most rows have a
    handful of candidates above the threshold.
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(5000)]
    vocab[:6] = ["rt", "@", ":", "#", "the", "."]
    start = rng.normal(0.0, 2.0, (n, length))
    end = rng.normal(0.0, 2.0, (n, length))
    t2w = np.full((n, length), -1, np.int64)
    n_tokens = np.zeros(n, np.int64)
    tokens, words = [], []
    for b in range(n):
        n_words = int(rng.integers(6, 31))
        ws = [vocab[min(int(i), len(vocab)) - 1] for i in rng.zipf(1.3, n_words)]
        toks = ["[CLS]"]
        for wi, w in enumerate(ws):
            pieces = [w] if len(w) < 5 or rng.random() < 0.5 else [w[:3], "##" + w[3:]]
            for p in pieces:
                if len(toks) >= length - 1:
                    break
                t2w[b, len(toks)] = wi
                toks.append(p)
        toks.append("[SEP]")
        n_tokens[b] = len(toks)
        tokens.append(toks)
        words.append(ws)
        for _ in range(int(rng.integers(1, 3))):
            s = int(rng.integers(1, len(toks) - 1))
            e = min(s + int(rng.integers(0, 3)), len(toks) - 2)
            start[b, s] += rng.uniform(6, 9)
            end[b, e] += rng.uniform(6, 9)
    return start.astype(np.float32), end.astype(np.float32), n_tokens, t2w, tokens, words


def benchmark_decode(
    n: int = 20_000, seed: int = 0, batch_size: int = 256, config: DecodeConfig = DecodeConfig()
) -> float:
    """Sentences per CPU-second of :func:`decode_spans` on realistic random logits.

    Builds ``n`` random sentences (see ``_realistic_batch``), then times
    decoding them in batches of ``batch_size`` on one core (process CPU time,
    so other load on the machine does not count; building is not timed).
    The projection cache starts empty, so first-seen words pay their
    tokenisation as in a real evaluation.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    data = _realistic_batch(n, seed)
    clear_projection_cache()
    t0 = time.process_time()
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        decode_spans(
            data[0][lo:hi], data[1][lo:hi], data[2][lo:hi], data[3][lo:hi],
            data[4][lo:hi], data[5][lo:hi], config,
        )
    return n / (time.process_time() - t0)


def benchmark_train_iter(data_config, split_data, *, global_batch_size: int = 32,
                         num_batches: int = 300) -> dict[str, float]:
    """Examples/s of batch assembly (one process), after one warm-up batch.

    ``split_data``: a data_pipeline PreparedSplit (`pipeline.load_split`)."""
    from data_pipeline.pipeline import make_train_iter

    it = make_train_iter(data_config, split_data, global_batch_size=global_batch_size,
                         process_index=0, process_count=1, seed=0)
    next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    seconds = time.perf_counter() - start
    it.close()
    return {"examples_per_s": num_batches * global_batch_size / seconds, "batches": num_batches,
            "seconds": seconds, "global_batch_size": global_batch_size}
