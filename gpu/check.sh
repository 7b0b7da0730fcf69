#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, its driver, CUDA 13 libraries and PyTorch, but no
# Rust toolchain: the lynx-worker binary is built beforehand (x86_64, `bash gpu/build.sh`) and
# found at $LYNX_WORKER (default gpu/bin/lynx-worker). Finds the CUDA libraries, then runs the
# parts named in $PARTS (default: every one, in this order):
#   startup  the kernels at a worker's start: compiled (empty cache), read from the cache, read
#            from a folder `lynx-worker compile-kernels` filled (as in the image) -> startup.txt
#   kernels  kernel selftest and bench, the same shapes through PyTorch SDPA -> report.md
#   model    the whole forward on the GPU (f32, bf16) vs the host mirror on the fixture and on a
#            random `small` (head dims the tensor-core kernels take) -> model.txt
#   e2e      random-weight lynx-7b end to end vs HF transformers generate() and timm EVA-g
#            -> e2e.jsonl, e2e.md
#   serve    `lynx-worker serve --device cuda --dtype bf16 --random-weights lynx-7b` on loopback,
#            answered by `lynx generate` and `lynx bench` (client at $LYNX_CLIENT, default
#            gpu/bin/lynx) -> serve.log, generate.txt, bench.txt
# Everything is written to a scratch folder ($WORK, default a fresh temporary one; the kernel
# cache and generated models included); $OUT (default gpu/out) receives two files only:
# summary.md (each part's status, seconds and main output) and results.tar.gz (every output and
# log, no caches).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${LYNX_WORKER:-$here/bin/lynx-worker}"
results="${OUT:-$here/out}"
out="${WORK:-$(mktemp -d)}"
mkdir -p "$results" "$out"

# CUDA libraries: the driver's folder, the toolkit's, and PyTorch's pip wheels.
pip_lib="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
for dir in /usr/local/nvidia/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 "$pip_lib"; do
  if [[ -n "$dir" && ( -e "$dir/libcuda.so.1" || -e "$dir/libnvrtc.so.13" ) ]]; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
  >"$out/device.txt" 2>&1 || echo "nvidia-smi failed" >>"$out/device.txt"
cat "$out/device.txt"
export LYNX_CACHE_DIR="${LYNX_CACHE_DIR:-$out/cache}"

status=0
part_status=0
fail() { part_status=1; status=1; }

part_startup() {
  local cold="$out/startup-cache"
  rm -rf "$cold" "$out/startup-prebuilt"
  : >"$out/startup.txt"
  LYNX_KERNEL_DIR="$out/startup-none" LYNX_CACHE_DIR="$cold" "$bin" gpu-info \
    >>"$out/startup.txt" 2>>"$out/startup.log" || fail
  LYNX_KERNEL_DIR="$out/startup-none" LYNX_CACHE_DIR="$cold" "$bin" gpu-info \
    >>"$out/startup.txt" 2>>"$out/startup.log" || fail
  "$bin" compile-kernels --out "$out/startup-prebuilt" >>"$out/startup.log" 2>>"$out/startup.txt" || fail
  LYNX_KERNEL_DIR="$out/startup-prebuilt" LYNX_CACHE_DIR="$out/startup-empty" "$bin" gpu-info \
    >>"$out/startup.txt" 2>>"$out/startup.log" || fail
  cat "$out/startup.txt"
}

part_kernels() {
  "$bin" gpu-selftest 2>"$out/selftest.log" | tee "$out/selftest.txt" || fail
  tail -3 "$out/selftest.log"
  "$bin" gpu-bench --json --iters "${ITERS:-30}" >"$out/ours.jsonl" 2>"$out/bench.log" || fail
  tail -3 "$out/bench.log"
  echo "-- PyTorch SDPA on the same shapes"
  PYTHONUNBUFFERED=1 python3 "$here/sdpa_bench.py" "$out/ours.jsonl" "$out/report.md" --iters "${ITERS:-30}" 2>"$out/sdpa.log" || fail
  tail -5 "$out/sdpa.log"
}

