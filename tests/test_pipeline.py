"""Per-process batch iterators and load_split (data_pipeline/pipeline.py, data_pipeline/prepare.py)."""

import json
import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import images as im
from data_pipeline import pipeline
from data_pipeline.config import default_data_config
from jml_jax.facts import IMAGE_MEAN, IMAGE_STD
from data_pipeline.readers import DataFormatError
from helpers.tiny_dataset import CORRUPT, MISSING, data_config, write_tiny_dataset


def synthetic_split(n, *, images=None, crop="fixed", num_images=5):
    """A PreparedSplit of n rows whose input_ids[:, 0] is the row number."""
    arrays = {
        "input_ids": np.tile(np.arange(n, dtype=np.int32)[:, None], (1, 8)),
        "span_mask": np.ones((n, 3), np.int32),
        "example_index": np.arange(n, dtype=np.int32),
    }
    image_ids = [f"{i % num_images}.jpg" for i in range(n)]
    split = pipeline.PreparedSplit("train", "absa", arrays, [None] * n, None, image_ids, image_ok=np.ones(n, np.int32))
    if images is not None:
        split.images, split.crop, split.crop_size = images, crop, 4
        split.image_index = (np.arange(n) % len(images)).astype(np.int32)
    return split


def _cfg(**kw):
    cfg = default_data_config()
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _take(it, k):
    out = [next(it) for _ in range(k)]
    it.close()
    return out


@pytest.mark.parametrize("prefetch", [0, 2])
def test_two_processes_see_each_example_once_per_epoch(prefetch):
    n, g = 23, 4  # 5 steps per epoch, 3 examples dropped per epoch
    cfg = _cfg(prefetch=prefetch)
    split = synthetic_split(n)
    iters = [pipeline.make_train_iter(cfg, split, global_batch_size=g, process_index=p, process_count=2, seed=3)
             for p in (0, 1)]
    assert iters[0].steps_per_epoch == 5 and iters[0].examples_per_epoch == 20 and iters[0].dropped_per_epoch == 3
    streams = [_take(it, 15) for it in iters]  # 3 epochs
    epochs = []
    for e in range(3):
        seen = np.concatenate([b["example_index"] for s in streams for b in s[5 * e : 5 * e + 5]])
        assert len(seen) == 20 and len(set(seen.tolist())) == 20
        epochs.append(seen)
        for s in streams:
            assert all(b["input_ids"].shape == (2, 8) for b in s)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order every epoch
    # Process p's rows are its contiguous half of each global batch.
    whole = pipeline.make_train_iter(cfg, split, global_batch_size=g, process_index=0, process_count=1, seed=3)
    for step, global_batch in enumerate(_take(whole, 15)):
        joined = np.concatenate([streams[0][step]["example_index"], streams[1][step]["example_index"]])
        np.testing.assert_array_equal(joined, global_batch["example_index"])


def test_start_step_resumes_the_exact_stream():
    cfg = _cfg(prefetch=2)
    split = synthetic_split(17, images=np.arange(5 * 6 * 6 * 3, dtype=np.uint8).reshape(5, 6, 6, 3), crop="random")
    kw = dict(global_batch_size=4, process_index=1, process_count=2, seed=9)
    full = _take(pipeline.make_train_iter(cfg, split, **kw), 14)
    resumed = _take(pipeline.make_train_iter(cfg, split, start_step=6, **kw), 8)
    for a, b in zip(full[6:], resumed):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_shuffle_is_seeded():
    cfg = _cfg(prefetch=0)
    split = synthetic_split(40)
    kw = dict(global_batch_size=8, process_index=0, process_count=1)
    a = [b["example_index"] for b in _take(pipeline.make_train_iter(cfg, split, seed=1, **kw), 5)]
    b = [b["example_index"] for b in _take(pipeline.make_train_iter(cfg, split, seed=1, **kw), 5)]
    c = [b["example_index"] for b in _take(pipeline.make_train_iter(cfg, split, seed=2, **kw), 5)]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(np.concatenate(a), np.arange(40))  # actually shuffled
    # seed=None takes data.shuffle_seed
    d = [x["example_index"] for x in _take(pipeline.make_train_iter(_cfg(prefetch=0, shuffle_seed=2), split, **kw), 5)]
    np.testing.assert_array_equal(c, d)


