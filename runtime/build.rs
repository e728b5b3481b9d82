//! Passes libtorch's library folder on to the crates that link test binaries and the `qc` binary,
//! so that they can set an rpath (tch's own build script only tells its direct dependents).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:libtorch_lib={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
