//! Compiles `tether/v1/*.proto` with protox (pure Rust, so no system `protoc` is needed) and
//! generates prost messages plus tonic stubs into `OUT_DIR`, along with the encoded descriptor
//! set that the server serves through gRPC reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "tether/v1/common.proto",
    "tether/v1/agent.proto",
    "tether/v1/fleet.proto",
    "tether/v1/admin.proto",
    "tether/v1/command.proto",
    "tether/v1/event.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;
    std::fs::write(
        out_dir.join("tether_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // `Connect` would clash with the transport client's `connect(dst)` constructor; clients
        // are built with `new(channel)` from an explicitly configured `Channel` instead.
        .build_transport(false)
        // Small per-stream buffers: see `src/codec.rs`.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
