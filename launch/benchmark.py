"""Throughput benchmarks: ``python -m launch.benchmark {model,encoders,decode,data,all} ...``.

The full JML model (JAX train and eval steps against the eager PyTorch twin of
tools/torch_jml.py), BERT alone, host decoding and the data pipeline; every
subcommand and its options are documented in tools/benchmarks.py, e.g.

    python -m launch.benchmark model --preset paper --dtype bfloat16 --json model.json
    python -m launch.benchmark all          # CPU-feasible ones, Markdown table
"""

import sys

from tools.benchmarks import main

if __name__ == "__main__":
    sys.exit(main())
