#!/usr/bin/env bash
# Wall time and test metrics of `xtask train` (defaults: tiny model from scratch, 3 epochs) on
# the bundled sample over three seeds: an earlier build (fixed padding), this build with fixed
# padding, and this build's defaults (dynamic padding, length grouping).
#   xtask/bench/train_wall.sh OLD_XTASK NEW_XTASK WORK_DIR
# OLD_XTASK: an xtask binary built from an earlier commit (git worktree add …; cargo build --release -p xtask),
# or `-` to leave that variant out.
set -euo pipefail
old=$1 new=$2 work=$3
variants=(old fixed dynamic)
[ "$old" = - ] && variants=(fixed dynamic)
mkdir -p "$work"
"$new" prepare --out "$work/data" -q
for seed in 42 43 44; do
  for variant in "${variants[@]}"; do
    case $variant in
      old) bin=$old extra=() ;;
      fixed) bin=$new extra=(--pad-to-max-length --group-by-length false) ;;
      dynamic) bin=$new extra=() ;;
    esac
    rm -rf "$work/run_${variant}_$seed"
    start=$(date +%s.%N)
    out=$("$bin" train --prepared "$work/data" --out "$work/run_${variant}_$seed" --seed "$seed" "${extra[@]}" 2>/dev/null | grep '^test:')
    end=$(date +%s.%N)
    echo "$variant seed $seed $(echo "$end - $start" | bc) s $out"
  done
done
