//! Compiles `lynx/v1/lynx.proto` with `protox` (pure Rust, no `protoc` needed) and generates the
//! prost messages and tonic client/server into `OUT_DIR`, plus the encoded descriptor set for
//! gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=lynx/v1/lynx.proto");
    let fds = protox::compile(["lynx/v1/lynx.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("lynx_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
