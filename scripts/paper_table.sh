#!/usr/bin/env bash
# Runs every training a table of the paper needs, then renders it (docs/paper.md).
#
#   scripts/paper_table.sh TABLE WORKROOT [--config.FIELD=VALUE ...]
#
# TABLE is 3, 4, 5, 6 or 7. Stage one (configs/trc_relation.py) runs first, a
# single run in WORKROOT/trc_relation; every stage-two run reads its relation
# module (--config.model.relation_init=WORKROOT/trc_relation/relation). Each
# stage-two row (one dataset x one variant) trains its seeds as one population,
# one program in one process (--config.runs.seeds=42,43,44, jml_jax/population.py)
# in WORKROOT/<dataset>_<variant or full>; each seed's run is afterwards an
# ordinary run folder, WORKROOT/<dataset>_<variant or full>/runs/seed_<seed>.
# The rows of the paper's grids differ in architecture switches (config
# variants), so each row is its own population; only rows differing in per-run
# numeric fields (runs.learning_rate, ...) could share one, and no table has such.
# The rows are listed by `python -m tools.paper_table --plan` (one owner of the
# grids and the folders); row folders are shared between tables. Each row is
# resumable: a finished row (its population's summary.json exists) is skipped,
# an interrupted one resumes from its latest checkpoint (the same command). A
# row folder holding other seeds is refused before anything trains.
# Afterwards the table is written to WORKROOT/table<TABLE>.md and printed.
#
# Environment:
#   SEEDS       seeds of every stage-two row (default "42"; the paper reports one run)
#   TRC_FLAGS   extra flags for stage one only, e.g.
#               "--config.data.train_file=data/trc/trc.csv --config.data.image_dir=data/trc/images"
#   EVALUATE=1  also write each stage-two run's test predictions
#               (<run folder>/predictions/test_predictions.jsonl, for
#               python -m tools.significance and the case studies)
# Extra arguments go to every stage-two training and evaluation (e.g. data
# folders, mesh shape).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
table=$1
root=$2
shift 2
seeds=${SEEDS:-42}
read -r -a trc_flags <<< "${TRC_FLAGS:-}"
cd "$(dirname "$0")/.."
mkdir -p "$root"

# Lines: workdir, config, extra flags, seeds (comma-separated; empty for stage
# one), then one run folder per seed; tab-separated. Read whole first, so that
# a refused plan stops the script.
# shellcheck disable=SC2086  # the seeds are a word list
plan=$(python -m tools.paper_table --table "$table" --root "$root" --seeds $seeds --plan)

while IFS=$'\t' read -r -u 3 workdir config extra row_seeds run_dirs; do
  read -r -a extra_flags <<< "$extra"
  IFS=$'\t' read -r -a run_folders <<< "${run_dirs:-}"
  if [[ -z "$row_seeds" ]]; then  # stage one: a single run
    if [[ -f "$workdir/summary.json" ]]; then
      echo "== done: $workdir"
    else
      echo "== training $workdir ($config)"
      python -m launch.train --config="$config" --workdir="$workdir" "${trc_flags[@]}"
    fi
    continue
  fi
  if [[ -f "$workdir/summary.json" ]]; then
    echo "== done: $workdir (seeds $row_seeds)"
  else
    echo "== training $workdir ($config, seeds $row_seeds)"
    python -m launch.train --config="$config" --workdir="$workdir" --config.runs.seeds="$row_seeds" \
      "${extra_flags[@]}" "$@"
  fi
  if [[ "${EVALUATE:-0}" == 1 ]]; then
    IFS=, read -r -a seed_list <<< "$row_seeds"
    for i in "${!seed_list[@]}"; do
      run_folder=${run_folders[$i]}
      if [[ -f "$run_folder/predictions/test_predictions.jsonl" ]]; then
        continue
      fi
      if grep -q '"stopped"' "$run_folder/summary.json"; then  # its population stopped it (non-finite)
        echo "== not evaluated (stopped): $run_folder"
        continue
      fi
      python -m launch.evaluate --config="$config" --workdir="$run_folder" --config.seed="${seed_list[$i]}" \
        --config.runs.seeds='()' --split=test "${extra_flags[@]}" "$@"
    done
  fi
done 3<<< "$plan"

# shellcheck disable=SC2086
python -m tools.paper_table --table "$table" --root "$root" --seeds $seeds --out "$root/table$table.md"
