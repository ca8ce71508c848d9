"""Text-only training works without TensorFlow (GPU machines often lack it).

A fresh interpreter where ``import tensorflow`` (and tensorflow_datasets)
fails imports the text-only training path (jml_jax.train, jml_jax.experiment)
and draws one batch from the bundled sample with configs/demo.py:text_only,
prepared in memory (no TFDS build).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    for name in ("tensorflow", "tensorflow_datasets"):
        sys.modules[name] = None  # `import tensorflow` now raises ImportError
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("tensorflow is still importable")

    import jml_jax.experiment  # noqa: F401
    import jml_jax.train  # noqa: F401
    from configs import demo
    from data_pipeline import pipeline

    cfg = demo.get_config("text_only").data
    cfg.prepared_dir = None  # in memory: the TFDS build path is the one that needs TensorFlow
    split = pipeline.load_split(cfg, "train")
    it = pipeline.make_train_iter(cfg, split, global_batch_size=4, process_index=0, process_count=1)
    batch = next(iter(it))
    ids = batch["input_ids"]
    assert ids.shape == (4, cfg.max_seq_length), ids.shape
    assert "image" not in batch
    assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m, v in sys.modules.items()
                   if v is not None)
    print("OK", ids.shape)
    """
)


def test_text_only_training_path_without_tensorflow():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK (4, 48)" in proc.stdout


LIBRARY_SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import jml_jax

    names = sorted(m.name for m in pkgutil.walk_packages(jml_jax.__path__, "jml_jax."))
    for name in names:
        importlib.import_module(name)
    loaded = sorted(m for m in sys.modules
                    if m.split(".")[0] in ("tensorflow", "tensorflow_datasets", "data_pipeline", "launch", "tools"))
    print("LOADED", loaded)
    print("MODULES", len(names))
    """
)


def test_importing_every_library_module_pulls_in_no_tensorflow_nor_data_pipeline():
    """`import jml_jax...` of every module of the library, in a fresh
    interpreter, loads neither TensorFlow nor data_pipeline (nor the entry
    points or tools): the library is what a GPU machine without TensorFlow runs."""
    proc = subprocess.run([sys.executable, "-c", LIBRARY_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout
    assert int(proc.stdout.split("MODULES")[1].split()[0]) > 30
