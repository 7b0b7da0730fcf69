#!/usr/bin/env bash
# Builds the binaries gpu/check.sh runs on a GPU machine (which has no Rust toolchain): release
# builds (the end-to-end figures include host-side time), stripped, into gpu/bin/ (git-ignored;
# carry that folder to the GPU machine).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -p lynx-worker --bin lynx-worker -p lynx-client --bin lynx
target="${CARGO_TARGET_DIR:-$root/target}/release"
mkdir -p gpu/bin
for bin in lynx-worker lynx; do
  strip -o "gpu/bin/$bin" "$target/$bin"
done
ls -l gpu/bin
