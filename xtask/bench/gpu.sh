#!/usr/bin/env bash
# The GPU check of docs/BENCHMARKS.md, for a machine with an NVIDIA GPU, PyTorch (CUDA) and
# transformers in `python3`, and no Rust toolchain: parity of the GPU backends against the
# transformers / PyTorch references, training and inference throughput next to PyTorch eager on
# the same GPU (fp32 and bf16), and a short pipeline run.
#
# Usage, from the repository root: xtask/bench/gpu.sh XTASK_BINARY[.xz] OUT_DIR [SECONDS] [MODE]
#   XTASK_BINARY: `cargo build --release -p xtask --features vulkan,tch`, built against the
#   machine's PyTorch (docs/perf-notes/journal.md, section "GPU", says how), optionally xz-compressed. Vulkan's loader
#   comes from .gl/*.deb when the machine lacks it. Steps run in order of importance, each with
#   its own time limit, and are skipped once SECONDS (default 540) have passed; a failure does
#   not stop the others. Everything goes to OUT_DIR/gpu.log. MODE `check` (the default) runs
#   the whole check, `tch` its libtorch part only (with A/B rows: the composed attention, Burn's
#   composed operations, the step without its optimizer); `profile` looks at where a tch-cuda
#   training step's time goes, next to PyTorch's: batch 32 and 64, the GPU's utilisation and
#   the CPU time while each side trains, PyTorch's kernels per step, and a launch-bound tiny
#   model. `cpu` benchmarks the machine's host CPU instead (flex against PyTorch on the CPU,
#   real tweets' lengths, 1 and 2 threads, f32 and bf16), each row pinned to two cores as on
#   the 2-vCPU machines our users and CI have: machines of our kind differ in their host CPU,
#   and a lent GPU machine may bring one (an Intel Xeon, say) unlike the project's own.
set -u
out=$(realpath "$2")
deadline=${3:-540}
mode=${4:-check}
log="$out/gpu.log"
: >"$log"
say() { echo "$@" | tee -a "$log"; }
step() { # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 15 ]; then
        say "=== $name: skipped (time budget spent)"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "=== $name"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    say "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

xtask=/tmp/xtask-gpu
case "$1" in
*.xz) xz -dc "$1" >"$xtask" 2>/dev/null ||
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$xtask" ;;
*) cp "$1" "$xtask" ;;
esac
chmod +x "$xtask"

if ! ldconfig -p | grep -q libvulkan; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"

step 30 "machine" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc;
    lscpu | grep -E "^(Vendor ID|Model name|CPU family|Model|Thread|Core|Socket|NUMA node|L1d|L2|L3|CPU max MHz)"; grep -o -w -E "avx512f|avx512_bf16|avx512_fp16|amx_bf16|amx_tile" /proc/cpuinfo | sort -u | tr "\n" " "; echo;
    python3 -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__, \"cuda\", torch.cuda.is_available())";
    ls /usr/local/nvidia/share/vulkan/icd.d/ 2>&1; ldd '"$xtask"' | grep -i "not found"'

