# syntax=docker/dockerfile:1
# lynx-operator image. Build from the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/lynx-serve/lynx-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lynx-operator \
 && install -D target/release/lynx-operator /out/lynx-operator

# glibc, CA certificates and a non-root user (65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/lynx-operator /usr/local/bin/lynx-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lynx-operator"]
CMD ["run"]
