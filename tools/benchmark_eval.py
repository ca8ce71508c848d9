"""Times a paper-cadence evaluation on this machine: the joint model's evaluator
over a split (Twitter-2015 dev by default: 727 sentences, at configs/text_real.py's
L=64), tiny widths.

    JML_DATA_ROOT=/path/to/data python -m tools.benchmark_eval [--split dev] [--repeats 3]
    # another Evaluator implementation (e.g. an older jml_jax/evaluators.py):
    python -m tools.benchmark_eval --evaluator-module /tmp/old_evaluators.py

Prints the compile-excluded seconds per full pass over the split (median of
--repeats) and the sentences/s. The model is text-only and random (tiny BERT,
MiniLM vocabulary); the decoding threshold is lowered so every sentence has
spans to classify, as a trained model would.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="dev")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--evaluator-module", default=None, help="a file defining Evaluator (default: jml_jax.evaluators)")
    args = p.parse_args()

    import jax

    from configs import text_real
    from data_pipeline import pipeline
    from jml_jax.evaluators import EvalSplit
    from jml_jax.experiment import build_experiment
    from jml_jax.weights import resolve_path

    config = text_real.get_config("twitter2015")
    config.model.bert, config.model.bert_init, config.model.bert_vocab_size = "tiny", None, 30522
    config.data.prefetch = 0
    config.eval_batch_size = args.eval_batch
    config.mesh_shape = (1, 1, 1)
    config.decode.logit_threshold = -1e4
    config.data.vocab_file = str(resolve_path(config.data.vocab_file, what="data.vocab_file"))
    exp = build_experiment(config, devices=jax.devices()[:1])
    state = exp.random_state()
    prepared = pipeline.load_split(config.data, args.split)
    split = EvalSplit(name=args.split, features=prepared.features, make_iter=lambda: pipeline.make_eval_iter(
        config.data, prepared, global_batch_size=config.eval_batch_size, process_index=0, process_count=1))
    if args.evaluator_module:
        spec = importlib.util.spec_from_file_location("other_evaluate", args.evaluator_module)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
        from jml_jax.evaluators import decode_config_from

        evaluator = module.Evaluator(exp.model, exp.mesh, exp.shardings, decode_config_from(config))
    else:
        evaluator = exp.make_evaluator()
    evaluator.predict_split(state, split)  # compile
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        evaluator.predict_split(state, split)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(f"{args.split}: {split.num_examples} sentences, eval batch {args.eval_batch}: {t:.2f} s per pass "
          f"({split.num_examples / t:.0f} sentences/s; runs {', '.join(f'{x:.2f}' for x in times)})")


if __name__ == "__main__":
    main()
