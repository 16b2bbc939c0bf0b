#!/usr/bin/env bash
# The GPU check of docs/BENCHMARKS.md, for a machine with an NVIDIA GPU, PyTorch (CUDA) and
# transformers in `python3`, and no Rust toolchain: parity of every GPU backend against the
# transformers / PyTorch references, training and inference throughput next to PyTorch eager
# on the same GPU (fp32 and bf16), and a short pipeline run.
#
# Usage, from the repository root: xtask/bench/gpu.sh XTASK_BINARY OUT_DIR
#   XTASK_BINARY: `cargo build --release -p xtask --features vulkan,tch` built against the
#   machine's PyTorch (docs/BENCHMARKS.md says how). Vulkan's loader comes from .gl/*.deb when
#   the machine lacks it. Each step has its own time limit and a failure does not stop the
#   others: everything goes to OUT_DIR/gpu.log.
set -u
xtask=$(realpath "$1")
out=$(realpath "$2")
log="$out/gpu.log"
: >"$log"
say() { echo "$@" | tee -a "$log"; }
step() { # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    say "=== $name"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    say "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

if ! ldconfig -p | grep -q libvulkan; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
# tch links libtorch_cuda only when a symbol needs it; preloading registers the CUDA backend.
tch_env=(env LD_PRELOAD="$torch_lib/libtorch_cuda.so")

step 30 "machine" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc;
    python3 -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__)"'

step 90 "parity tch-cuda f32" "${tch_env[@]}" "$xtask" parity --backend tch-cuda
tch_ok=$(grep -c "parity: all" "$log")
step 90 "parity vulkan f32" "$xtask" parity --backend vulkan
step 60 "parity tch-cuda bf16" "${tch_env[@]}" "$xtask" parity --backend tch-cuda --dtype bf16
step 60 "parity vulkan bf16" "$xtask" parity --backend vulkan --dtype bf16

bench() { # bench BACKEND DTYPE [--train]
    local backend=$1 dtype=$2
    shift 2
    step 100 "bench $backend $dtype $*" "${tch_env[@]}" "$xtask" bench model "$@" --shapes base \
        --threads 16 --backend "$backend" --dtype "$dtype" --iters 30 --python-device cuda --python python3
}
bench tch-cuda f32 --train
bench vulkan f32 --train
bench tch-cuda f32
bench vulkan f32
bench tch-cuda bf16 --train
bench vulkan bf16 --train

run_dir=$(mktemp -d)
backend=tch-cuda
[ "$tch_ok" = 1 ] || backend=vulkan
step 200 "pipeline on $backend (small model, 3 trials, 2 epochs)" "${tch_env[@]}" "$xtask" pipeline \
    --backend "$backend" --config small --trials 3 --epochs 2 --out "$run_dir/pipeline"
cp "$run_dir/pipeline/report.md" "$out/pipeline-report.md" 2>/dev/null
say "done"
