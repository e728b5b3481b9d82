//! Compiles the committed `proto/onnx.proto` into Rust types with prost-build, parsing it with
//! protox (pure Rust: no `protoc` binary needed).
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = match protox::compile(["onnx.proto"], ["proto"]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot parse proto/onnx.proto: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        eprintln!("cannot generate the ONNX types: {e}");
        std::process::exit(1);
    }
}
