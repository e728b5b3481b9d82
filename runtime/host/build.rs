//! Passes libtorch's library folder on to the crates that link test binaries and the `qc` binary,
//! so that they can set an rpath (tch's own build script only tells its direct dependents).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:libtorch_lib={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // rustc links with --as-needed, which drops libtorch_cuda.so (no symbol of it is
        // referenced) and CUDA then reports "not available"; keep it when this libtorch has it.
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
