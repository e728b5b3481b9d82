//! qc's ONNX bridge: writes a compiled `.qmodel` program as a QDQ ONNX graph ([`export`]), and
//! reads a float ONNX graph from PyTorch's exporters as a recipe ([`import`]).

/// The ONNX protobuf types, generated at build time from `proto/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub mod export;
pub mod import;

pub use export::{encode, export, export_bytes, export_qat, ExportError};