bench() { # bench LIMIT BACKEND DTYPE [FLAGS]
    local limit=$1 backend=$2 dtype=$3
    shift 3
    step "$limit" "bench $backend $dtype $*" "$xtask" bench model "$@" --shapes base \
        --threads 16 --backend "$backend" --dtype "$dtype" --iters 30 --python-device cuda --python python3
}
worker() { # worker LIMIT BACKEND PARTS OPTIMIZER [FLAGS]: our side alone
    local limit=$1 backend=$2 parts=$3 optimizer=$4
    shift 4
    step "$limit" "worker $backend --parts $parts --optimizer $optimizer${*:+ $*}" "$xtask" bench \
        model-worker --shape base --iters 30 --train --backend "$backend" --parts "$parts" \
        --optimizer "$optimizer" "$@"
}
# Runs a command with the GPU's utilisation sampled every 100 ms: the mean, the CPU time the
# command took against its wall time (a step bounded by launching kernels keeps a core busy and
# the GPU partly idle).
sampled() { # sampled LIMIT NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 >/tmp/util.txt &
    local sampler=$!
    TIMEFORMAT="cpu: %U s user, %S s system, %R s wall"
    step "$limit" "$name (GPU utilisation sampled)" bash -c 'time "$@"' _ "$@"
    kill "$sampler"
    say "GPU utilisation: mean $(awk '{ s += $1; n++ } END { printf "%.0f%% over %d samples", s / n, n }' /tmp/util.txt)"
}
if [ "$mode" = cpu ]; then
    # Two CPUs on distinct physical cores for each group (the first thread of each core: with
    # SMT, CPUs 0 and 1 can be one core's two threads, which would halve both sides' second
    # thread). The sixteen rows take about half an hour in turn, more than a lease, so they run in
    # up to eight groups at once, each on two cores of its own: a row's two sides still share
    # one run and its neighbours. Each row is its own step (one thread count), so a time limit
    # costs one row, not two.
    mapfile -t firsts < <(lscpu -p=CPU,CORE,SOCKET | grep -v '^#' | awk -F, '!seen[$2 "," $3]++ { print $1 }')
    groups=$((${#firsts[@]} / 2))
    [ "$groups" -gt 8 ] && groups=8
    [ "$groups" -ge 1 ] || groups=1
    say "first CPU of each physical core: ${firsts[*]}; $groups groups at once"
    # perf from the CPU machine (.gpu/perf.tar.xz: the binary and the libraries the GPU
    # machine lacks), for the profile of the rows below 1.2x; skipped where it does not run.
    perf=""
    if [ -f .gpu/perf.tar.xz ] && mkdir -p /tmp/perf && tar -xJf .gpu/perf.tar.xz -C /tmp/perf &&
        LD_LIBRARY_PATH=/tmp/perf/lib /tmp/perf/perf --version >>"$log" 2>&1; then
        perf="env LD_LIBRARY_PATH=/tmp/perf/lib /tmp/perf/perf"
    fi
    cpu() { # cpu LIMIT THREADS FLAGS: one row of `bench model` on this group's cores
        local limit=$1 threads=$2
        shift 2
        step "$limit" "cpu bench $* --threads $threads (CPUs $cpus)" taskset -c "$cpus" "$xtask" \
            bench model "$@" --lengths tweets --threads "$threads" --python "${PYTHON:-python3}"
    }
    profile() { # profile SECONDS THREADS FLAGS: where one side's time goes, by symbol
        local seconds=$1 threads=$2
        shift 2
        [ -n "$perf" ] || return
        step $((seconds + 30)) "profile $* on $threads thread(s)" bash -c '
            RAYON_NUM_THREADS='"$threads"' '"$perf"' record -q -D 8000 -e cpu-clock -F 499 -o /tmp/perf-$$.data -- \
                timeout -s INT '"$seconds"' taskset -c '"$cpus"' '"$xtask"' bench model-worker \
                --lengths tweets --iters 100000 "$@" >/dev/null # stopped by the timeout
            '"$perf"' report -i /tmp/perf-$$.data --no-children --sort sym --stdio 2>/dev/null |
                grep -v "^#" | grep -v "^$" | head -40' _ "$@"
    }
    kernels() { # kernels THREADS: roberta-base inference by each way the bf16 products can run
        local threads=$1 products
        for products in f32 amx native rounded-f32; do # amx and native refused where absent
            local flags=(--dtype bf16 --bf16-products "$products")
            [ "$products" = f32 ] && flags=(--dtype f32)
            step 90 "model-worker base inference ${flags[*]} on $threads thread(s)" env \
                RAYON_NUM_THREADS="$threads" taskset -c "$cpus" "$xtask" bench model-worker \
                --shape base --iters 6 --lengths tweets "${flags[@]}"
        done
    }
    # One group's rows: roberta-base training a row per group (the longest, 3-4 minutes each on
    # the Intel Xeon of docs/perf-notes/journal.md), the rest two or four rows per group, then the bf16
    # products' kernels side by side and the profiles.
    rows() { # rows N
        case $1 in
        0) cpu 420 1 --train --shapes base --iters 4 ;;
        1) cpu 420 2 --train --shapes base --iters 4 ;;
        2) cpu 420 1 --train --dtype bf16 --shapes base --iters 4 ;;
        3) cpu 420 2 --train --dtype bf16 --shapes base --iters 4 ;;
        4)
            cpu 200 1 --shapes base --iters 6
            cpu 200 2 --shapes base --iters 6
            ;;
        5)
            cpu 200 1 --dtype bf16 --shapes base --iters 6
            cpu 200 2 --dtype bf16 --shapes base --iters 6
            ;;
        6)
            cpu 120 1 --train --shapes small --iters 20
            cpu 120 2 --train --shapes small --iters 20
            cpu 90 1 --shapes small --iters 40
            cpu 90 2 --shapes small --iters 40
            profile 30 1 --shape base
            ;;
        7)
            cpu 120 1 --train --dtype bf16 --shapes small --iters 20
            cpu 120 2 --train --dtype bf16 --shapes small --iters 20
            cpu 90 1 --dtype bf16 --shapes small --iters 40
            cpu 90 2 --dtype bf16 --shapes small --iters 40
            kernels 1
            profile 30 1 --shape base --dtype bf16 # the detected kernel: AMX where granted
            ;;
        esac
    }
    group() { # group G: the rows N ≡ G (mod groups), on two cores of its own, logged apart
        local g=$1 n
        cpus="${firsts[$((g * 2))]},${firsts[$((g * 2 + 1))]:-${firsts[$((g * 2))]}}"
        log="$out/group-$g.log"
        : >"$log"
        for n in 6 4 0 2 7 5 1 3; do # the f32 rows first where groups run in turn
            [ $((n % groups)) = "$g" ] && rows "$n"
        done
    }
    for ((g = 0; g < groups; g++)); do group "$g" & done
    wait
    log="$out/gpu.log"
    for ((g = 0; g < groups; g++)); do # one file back, where few may come back
        cat "$out/group-$g.log" >>"$log" && rm "$out/group-$g.log"
    done
    say "done after $SECONDS s"
    exit 0
