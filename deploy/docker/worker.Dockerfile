# syntax=docker/dockerfile:1
# lynx-worker image: the worker `lynx-worker`, the client `lynx` and the router `lynx-router` (the
# operator runs the router from this image unless spec.router.image says otherwise).
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/lynx-serve/lynx-worker:0.1.0 .
# The GPU path loads libcuda (the driver) and NVRTC at run time: the CUDA runtime base image brings
# NVRTC, and the NVIDIA container toolkit mounts the node's driver libraries into the container
# (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES below, or the device plugin's GPU request).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lynx-worker --bin lynx-worker -p lynx-client --bin lynx \
 && cargo build --release --locked -p lynx-router --bin lynx-router \
 && install -D -t /out target/release/lynx-worker target/release/lynx target/release/lynx-router

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build /out/lynx-worker /out/lynx /out/lynx-router /usr/local/bin/
# The GPU kernels compiled once, here (NVRTC needs no GPU), for A100, A10/A40, L4/L40S, H100/H200,
# B200 and RTX 50 / RTX PRO Blackwell: a worker finds them in /usr/local/share/lynx-serve/kernels
# and compiles nothing at start (another architecture is compiled at its first start and kept in
# LYNX_CACHE_DIR).
RUN /usr/local/bin/lynx-worker compile-kernels --out /usr/local/share/lynx-serve/kernels
# The same non-root uid/gid the operator's pod security context sets.
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/lynx-worker"]
CMD ["serve", "--help"]
