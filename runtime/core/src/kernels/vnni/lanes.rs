//! What a `vpdpbusd` kernel does with 16 `i32` accumulators, as a trait ([`Lanes`]) so that one
//! driver ([`super::conv`]) serves every instruction set: [`Emulated`] here (portable Rust with
//! the instruction's exact semantics, which runs and is tested on every CPU), and the AVX-512 VNNI
//! and AVX-VNNI implementations in [`super::x86`].

use super::pack::{AddLanes, Requant16, LANES};

/// 16 output channels' accumulators and the operations a VNNI kernel needs on them. Every method
/// is `unsafe`: the caller guarantees the CPU has the implementation's instructions and that the
/// pointers are valid for the bytes named.
pub trait Lanes {
    /// 16 `i32` accumulators (one block of output channels).
    type Acc: Copy;
    /// 64 weight bytes: 16 channels × a quad of 4 `i8`.
    type W: Copy;

    /// All zero.
    ///
    /// # Safety
    /// The implementation's instructions present.
    unsafe fn zero() -> Self::Acc;
    /// The 16 `i32` at `p` (unaligned): accumulators computed elsewhere (the AMX kernels' stored
    /// C tiles), for [`Lanes::store`].
    ///
    /// # Safety
    /// See [`Lanes`].
    unsafe fn load_acc(p: *const i32) -> Self::Acc;
    /// The 64 bytes at `w` (unaligned).
    ///
    /// # Safety
    /// The implementation's instructions present; 64 bytes readable at `w`.
    unsafe fn load_w(w: *const i8) -> Self::W;
    /// `vpdpbusd`: lane `j` += `Σ_i x[i] · w[4j + i]` (`x` the 4 `u8` at `x`, `w` as `i8`),
    /// wrapping, no saturation.
    ///
    /// # Safety
    /// The implementation's instructions present; 4 bytes readable at `x`.
    unsafe fn dot(acc: Self::Acc, x: *const u8, w: Self::W) -> Self::Acc;
    /// [`Requant16::apply`] on the first `n` lanes, written to `out[0..n]`.
    ///
    /// # Safety
    /// The implementation's instructions present; `n <= 16` bytes writable at `out`.
    unsafe fn store(acc: Self::Acc, r: &Requant16, out: *mut u8, n: usize);
    /// [`Lanes::store`] with a residual add fused: lane `j` is
    /// [`AddLanes::apply`]`(Requant16::apply(j, acc[j]), residual[j])`.
    ///
    /// # Safety
    /// As [`Lanes::store`]; `n` bytes readable at `residual`.
    unsafe fn store_add(acc: Self::Acc, r: &Requant16, add: &AddLanes, residual: *const u8, out: *mut u8, n: usize);
}

/// The portable implementation: plain arrays, exactly what the instructions compute.
#[derive(Clone, Copy, Debug)]
pub struct Emulated;

impl Lanes for Emulated {
    type Acc = [i32; LANES];
    type W = [i8; 4 * LANES];

    #[inline(always)]
    unsafe fn zero() -> [i32; LANES] {
        [0; LANES]
    }

    #[inline(always)]
    unsafe fn load_acc(p: *const i32) -> [i32; LANES] {
        std::ptr::read_unaligned(p as *const [i32; LANES])
    }

    #[inline(always)]
    unsafe fn load_w(w: *const i8) -> [i8; 4 * LANES] {
        std::ptr::read_unaligned(w as *const [i8; 4 * LANES])
    }

    #[inline(always)]
    unsafe fn dot(mut acc: [i32; LANES], x: *const u8, w: [i8; 4 * LANES]) -> [i32; LANES] {
        let x = std::ptr::read_unaligned(x as *const [u8; 4]);
        for (j, a) in acc.iter_mut().enumerate() {
            let s: i32 = (0..4).map(|i| x[i] as i32 * w[4 * j + i] as i32).sum();
            *a = a.wrapping_add(s);
        }
        acc
    }

    #[inline(always)]
    unsafe fn store(acc: [i32; LANES], r: &Requant16, out: *mut u8, n: usize) {
        for (j, &a) in acc.iter().enumerate().take(n) {
            *out.add(j) = r.apply(j, a);
        }
    }

    #[inline(always)]
    unsafe fn store_add(acc: [i32; LANES], r: &Requant16, add: &AddLanes, residual: *const u8, out: *mut u8, n: usize) {
        for (j, &a) in acc.iter().enumerate().take(n) {
            *out.add(j) = add.apply(r.apply(j, a), *residual.add(j));
        }
    }
}
