#!/usr/bin/env bash
# Packs this machine's `perf` with the shared libraries it links, but the C and C++ runtimes
# (the GPU machine's own are newer and must be the ones loaded), into .gpu/perf.tar.xz, which
# `xtask/bench/gpu.sh … cpu` unpacks to profile the host CPU of a GPU machine that has no perf.
# Usage, from the repository root: xtask/bench/perf-bundle.sh
set -euo pipefail
perf=$(command -v perf)
bundle=$(mktemp -d)
trap 'rm -rf "$bundle"' EXIT
mkdir -p "$bundle/lib" .gpu
cp "$(readlink -f "$perf")" "$bundle/perf"
ldd "$perf" | awk '$3 ~ /^\// { print $3 }' | while read -r lib; do
    case $(basename "$lib") in
    libc.so* | libm.so* | libstdc++* | libgcc_s* | ld-linux*) ;;
    *) cp -L "$lib" "$bundle/lib/" ;;
    esac
done
tar -cJf .gpu/perf.tar.xz -C "$bundle" .
echo ".gpu/perf.tar.xz: $(du -h .gpu/perf.tar.xz | cut -f1), $(ls "$bundle/lib" | wc -l) libraries"
