//! The optimised int8 kernels behind one dispatch: the instruction set is detected once at run time
//! ([`detected`]); with AVX2 the kernels of [`super::avx2`] run, otherwise the scalar
//! [`super::reference`] ones. Both give the same bits (tests/kernels_bitexact.rs). On the [`Isa`] paths
//! with VNNI, non-depthwise convolution and linear layers run the `vpdpbusd` kernels of
//! [`super::vnni`]; on [`Isa::Amx`] the `tdpbusd` tile kernels of [`super::amx`].
//!
//! Convolution and linear layers prepack their weights once ([`PackedConv`], [`PackedLinear`]);
//! running one checks the shapes exactly as the reference does and never panics on bad input.
//! Large convolutions are split over rayon's threads by output rows (or by output-channel blocks
//! when there are few rows); layers with more than 128 KiB of packed weights run block-major (a
//! pair of channel blocks over every row while its weights are cached). A 3x3 convolution of one
//! group with at least 16 input channels also packs Winograd `F(2x2, 3x3)` in exact integers
//! ([`super::avx2::WinoPack`]), which runs for stride 1, padding 1. Large elementwise kernels
//! (quantize, dequantize, add, clamp) and max pooling are split over threads too.
//!
//! A convolution or linear layer packed with [`PackedConv::with_input_range`] for an input whose
//! range and zero point lie in `[0, 127]` (PyTorch x86's `reduce_range` activations; the executor
//! passes every input's range) runs the 7-bit `vpmaddubsw` kernels ([`super::avx2::conv7_row`]),
//! bit for bit equal to the others.
//!
//! The parts: [`isa`] (which kernels run), [`conv`] (packing and running convolution and linear
//! layers), [`threads`] (an AVX2 pack over rayon's threads), [`elementwise`] (the other steps).

mod conv;
mod elementwise;
mod isa;
mod threads;

pub use conv::{im2col_pays, qconv2d, qlinear, PackedConv, PackedLinear};
pub use elementwise::*;
pub use isa::{detected, selected, Isa, IsaError};
pub(crate) use threads::SendPtr;
