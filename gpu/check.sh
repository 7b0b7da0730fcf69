#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, its driver, CUDA 13 libraries and PyTorch, but no
# Rust toolchain: the lynx-worker binary is built beforehand (x86_64) and found at $LYNX_WORKER
# (default gpu/bin/lynx-worker). Finds the CUDA libraries, runs the kernel selftest and bench,
# then the same shapes through PyTorch SDPA, and prints one table. Results go to $OUT (default
# gpu/out): selftest.txt, ours.jsonl, report.md, and the logs.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${LYNX_WORKER:-$here/bin/lynx-worker}"
out="${OUT:-$here/out}"
mkdir -p "$out"

# CUDA libraries: the driver's folder, the toolkit's, and PyTorch's pip wheels.
pip_lib="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
for dir in /usr/local/nvidia/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 "$pip_lib"; do
  if [[ -n "$dir" && ( -e "$dir/libcuda.so.1" || -e "$dir/libnvrtc.so.13" ) ]]; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
export LYNX_CACHE_DIR="${LYNX_CACHE_DIR:-$out/cache}"

status=0
echo "== gpu-selftest"
"$bin" gpu-selftest 2>"$out/selftest.log" | tee "$out/selftest.txt" || status=1
tail -3 "$out/selftest.log"
echo "== gpu-bench"
"$bin" gpu-bench --json --iters "${ITERS:-30}" >"$out/ours.jsonl" 2>"$out/bench.log" || status=1
tail -3 "$out/bench.log"
echo "== PyTorch SDPA on the same shapes"
PYTHONUNBUFFERED=1 python3 "$here/sdpa_bench.py" "$out/ours.jsonl" "$out/report.md" --iters "${ITERS:-30}" 2>"$out/sdpa.log" || status=1
tail -5 "$out/sdpa.log"
exit $status
