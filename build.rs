//! Sets an rpath to libtorch for the test binaries (and the `qc` binary) of every crate that names
//! this script as its `build`, when the runtime is built with tch: the root package, qc-compiler
//! and qc-fuzz-harness. Only direct dependents of qc-runtime-host see the variable.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_QC_RUNTIME_RPATH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_QC_RUNTIME_RPATH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
