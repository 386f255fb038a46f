//! Compiles `proto/` with protox (pure Rust), so the build needs no system `protoc`.

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["metapb", "errorpb", "kvrpcpb", "tikvpb", "pdpb", "keyspacepb", "scandium"]
        .map(|name| proto_dir.join(format!("{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto_dir]).expect("proto files compile");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptor_path = out_dir.join("descriptors.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))
        .expect("descriptor set written");
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        // Methods a service has no handler for answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // A BatchCommands request's commands, boxed: inline, each costs the largest
        // command's size (hundreds of bytes) however few bytes it took on the wire, and a
        // 10 MiB request of millions of empty commands decoded into gigabytes.
        .boxed(".tikvpb.BatchCommandsRequest.Request.cmd")
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile(&files, &[&proto_dir])
        .expect("code generated");
}