def test_random_crops_change_between_epochs_fixed_images_do_not():
    rng = np.random.default_rng(0)
    sources = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    cfg = _cfg(prefetch=0)
    kw = dict(global_batch_size=3, process_index=0, process_count=1, seed=0)
    it = pipeline.make_train_iter(cfg, synthetic_split(3, images=sources, crop="random"), **kw)
    by_epoch = []
    for epoch in range(2):
        batch = it.batch_at(epoch)  # one step per epoch
        order = np.argsort(batch["example_index"])
        by_epoch.append(batch["image"][order])
    assert by_epoch[0].shape == (3, 4, 4, 3)
    assert not np.array_equal(by_epoch[0], by_epoch[1])
    # 'fixed' stores the crops: every epoch shows the same pixels per example.
    crops = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    it = pipeline.make_train_iter(cfg, synthetic_split(3, images=crops), **kw)
    for epoch in range(3):
        batch = it.batch_at(epoch)
        np.testing.assert_array_equal(batch["image"], crops[batch["example_index"]])


def test_eval_iter_masks_cover_each_example_once_across_processes():
    n, g = 11, 4
    cfg = _cfg(prefetch=1)
    split = synthetic_split(n)
    seen = []
    for p in (0, 1):
        it = pipeline.make_eval_iter(cfg, split, global_batch_size=g, process_index=p, process_count=2)
        batches = list(it)
        assert len(batches) == len(it) == 3
        for b in batches:
            assert b["mask"].dtype == np.int32 and b["mask"].shape == (2,)
            np.testing.assert_array_equal(b["input_ids"][:, 0], b["example_index"])
            np.testing.assert_array_equal(b["row"], b["example_index"])
            padding = b["mask"] == 0
            np.testing.assert_array_equal(b["example_index"][padding], 0)  # padding repeats row 0
            seen.extend(b["example_index"][b["mask"] == 1].tolist())
    assert sorted(seen) == list(range(n))


