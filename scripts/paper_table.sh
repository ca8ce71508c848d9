#!/usr/bin/env bash
# Runs every training a table of the paper needs, then renders it (docs/paper.md).
#
#   scripts/paper_table.sh TABLE WORKROOT [--config.FIELD=VALUE ...]
#
# TABLE is 3, 4, 5, 6 or 7. Stage one (configs/trc_relation.py) runs first in
# WORKROOT/trc_relation; every stage-two run reads its relation module
# (--config.model.relation_init=WORKROOT/trc_relation/relation). The runs are
# listed by `python -m tools.paper_table --plan` (one owner of the grids); run
# folders are shared between tables. Each run is resumable: a finished run
# (its summary.json exists) is skipped, an interrupted one resumes from its
# latest checkpoint in its folder. Afterwards the table is written to
# WORKROOT/table<TABLE>.md and printed.
#
# Environment:
#   SEEDS       seeds of every stage-two run (default "42"; the paper reports one run)
#   TRC_FLAGS   extra flags for stage one only, e.g.
#               "--config.data.train_file=data/trc/trc.csv --config.data.image_dir=data/trc/images"
#   EVALUATE=1  also write each stage-two run's test predictions
#               (WORKROOT/<run>/predictions/test_predictions.jsonl, for
#               python -m tools.significance and the case studies)
# Extra arguments go to every stage-two run (e.g. data folders, mesh shape).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
table=$1
root=$2
shift 2
seeds=${SEEDS:-42}
read -r -a trc_flags <<< "${TRC_FLAGS:-}"
cd "$(dirname "$0")/.."
mkdir -p "$root"

# shellcheck disable=SC2086  # the seeds are a word list
while IFS=$'\t' read -r -u 3 workdir config extra; do
  read -r -a extra_flags <<< "$extra"
  stage_one=0
  [[ "$config" == configs/trc_relation.py* ]] && stage_one=1
  if [[ -f "$workdir/summary.json" ]]; then
    echo "== done: $workdir"
  else
    echo "== training $workdir ($config)"
    if [[ $stage_one == 1 ]]; then
      python -m launch.train --config="$config" --workdir="$workdir" "${trc_flags[@]}"
    else
      python -m launch.train --config="$config" --workdir="$workdir" "${extra_flags[@]}" "$@"
    fi
  fi
  if [[ $stage_one == 0 && "${EVALUATE:-0}" == 1 && ! -f "$workdir/predictions/test_predictions.jsonl" ]]; then
    python -m launch.evaluate --config="$config" --workdir="$workdir" --split=test "${extra_flags[@]}" "$@"
  fi
done 3< <(python -m tools.paper_table --table "$table" --root "$root" --seeds $seeds --plan)

# shellcheck disable=SC2086
python -m tools.paper_table --table "$table" --root "$root" --seeds $seeds --out "$root/table$table.md"
