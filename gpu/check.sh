#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, its driver, CUDA 13 libraries and PyTorch, but no
# Rust toolchain: the lynx-worker binary is built beforehand (x86_64) and found at $LYNX_WORKER
# (default gpu/bin/lynx-worker). Finds the CUDA libraries, then runs the parts named in $PARTS
# (default: kernels,model,e2e):
#   kernels  kernel selftest and bench, the same shapes through PyTorch SDPA -> report.md
#   model    the whole forward on the GPU (f32, bf16) vs the host mirror on the fixture and on a
#            random `small` (head dims the tensor-core kernels take) -> model.txt
#   e2e      random-weight lynx-7b end to end vs HF transformers generate() and timm EVA-g
#            -> e2e.jsonl, e2e.md
#   startup  the kernels at a worker's start: compiled (empty cache), read from the cache, read
#            from a folder `lynx-worker compile-kernels` filled (as in the image) -> startup.txt
#   serve    `lynx-worker serve --device cuda --dtype bf16 --random-weights lynx-7b` on loopback,
#            answered by `lynx generate` and `lynx bench` (client at $LYNX_CLIENT, default
#            gpu/bin/lynx) -> serve.log, generate.txt, bench.txt
# Results go to $OUT (default gpu/out), with the logs.
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

parts=",${PARTS:-startup,kernels,model,e2e,serve},"
status=0
if [[ $parts == *,startup,* ]]; then
  echo "== kernels at start: compiled, cached, prebuilt"
  cold="$out/startup-cache"
  rm -rf "$cold" "$out/startup-prebuilt"
  : >"$out/startup.txt"
  LYNX_KERNEL_DIR="$out/startup-none" LYNX_CACHE_DIR="$cold" "$bin" gpu-info \
    >>"$out/startup.txt" 2>>"$out/startup.log" || status=1
  LYNX_KERNEL_DIR="$out/startup-none" LYNX_CACHE_DIR="$cold" "$bin" gpu-info \
    >>"$out/startup.txt" 2>>"$out/startup.log" || status=1
  "$bin" compile-kernels --out "$out/startup-prebuilt" >>"$out/startup.log" 2>>"$out/startup.txt" || status=1
  LYNX_KERNEL_DIR="$out/startup-prebuilt" LYNX_CACHE_DIR="$out/startup-empty" "$bin" gpu-info \
    >>"$out/startup.txt" 2>>"$out/startup.log" || status=1
  cat "$out/startup.txt"
fi
if [[ $parts == *,kernels,* ]]; then
  echo "== gpu-selftest"
  "$bin" gpu-selftest 2>"$out/selftest.log" | tee "$out/selftest.txt" || status=1
  tail -3 "$out/selftest.log"
  echo "== gpu-bench"
  "$bin" gpu-bench --json --iters "${ITERS:-30}" >"$out/ours.jsonl" 2>"$out/bench.log" || status=1
  tail -3 "$out/bench.log"
  echo "== PyTorch SDPA on the same shapes"
  PYTHONUNBUFFERED=1 python3 "$here/sdpa_bench.py" "$out/ours.jsonl" "$out/report.md" --iters "${ITERS:-30}" 2>"$out/sdpa.log" || status=1
  tail -5 "$out/sdpa.log"
fi
if [[ $parts == *,model,* ]]; then
  echo "== gpu-check-model (fixture: $here/../tests/data/tiny)"
  "$bin" gpu-check-model --fixture "$here/../tests/data/tiny" 2>"$out/model.log" | tee "$out/model.txt" || status=1
  tail -3 "$out/model.log"
  # The fixture's head dims (16) run the generic attention; `small` (64) runs the tensor-core
  # attention and projection kernels inside the whole forward.
  echo "== gpu-check-model --random-weights small"
  "$bin" gpu-check-model --random-weights small 2>>"$out/model.log" | tee -a "$out/model.txt" || status=1
  tail -3 "$out/model.log"
fi
if [[ $parts == *,e2e,* ]]; then
  echo "== gpu-bench --e2e (random lynx-7b)"
  "$bin" gpu-bench --e2e --json --iters "${ITERS:-30}" >"$out/e2e.jsonl" 2>"$out/e2e.log" || status=1
  tail -3 "$out/e2e.log"
  echo "== HF transformers and timm on the same work"
  PYTHONUNBUFFERED=1 python3 "$here/e2e_peers.py" "$out/e2e.jsonl" "$out/e2e.md" 2>"$out/peers.log" || status=1
  tail -8 "$out/peers.log"
fi
if [[ $parts == *,serve,* ]]; then
  client="${LYNX_CLIENT:-$here/bin/lynx}"
  echo "== serve --device cuda --random-weights lynx-7b (loopback)"
  "$bin" serve --device cuda --dtype bf16 --random-weights lynx-7b --grpc-addr 127.0.0.1:50151 \
    --http-addr 127.0.0.1:9191 --max-batch-size 64 --max-batch-total-tokens 16384 >"$out/serve.log" 2>&1 &
  server=$!
  ready=0
  for _ in $(seq 1 240); do
    if python3 -c 'import urllib.request,sys; sys.exit(0 if urllib.request.urlopen("http://127.0.0.1:9191/readyz").status == 200 else 1)' 2>/dev/null; then
      ready=1
      break
    fi
    kill -0 $server 2>/dev/null || break
    sleep 1
  done
  if [[ $ready == 1 ]]; then
    img="$here/../tests/data/tiny/inputs/img_landscape.png"
    "$client" generate --addr http://127.0.0.1:50151 --image "$img" --prompt "What is in the image?" \
      --max-new-tokens 16 | tee "$out/generate.txt" || status=1
    "$client" bench --addr http://127.0.0.1:50151 --concurrency 1,8,32,64 --requests 64 \
      --max-new-tokens 32 --no-progress --svg "$out/bench.svg" | tee "$out/bench.txt" || status=1
  else
    echo "the worker never became ready"; status=1
  fi
  kill -TERM $server 2>/dev/null; wait $server
  tail -5 "$out/serve.log"
fi
exit $status
