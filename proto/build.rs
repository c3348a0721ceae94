//! Generates the Rust code for Herald's protobuf files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &["proto/herald/v1/herald.proto", "proto/herald/bus/v1/bus.proto"],
            &["proto"],
        )?;
    Ok(())
}