fi
if [ "$mode" = profile ]; then
    bench 60 tch-cuda f32 --train
    bench 60 tch-cuda f32 --train --batch 64
    sampled 40 "ours, training" "$xtask" bench model-worker --shape base --iters 60 --train \
        --backend tch-cuda --parts full --optimizer flat
    sampled 60 "PyTorch, training" python3 xtask/bench/model_reference.py --shape base --iters 60 \
        --threads 16 --train --device cuda
    worker 40 tch-cuda forward-backward flat
    worker 40 tch-cuda full flat --composed-ops
    step 60 "PyTorch's kernels" python3 xtask/bench/model_reference.py --shape base --iters 5 \
        --threads 16 --train --device cuda --profile
    # Launch-bound: a tiny model, one sequence per step; the per-operation cost against PyTorch's.
    step 60 "bench tch-cuda tiny batch 1" "$xtask" bench model --shapes tiny --batch 1 --train \
        --threads 16 --backend tch-cuda --iters 200 --python-device cuda --python python3
    say "done after $SECONDS s"
    exit 0
fi

step 45 "parity tch-cuda f32" "$xtask" parity --backend tch-cuda
tch_ok=$(grep -c "parity: all" "$log")
[ "$mode" = tch ] || step 90 "parity vulkan f32" "$xtask" parity --backend vulkan

bench 90 tch-cuda f32 --train
worker 40 tch-cuda forward-backward flat # the step without the optimizer
worker 40 tch-cuda full flat --composed-attention # attention from Burn's operations, for the ratio
worker 40 tch-cuda full flat --composed-ops # Burn's linear, layer norm, softmax and dropout, for the ratio
sampled 40 "ours, training" "$xtask" bench model-worker --shape base --iters 60 --train \
    --backend tch-cuda --parts full --optimizer flat
[ "$mode" = tch ] || bench 120 vulkan f32 --train

run_dir=$(mktemp -d)
backend=tch-cuda
[ "$tch_ok" = 1 ] || backend=vulkan
step 120 "pipeline on $backend (small model, 3 trials, 2 epochs)" "$xtask" pipeline \
    --backend "$backend" --config small --trials 3 --epochs 2 --out "$run_dir/pipeline"
cp "$run_dir/pipeline/report.md" "$out/pipeline-report.md" 2>/dev/null

bench 60 tch-cuda bf16 --train
[ "$mode" = tch ] || bench 90 vulkan bf16 --train
bench 60 tch-cuda f32
bench 60 tch-cuda f32 --train --batch 64
bench 60 tch-cuda f32 --train # again: PyTorch's side varies by several per cent between runs
[ "$mode" = tch ] || bench 60 vulkan f32
say "done after $SECONDS s"
