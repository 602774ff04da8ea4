//! Generates the intent service from `proto/` (needs `protoc`, installed by `make deps`).
fn main() {
    let proto = "../../proto/cilia/intent/v1/intent.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .compile_protos(&[proto], &["../../proto"])
        .expect("compiling proto/cilia/intent/v1/intent.proto (is protoc installed? `make deps`)");
}
