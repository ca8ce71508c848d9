"""Prepared splits and the per-process NumPy batch iterators.

    split = load_split(data_config, 'train')            # once per process
    train = make_train_iter(data_config, split, global_batch_size=32,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), seed=0,
                            start_step=restored_step)
    batch = next(train)      # dict of NumPy arrays, leading dim 32 // process_count

Every process loads the whole split (the data sets are small: ~2k tweets) and
takes its own contiguous slice of each global batch, so the stream is a pure
function of (seed, step) and identical on every process layout.

Train stream: epoch e visits the examples in the order
`permutation(seed, e)`; step s is global batch `s % steps_per_epoch` of epoch
`s // steps_per_epoch`. The last partial global batch of every epoch is
DROPPED (as in most JAX trainers: every step has the same shape, so one
compiled step function): `examples_per_epoch = steps_per_epoch *
global_batch_size` examples are seen per epoch, and the dropped ones differ
from epoch to epoch because the permutation does. Both counts are logged and
are attributes of the iterator.

Eval stream: one in-order pass padded to whole global batches; padding rows
repeat row 0's content and carry mask 0, so across processes every example is
seen exactly once. 'row' gives each batch row's index into the split's
examples/FeatureSet for host-side decoding. In 'random' crop mode evaluation
uses the centre crop.

Throughput: batches are gathered from in-memory arrays (fixed crops: ~40k
examples/s at batch 32 on one busy CPU core; `python -m data_pipeline.pipeline
--benchmark --prepared_dir /tmp/prepared` measures it on the bundled sample).

Nothing here imports JAX. TensorFlow is used only to decode images and to read
TFDS builds.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from data_pipeline import images as images_lib
from data_pipeline.config import validate_data_config
from data_pipeline.prefetch import Prefetch
from data_pipeline.prepare import (PreparedSplit, attach_images, prepare_in_memory,  # noqa: F401 (re-exported)
                                   read_split_examples, text_features)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- loading

logger = logging.getLogger(__name__)


def load_split(data_config, split: str) -> PreparedSplit:
    """One split, from the TFDS build in data.prepared_dir when that is built,
    else prepared in memory (a warning names the way to build it).

    Raises:
      PreparedDataMismatchError: the build was made with another vocab,
        sequence length, image settings or annotation files.
    """
    validate_data_config(data_config)
    if data_config.prepared_dir is not None:
        from data_pipeline import builders

        if builders.is_built(data_config):
            return builders.load_prepared(data_config, split)
        logger.warning(
            "no TFDS build of %s in %s; preparing %s in memory (build it once with "
            "`python -m data_pipeline.pipeline --build ...` or builders.build(data_config))",
            builders.builder_config_name(data_config),
            data_config.prepared_dir,
            split,
        )
    return prepare_in_memory(data_config, split)



# --------------------------------------------------------------------------- batches


def _assemble(data_config, split: PreparedSplit, rows: np.ndarray, crop_fn: Callable | None) -> dict:
    """Batch of the given example rows: every feature array, 'image_ok' and
    'image' [b, s, s, 3] (uint8, or float32 normalised) when images are on."""
    batch = {k: v[rows] for k, v in split.arrays.items()}
    batch["image_ok"] = split.image_ok[rows]
    if split.images is not None:
        sources = split.image_index[rows]
        if crop_fn is None:
            image = split.images[sources]
        else:
            image = np.stack([crop_fn(split.images[u], r) for u, r in zip(sources, rows)])
        if data_config.image_output == "float32":
            image = images_lib.normalize(image, data_config.mean, data_config.std)
        batch["image"] = image
    return batch


def _check_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
    return global_batch_size // process_count


class _BatchIterator:
    """Iterator over `source`, prefetched in a thread when depth > 0.

    The thread holds only `source`, never this object, so an iterator that is
    dropped without close() is still collected and its thread stopped.
    """

    def __init__(self, source: Iterator, prefetch: int):
        self._it = Prefetch(source, prefetch) if prefetch > 0 else source

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def close(self):
        """Stops the prefetch thread (if any)."""
        it = getattr(self, "_it", None)  # absent when __init__ raised
        if isinstance(it, Prefetch):
            it.close()

    def __del__(self):
        self.close()


class TrainStream:
    """The train batches as a pure function of the global step (no state but a cache)."""

    def __init__(self, data_config, split, *, global_batch_size, process_index, process_count, seed):
        self.split, self.config, self.seed = split, data_config, seed
        self.local_batch_size = _check_batch(global_batch_size, process_index, process_count)
        self.global_batch_size, self.process_index = global_batch_size, process_index
        n = split.num_examples
        self.steps_per_epoch = n // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"split {split.split!r} has {n} examples, fewer than one global batch of {global_batch_size}"
            )
        self.examples_per_epoch = self.steps_per_epoch * global_batch_size
        self.dropped_per_epoch = n - self.examples_per_epoch
        self._epoch_cache: tuple[int, np.ndarray, Any] | None = None

    def _epoch(self, epoch: int):
        """(permutation [N], crop function or None) of one epoch."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.split.num_examples)
            crop_fn = None
            if self.split.images is not None and self.split.crop == "random":
                s = self.split.crop_size
                tops, lefts, flips = images_lib.random_crop_boxes(
                    self.config.crop_seed, self.seed, epoch, self.split.num_examples,
                    self.split.images.shape[1:3], s,
                )

                def crop_fn(source, row, tops=tops, lefts=lefts, flips=flips):
                    return images_lib.apply_crop(source, tops[row], lefts[row], flips[row], s)

            self._epoch_cache = (epoch, perm, crop_fn)
        return self._epoch_cache[1:]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch of global step `step`: a pure function of (seed, step)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm, crop_fn = self._epoch(epoch)
        start = within * self.global_batch_size + self.process_index * self.local_batch_size
        return _assemble(self.config, self.split, perm[start : start + self.local_batch_size], crop_fn)

    def batches(self, step: int):
        while True:
            yield self.batch_at(step)
            step += 1