part_model() {
  "$bin" gpu-check-model --fixture "$here/../tests/data/tiny" 2>"$out/model.log" | tee "$out/model.txt" || fail
  # The fixture's head dims (16) run the generic attention; `small` (64) runs the tensor-core
  # attention and projection kernels inside the whole forward.
  "$bin" gpu-check-model --random-weights small 2>>"$out/model.log" | tee -a "$out/model.txt" || fail
  tail -3 "$out/model.log"
}

part_e2e() {
  "$bin" gpu-bench --e2e --json --iters "${ITERS:-30}" >"$out/e2e.jsonl" 2>"$out/e2e.log" || fail
  tail -3 "$out/e2e.log"
  echo "-- HF transformers and timm on the same work"
  PYTHONUNBUFFERED=1 python3 "$here/e2e_peers.py" "$out/e2e.jsonl" "$out/e2e.md" 2>"$out/peers.log" || fail
  tail -8 "$out/peers.log"
}

part_serve() {
  local client="${LYNX_CLIENT:-$here/bin/lynx}"
  "$bin" serve --device cuda --dtype bf16 --random-weights lynx-7b --grpc-addr 127.0.0.1:50151 \
    --http-addr 127.0.0.1:9191 --max-batch-size 64 --max-batch-total-tokens 16384 >"$out/serve.log" 2>&1 &
  local server=$! ready=0
  for _ in $(seq 1 240); do
    if python3 -c 'import urllib.request,sys; sys.exit(0 if urllib.request.urlopen("http://127.0.0.1:9191/readyz").status == 200 else 1)' 2>/dev/null; then
      ready=1
      break
    fi
    kill -0 $server 2>/dev/null || break
    sleep 1
  done
  if [[ $ready == 1 ]]; then
    local img="$here/../tests/data/tiny/inputs/img_landscape.png"
    "$client" generate --addr http://127.0.0.1:50151 --image "$img" --prompt "What is in the image?" \
      --max-new-tokens 16 | tee "$out/generate.txt" || fail
    "$client" bench --addr http://127.0.0.1:50151 --concurrency 1,8,32,64 --requests 64 \
      --max-new-tokens 32 --no-progress --svg "$out/bench.svg" | tee "$out/bench.txt" || fail
  else
    echo "the worker never became ready"
    fail
  fi
  kill -TERM $server 2>/dev/null
  wait $server
  tail -5 "$out/serve.log"
}

# The main output of each part, quoted in the summary.
declare -A main_output=(
  [startup]=startup.txt [kernels]=report.md [model]=model.txt [e2e]=e2e.md [serve]=bench.txt
)

{
  echo "# gpu/check.sh"
  echo
  echo '```'
  cat "$out/device.txt"
  echo '```'
} >"$out/summary.md"
IFS=',' read -r -a parts <<<"${PARTS:-startup,kernels,model,e2e,serve}"
for p in "${parts[@]}"; do
  if ! declare -F "part_$p" >/dev/null; then
    echo "unknown part $p"
    status=1
    continue
  fi
  echo "== $p"
  part_status=0
  started=$SECONDS
  "part_$p"
  took=$((SECONDS - started))
  verdict=$([[ $part_status == 0 ]] && echo ok || echo FAILED)
  echo "== $p: $verdict in ${took} s"
  {
    echo
    echo "## $p: $verdict in ${took} s"
    echo
    echo '```'
    cat "$out/${main_output[$p]}" 2>/dev/null || echo "(no ${main_output[$p]})"
    echo '```'
  } >>"$out/summary.md"
done

cp "$out/summary.md" "$results/summary.md"
(cd "$out" && tar -czf "$results/results.tar.gz" --exclude='./cache' --exclude='./startup-*' \
  $(ls -1 | grep -E '\.(txt|log|jsonl|md|svg)$'))
echo "results: $results/summary.md, $results/results.tar.gz"
exit $status
