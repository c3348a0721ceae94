//! Generates the Rust code for Herald's protobuf files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    // A `protoc` from the environment wins (e.g. Debian's protobuf-compiler); otherwise the
    // vendored one, so a fresh machine needs nothing installed to build.
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[
                "proto/herald/v1/herald.proto",
                "proto/herald/bus/v1/bus.proto",
                "proto/herald/admin/v1/admin.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