class TrainIterator(_BatchIterator):
    """Infinite per-process train batches; see make_train_iter.

    Attributes:
      steps_per_epoch, examples_per_epoch, dropped_per_epoch: the epoch
        arithmetic with the last partial global batch dropped.
      stream: the TrainStream; `stream.batch_at(step)` gives any step directly.
    """

    def __init__(self, stream: TrainStream, start_step: int):
        self.stream = stream
        self.steps_per_epoch = stream.steps_per_epoch
        self.examples_per_epoch = stream.examples_per_epoch
        self.dropped_per_epoch = stream.dropped_per_epoch
        logger.info(
            "train stream %s: %d steps/epoch, %d of %d examples seen per epoch "
            "(%d dropped, a different draw each epoch)",
            stream.split.split, self.steps_per_epoch, self.examples_per_epoch, stream.split.num_examples,
            self.dropped_per_epoch,
        )
        super().__init__(stream.batches(start_step), stream.config.prefetch)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        return self.stream.batch_at(step)


def make_train_iter(
    data_config, split_data: PreparedSplit, *, global_batch_size: int, process_index: int,
    process_count: int, seed: int | None = None, start_step: int = 0,
) -> TrainIterator:
    """Infinite iterator of this process's train batches.

    Args:
      global_batch_size: examples per step over all processes; must be
        divisible by process_count.
      seed: shuffle seed (None = data.shuffle_seed).
      start_step: first global step to yield; the stream from step k equals
        an uninterrupted stream's from step k (exact resume).

    Yields:
      dict of NumPy arrays with leading dim global_batch_size // process_count:
      every feature array, 'image_ok' [b] int32, and 'image' [b, 224, 224, 3]
      when images are on.
    """
    seed = data_config.shuffle_seed if seed is None else seed
    stream = TrainStream(data_config, split_data, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count, seed=seed)
    return TrainIterator(stream, start_step)


class EvalIterator(_BatchIterator):
    """One in-order padded pass; `num_batches` batches, each with 'mask' [b]."""

    def __init__(self, data_config, split, *, global_batch_size, process_index, process_count):
        local = _check_batch(global_batch_size, process_index, process_count)
        n = split.num_examples
        self.num_batches = num_batches = -(-n // global_batch_size)
        crop_fn = None
        if split.images is not None and split.crop == "random":
            # 'random' keeps the sources; evaluation sees the centre window.
            s = split.crop_size
            box = images_lib.center_crop_box(split.images.shape[1:3], s)
            crop_fn = lambda source, row: images_lib.apply_crop(source, *box, s)  # noqa: E731

        pad_to_batch_max = data_config.name == "trc" and bool(data_config.get("trc_pad_to_batch_max", False))

        def generate():
            for b in range(num_batches):
                positions = b * global_batch_size + process_index * local + np.arange(local)
                real = positions < n
                rows = np.where(real, positions, 0)
                batch = _assemble(data_config, split, rows, crop_fn)
                batch["mask"] = real.astype(np.int32)
                batch["row"] = rows.astype(np.int32)
                if pad_to_batch_max:
                    # Padding rows must not set their batch's text length
                    # (models/relation.py `batch_max_positions`, §2.3).
                    batch["input_mask"] = batch["input_mask"] * real[:, None].astype(batch["input_mask"].dtype)
                yield batch

        super().__init__(generate(), data_config.prefetch)

    def __len__(self):
        return self.num_batches


def make_eval_iter(
    data_config, split_data: PreparedSplit, *, global_batch_size: int, process_index: int, process_count: int
) -> EvalIterator:
    """One pass over the split in order, padded to whole global batches.

    Yields:
      the train batch keys plus 'mask' [b] int32 (1 real, 0 padding; padding
      rows repeat row 0) and 'row' [b] int32, the index into
      split_data.examples / split_data.features.tokens (host metadata for
      decoding and metrics). 'example_index' is the converter's index into the
      examples it was given (before sentences were dropped).
    """
    return EvalIterator(
        data_config, split_data, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count,
    )


def main(argv=None):
    """`python -m data_pipeline.pipeline --build [options]` (the iterator's
    speed: `python -m launch.benchmark data`, tools/benchmark_host.py)."""
    from data_pipeline.config import default_data_config

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--build", action="store_true", help="build the TFDS data into --prepared_dir")
    p.add_argument("--name", default="sample")
    p.add_argument("--train_file", default="data/sample/train.json")
    p.add_argument("--dev_file")
    p.add_argument("--test_file")
    p.add_argument("--image_dir", default="data/sample/images", help="'' = text-only")
    p.add_argument("--vocab_file", default="data/sample/vocab.txt")
    p.add_argument("--prepared_dir", help="TFDS data dir (built first when empty)")
    p.add_argument("--crop_mode", default="fixed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = default_data_config()
    cfg.name, cfg.crop_mode = args.name, args.crop_mode
    for key in ("train_file", "dev_file", "test_file", "image_dir", "vocab_file", "prepared_dir"):
        cfg[key] = getattr(args, key) or None  # '' switches a path off
    if args.build:
        from data_pipeline import builders

        builders.build(cfg)  # reuses a matching build, refuses a mismatching one


if __name__ == "__main__":
    main()
