//! AMX-INT8 (`tdpbusd` on tiles) for convolution and linear layers: whether this CPU and its
//! kernel let the process use it ([`permission`]); the tile operations as a trait with two
//! implementations, the instructions through `asm!` and an exact emulation ([`tiles`]); and one
//! convolution driver generic over them ([`conv`]), an implicit GEMM on the VNNI weight pack
//! (B tiles), the padded NHWC input (A tiles) and the `vpdpbusd` kernels' epilogue, all shared
//! with [`super::vnni`]. `Isa::Amx` runs [`conv::range_amx`] through [`super::vnni::run`]'s
//! threading; the emulated driver ([`conv::range_emulated`]) is tested on every CPU.

pub mod conv;
pub mod tiles;

use std::sync::OnceLock;

/// Why AMX cannot run here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmxError {
    #[error("the CPU has no AMX-INT8 (CPUID leaf 7: AMX-TILE and AMX-INT8)")]
    NoCpuSupport,
    #[error("Linux refused the AMX tile state (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) returned {0})")]
    Refused(i64),
    #[error("AMX needs Linux on x86_64")]
    NotLinux,
}

/// `Ok` once this process may execute tile instructions: the CPU reports AMX-TILE and AMX-INT8,
/// and Linux granted the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
/// asked once; without it the first tile instruction kills the process with SIGILL).
pub fn permission() -> Result<(), AmxError> {
    static GRANTED: OnceLock<Result<(), AmxError>> = OnceLock::new();
    GRANTED.get_or_init(ask).clone()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn ask() -> Result<(), AmxError> {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID is always available on x86_64 (an `unsafe fn` before Rust 1.87).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let (tile, int8) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
    if !(tile && int8) {
        return Err(AmxError::NoCpuSupport);
    }
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    // SAFETY: arch_prctl (syscall 158) with these arguments only changes this process's
    // permission to use the tile state; the syscall clobbers rcx and r11.
    let ret: i64;
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret == 0 {
        Ok(())
    } else {
        Err(AmxError::Refused(ret))
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn ask() -> Result<(), AmxError> {
    Err(AmxError::NotLinux)
}
