"""Predict aspect terms and their sentiment for raw sentences with a trained run.

    python -m launch.predict --config=configs/demo.py --workdir=DIR \
        --input=IN.jsonl --output=OUT.jsonl [--image_dir=FOLDER] [--checkpoint=best] [--render=DIR]

The input and output formats are documented in jml_jax/predict.py; the input
is read and prepared by data_pipeline/predict_inputs.py. ``--render``
also draws one case-study PNG per input into DIR (image, sentence with the
predicted aspects coloured by polarity, P(image adds); tools/render.py), like
the paper's Figure 3.
"""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from data_pipeline.predict_inputs import read_inputs
from jml_jax.predict import predict, write_jsonl
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's folder")
_CACHE = common.define_compilation_cache_flag()
_INPUT = flags.DEFINE_string("input", None, "JSON lines of sentences (see jml_jax/predict.py)")
_OUTPUT = flags.DEFINE_string("output", None, "where the JSON-lines predictions go")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "folder of the input images (default: data.image_dir)")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number")
_RENDER = flags.DEFINE_string("render", None, "also draw one case-study PNG per input into this folder")
flags.mark_flags_as_required(["config", "workdir", "input", "output"])


def main(argv):
    del argv
    common.setup_logging()
    common.init_processes()
    common.enable_compilation_cache(_CACHE.value)
    config = _CONFIG.value
    common.resolve_config_paths(config)
    which = int(_CHECKPOINT.value) if _CHECKPOINT.value.isdigit() else _CHECKPOINT.value
    inputs = read_inputs(_INPUT.value)
    inputs, split = common.predict_split(config, inputs, _IMAGE_DIR.value)
    records = predict(config, _WORKDIR.value, inputs, split, which=which)
    if jax.process_index() == 0:
        write_jsonl(_OUTPUT.value, records)
        n = sum(len(r["aspects"]) for r in records)
        print(f"wrote {len(records)} predictions ({n} aspects) to {_OUTPUT.value}")
        if _RENDER.value:
            from tools.render import render_case_studies

            image_dir = _IMAGE_DIR.value or config.data.get("image_dir")
            paths = render_case_studies(records, _RENDER.value, image_dir=image_dir)
            print(f"drew {len(paths)} case studies in {_RENDER.value}")


if __name__ == "__main__":
    app.run(main)
