//! Sets an rpath to libtorch for the `qc` binary and its tests when the runtime is built with tch.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_QC_RUNTIME_RPATH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_QC_RUNTIME_RPATH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