def test_batch_sizes_are_checked():
    split = synthetic_split(10)
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_train_iter(_cfg(), split, global_batch_size=6, process_index=0, process_count=4, seed=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pipeline.make_train_iter(_cfg(), split, global_batch_size=16, process_index=0, process_count=1, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.make_eval_iter(_cfg(), split, global_batch_size=4, process_index=2, process_count=2)


def test_float32_output_is_the_normalised_uint8():
    crops = np.random.default_rng(1).integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    split = synthetic_split(8, images=crops)
    kw = dict(global_batch_size=4, process_index=0, process_count=1, seed=0)
    u8 = pipeline.make_train_iter(_cfg(prefetch=0), split, **kw).batch_at(0)
    f32 = pipeline.make_train_iter(_cfg(prefetch=0, image_output="float32"), split, **kw).batch_at(0)
    assert u8["image"].dtype == np.uint8 and f32["image"].dtype == np.float32
    np.testing.assert_array_equal(f32["image"], im.normalize(u8["image"], IMAGE_MEAN, IMAGE_STD))


def test_batch_assembly_is_fast():
    crops = np.random.default_rng(0).integers(0, 256, (300, 224, 224, 3), dtype=np.uint8)
    split = synthetic_split(2000, images=crops)
    from tools.benchmark_host import benchmark_train_iter

    result = benchmark_train_iter(_cfg(prefetch=2), split, global_batch_size=32, num_batches=100)
    assert result["examples_per_s"] > 1000, result


# --------------------------------------------------------------------------- load_split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_text_only_run_has_no_image_key_and_says_so(tiny, caplog):
    cfg = data_config(tiny, image_dir=None, prefetch=0)
    with caplog.at_level(logging.INFO, logger="data_pipeline.prepare"):
        split = pipeline.load_split(cfg, "dev")
    assert "image stream off: text-only run" in caplog.text
    batch = next(pipeline.make_train_iter(cfg, split, global_batch_size=2, process_index=0, process_count=1, seed=0))
    assert "image" not in batch and "image_features" not in batch
    assert split.data_counts["images_used"] is False and split.data_counts["image_fallbacks"] == 0
    np.testing.assert_array_equal(batch["image_ok"], 0)
    assert batch["input_ids"].shape == (2, 96) and batch["span_starts"].shape == (2, 20)


def test_load_split_with_images_flags_corrupt_and_missing(tiny):
    cfg = data_config(tiny, prefetch=0)
    split = pipeline.load_split(cfg, "train")
    assert split.source == "memory" and split.images.shape[1:] == (224, 224, 3)
    assert split.image_report.missing_ids == [MISSING] and split.image_report.corrupt_ids == [CORRUPT]
    bad = np.isin(split.image_ids, [MISSING, CORRUPT])
    assert bad.any()
    np.testing.assert_array_equal(split.image_ok, (~bad).astype(np.int32))
    assert [e.image_id for e in split.examples] == split.image_ids
    batches = list(pipeline.make_eval_iter(cfg, split, global_batch_size=4, process_index=0, process_count=1))
    image_ok = np.concatenate([b["image_ok"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(image_ok, split.image_ok)
    assert all(b["image"].shape == (4, 224, 224, 3) for b in batches)


def test_trc_split_is_seeded_disjoint_and_resized_straight(tiny):
    cfg = data_config(tiny, name="trc", train_file=tiny["trc_file"], dev_file=None, prefetch=0)
    train, test = pipeline.load_split(cfg, "train"), pipeline.load_split(cfg, "test")
    assert train.kind == "relation" and train.num_examples == 8 and test.num_examples == 2
    assert not {e.example_id for e in train.examples} & {e.example_id for e in test.examples}
    assert train.images.shape[1:] == (224, 224, 3) and train.crop == "none"
    labels = np.array([[e.text_represented, e.image_adds] for e in train.examples])
    np.testing.assert_array_equal(train.arrays["labels"], labels)
    batch = next(pipeline.make_train_iter(cfg, train, global_batch_size=4, process_index=0, process_count=1, seed=0))
    assert set(batch) == {"input_ids", "input_mask", "segment_ids", "labels", "example_index", "image", "image_ok"}
    with pytest.raises(ValueError, match="'train' and 'test'"):
        pipeline.load_split(cfg, "dev")


def test_data_counts_name_image_fallbacks(tiny):
    split = pipeline.load_split(data_config(tiny, prefetch=0), "train")
    counts = split.data_counts
    assert counts["split"] == "train" and counts["examples"] == split.num_examples and counts["images_used"]
    assert (counts["image_fallbacks"], counts["images_missing"], counts["images_unreadable"]) == (2, 1, 1)
    assert counts["examples_with_image_fallback"] == int(np.isin(split.image_ids, [MISSING, CORRUPT]).sum()) > 0
    assert counts["gold_aspects_truncated"] == counts["sentences_with_truncated_aspects"] == 0
    json.dumps(counts)  # plain values, ready to be written into a work directory


def test_data_counts_name_gold_aspects_cut_by_truncation(tiny, tmp_path):
    words = ["tok"] * 12
    records = [
        {"words": words, "image_id": "a.jpg", "aspects": [{"from": 0, "to": 1, "polarity": "POS"},
                                                          {"from": 9, "to": 10, "polarity": "NEG"},
                                                          {"from": 11, "to": 12, "polarity": "NEU"}]},
        {"words": words, "image_id": "b.jpg", "aspects": [{"from": 10, "to": 12, "polarity": "POS"}]},
        {"words": words[:3], "image_id": "c.jpg", "aspects": [{"from": 2, "to": 3, "polarity": "NEU"}]},
    ]
    (tmp_path / "dev.json").write_text(json.dumps(records))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "tok"]) + "\n")
    cfg = data_config(tiny, image_dir=None, dev_file=str(tmp_path / "dev.json"), vocab_file=str(vocab),
                      max_seq_length=10)  # 8 pieces kept: words 8.. are cut
    counts = pipeline.load_split(cfg, "dev").data_counts
    # Evaluation keeps the second sentence, which lost its only aspect: its gold
    # aspect scores as a miss instead of leaving recall's denominator.
    assert counts["examples"] == 3 and counts["sentences_kept_without_gold_targets"] == 1
    assert counts["gold_aspects_truncated"] == 3
    assert counts["sentences_with_truncated_aspects"] == 2 and counts["sentences_dropped_no_gold"] == 0
    # Training drops it: it has no target to learn from.
    train_cfg = data_config(tiny, image_dir=None, train_file=str(tmp_path / "dev.json"), vocab_file=str(vocab),
                            max_seq_length=10)
    train_counts = pipeline.load_split(train_cfg, "train").data_counts
    assert train_counts["examples"] == 2 and train_counts["sentences_dropped_no_gold"] == 1


@pytest.mark.parametrize("text", ["", "[]", "  \n"])
def test_an_empty_split_file_is_refused_naming_field_split_and_file(tiny, tmp_path, text):
    (tmp_path / "dev.json").write_text(text)
    cfg = data_config(tiny, image_dir=None, dev_file=str(tmp_path / "dev.json"))
    with pytest.raises(DataFormatError, match=r"data.dev_file \(split 'dev'\): .*dev.json: no examples"):
        pipeline.load_split(cfg, "dev")


def test_a_split_left_without_sentences_is_refused(tiny, tmp_path):
    # Readable, but no sentence has an aspect: the features would be empty (§1.2).
    (tmp_path / "dev.json").write_text(json.dumps([{"words": ["a"], "image_id": "x.jpg", "aspects": []}]))
    cfg = data_config(tiny, image_dir=None, dev_file=str(tmp_path / "dev.json"))
    with pytest.raises(ValueError, match=r"split 'dev' \(data.dev_file=.*dev.json\) has no usable sentence: "
                                         r"all 1 were dropped .*dropped_no_aspect"):
        pipeline.load_split(cfg, "dev")


def test_trc_csv_is_read_by_load_split(tiny, tmp_path):
    header = '"tweet_id","user_id","tweet","text_is_represented","image_adds"'
    rows = [f'"{i}","9","tweet number {i} https://t.co/{i}","{i % 2}","{(i // 2) % 2}"' for i in range(10)]
    (tmp_path / "trc.csv").write_text("\n".join([header, *rows]) + "\n")
    cfg = data_config(tiny, name="trc", train_file=str(tmp_path / "trc.csv"), dev_file=None, image_dir=None)
    train, test = pipeline.load_split(cfg, "train"), pipeline.load_split(cfg, "test")
    assert (train.num_examples, test.num_examples) == (8, 2)
    assert {e.image_id for e in train.examples + test.examples} == {f"T{i}.jpg" for i in range(10)}
    assert all(e.words[-1].isdigit() for e in train.examples)  # the link is cut (§2.3)
    cfg.trc_full_text = True
    assert pipeline.load_split(cfg, "train").examples[0].words[-1].startswith("https://")


def _imports(path):
    """Every data_pipeline module a file imports, also inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("data_pipeline")}


def test_the_builders_do_not_import_the_pipeline_module():
    """pipeline.load_split uses the builders; the builders take what they need
    from data_pipeline.prepare, so there is no import cycle between them."""
    root = pathlib.Path(pipeline.__file__).parent
    for path in sorted((root / "builders").rglob("*.py")):
        assert "data_pipeline.pipeline" not in _imports(path), path
    assert "data_pipeline.pipeline" not in _imports(root / "prepare.py")
    assert "data_pipeline.builders" in _imports(root / "pipeline.py")
    code = "import sys, data_pipeline.builders.common; print('data_pipeline.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unset_split_file_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="data.test_file is not set"):
        pipeline.load_split(data_config(tiny, image_dir=None), "test")


# --------------------------------------------------------------------------- prefetch


def test_prefetch_raises_producer_errors_and_stops_dropped_threads():
    import gc

    from data_pipeline.prefetch import Prefetch

    def failing():
        yield 1
        raise RuntimeError("broken example 7")

    it = Prefetch(failing(), 2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="broken example 7"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)

    train = pipeline.make_train_iter(_cfg(prefetch=2), synthetic_split(8), global_batch_size=4,
                                     process_index=0, process_count=1, seed=0)
    next(train)
    thread = train._it.thread
    del train
    gc.collect()
    thread.join(timeout=2)
    assert not thread.is_alive()  # dropped without close(): the thread still ends


def test_bundled_sample_loads_and_flags_its_unreadable_image(caplog):
    from conftest import REPO_ROOT

    sample = REPO_ROOT / "data" / "sample"
    if not (sample / "train.json").is_file():
        pytest.skip(f"bundled sample data not found at {sample}")
    cfg = _cfg(train_file=str(sample / "train.json"), vocab_file=str(sample / "vocab.txt"),
               image_dir=str(sample / "images"), prefetch=0)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.images"):
        split = pipeline.load_split(cfg, "train")
    assert split.image_report.corrupt_ids == ["train_013.jpg"] and "train_013.jpg" in caplog.text
    bad = np.array(split.image_ids) == "train_013.jpg"
    np.testing.assert_array_equal(split.image_ok, (~bad).astype(np.int32))
    batches = list(pipeline.make_eval_iter(cfg, split, global_batch_size=16, process_index=0, process_count=1))
    for b in batches:
        for r, row in enumerate(b["row"]):
            assert len(split.features.tokens[row]) == b["num_tokens"][r]
