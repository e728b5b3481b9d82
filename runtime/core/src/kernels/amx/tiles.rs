//! The AMX tile operations as a trait ([`Tiles`]), so that one driver ([`super::conv`]) runs on
//! the real instructions ([`Amx`]: `ldtilecfg`, `tilezero`, `tileloadd`, `tdpbusd`, `tilestored`,
//! `tilerelease` through `asm!`) and on [`Emulated`] tiles (plain arrays with the instructions'
//! exact semantics, which run and are tested on every CPU).
//!
//! Register roles are fixed: `tmm0..tmm3` accumulate ([`CTile`]), `tmm4`, `tmm5` hold
//! activations ([`ATile`]), `tmm6`, `tmm7` weights ([`BTile`]). A tile register's number must be
//! literal in the instruction text, so each (C, A, B) triple is its own instruction; the types
//! name only the triples the driver uses.

/// Rows of a tile (palette 1).
pub const MAX_ROWS: usize = 16;
/// Bytes per tile row (palette 1).
pub const MAX_COLSB: usize = 64;

/// A tile register, `tmm0..tmm7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tmm {
    T0,
    T1,
    T2,
    T3,
    T4,
    T5,
    T6,
    T7,
}

/// An accumulator tile (`i32`): `tmm0..tmm3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CTile {
    C0,
    C1,
    C2,
    C3,
}

/// An activation tile (`u8`, the `A` of `tdpbusd`): `tmm4`, `tmm5`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ATile {
    A0,
    A1,
}

/// A weight tile (`i8` in VNNI layout, the `B` of `tdpbusd`): `tmm6`, `tmm7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BTile {
    B0,
    B1,
}

impl CTile {
    /// `C0..C3` by index `i < 4` (`i % 4` otherwise).
    pub fn nth(i: usize) -> CTile {
        [CTile::C0, CTile::C1, CTile::C2, CTile::C3][i % 4]
    }
    pub fn tmm(self) -> Tmm {
        [Tmm::T0, Tmm::T1, Tmm::T2, Tmm::T3][self as usize]
    }
}

impl ATile {
    /// `A0`, `A1` by index `i < 2` (`i % 2` otherwise).
    pub fn nth(i: usize) -> ATile {
        [ATile::A0, ATile::A1][i % 2]
    }
    pub fn tmm(self) -> Tmm {
        [Tmm::T4, Tmm::T5][self as usize]
    }
}

impl BTile {
    /// `B0`, `B1` by index `i < 2` (`i % 2` otherwise).
    pub fn nth(i: usize) -> BTile {
        [BTile::B0, BTile::B1][i % 2]
    }
    pub fn tmm(self) -> Tmm {
        [Tmm::T6, Tmm::T7][self as usize]
    }
}

/// The 64-byte operand of `ldtilecfg` (palette 1): byte 0 the palette, byte 1 the start row
/// (0), bytes `16 + 2t..18 + 2t` tile `t`'s bytes per row (`colsb`, `u16` little endian), byte
/// `48 + t` its rows; everything else 0. A tile with 0 rows is unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TileConfig {
    bytes: [u8; 64],
}

impl Default for TileConfig {
    fn default() -> Self {
        TileConfig::new()
    }
}

impl TileConfig {
    /// Palette 1, every tile unused.
    pub fn new() -> TileConfig {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        TileConfig { bytes }
    }

    /// With tile `t` shaped `rows × colsb` bytes (clamped to 16 × 64, palette 1's maximum).
    pub fn with(mut self, t: Tmm, rows: usize, colsb: usize) -> TileConfig {
        let t = t as usize;
        let colsb = colsb.min(MAX_COLSB) as u16;
        self.bytes[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
        self.bytes[48 + t] = rows.min(MAX_ROWS) as u8;
        self
    }

    pub fn rows(&self, t: Tmm) -> usize {
        self.bytes[48 + t as usize] as usize
    }

    pub fn colsb(&self, t: Tmm) -> usize {
        let t = t as usize;
        u16::from_le_bytes([self.bytes[16 + 2 * t], self.bytes[17 + 2 * t]]) as usize
    }

    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

/// The tile operations a `tdpbusd` kernel needs. Every method is `unsafe`: the caller
/// guarantees the CPU runs the implementation (for [`Amx`]: AMX-INT8 and the process's permission,
/// `super::permission`), that [`Tiles::configure`] came first, that the shapes agree
/// (`A.colsb = 4 · B.rows`, `C.rows = A.rows`, `C.colsb = B.colsb`) and that the pointers are
/// valid for the rows and bytes the configuration names.
pub trait Tiles: Default {
    /// `ldtilecfg`: shapes every tile and zeroes all of them.
    ///
    /// # Safety
    /// See [`Tiles`].
    unsafe fn configure(&mut self, cfg: &TileConfig);
    /// `tilezero`: tile `c` all zero.
    ///
    /// # Safety
    /// See [`Tiles`].
    unsafe fn zero(&mut self, c: CTile);
    /// `tileloadd`: row `r < rows` of tile `t` is the `colsb` bytes at `ptr + r · stride`; the
    /// rest of the tile is zero.
    ///
    /// # Safety
    /// See [`Tiles`].
    unsafe fn load(&mut self, t: Tmm, ptr: *const u8, stride: usize);
    /// `tdpbusd c, a, b`: `C[m][n] += Σ_{k < A.colsb/4, i < 4} A[m][4k+i] · B[k][4n+i]` for
    /// `m < C.rows`, `n < C.colsb / 4` (`A` as `u8`, `B` as `i8`, `i32` wrapping, no saturation).
    ///
    /// # Safety
    /// See [`Tiles`].
    unsafe fn dpbusd(&mut self, c: CTile, a: ATile, b: BTile);
    /// `tilestored`: the `colsb` bytes of row `r < rows` of tile `c` to `ptr + r · stride`.
    ///
    /// # Safety
    /// See [`Tiles`].
    unsafe fn store(&mut self, c: CTile, ptr: *mut u8, stride: usize);
    /// `tilerelease`: back to the unconfigured state.
    ///
    /// # Safety
    /// See [`Tiles`].
    unsafe fn release(&mut self);
}

/// The portable implementation: 8 tiles of 16 rows × 64 bytes and the configuration, exactly
/// what the instructions compute (rows and bytes past the configured shape read as 0).
#[derive(Clone, Debug)]
pub struct Emulated {
    cfg: TileConfig,
    t: [[[u8; MAX_COLSB]; MAX_ROWS]; 8],
}

impl Default for Emulated {
    fn default() -> Self {
        Emulated {
            cfg: TileConfig::new(),
            t: [[[0; MAX_COLSB]; MAX_ROWS]; 8],
        }
    }
}

impl Emulated {
    /// Row `r` of tile `t` as bytes (for tests).
    pub fn row(&self, t: Tmm, r: usize) -> &[u8; MAX_COLSB] {
        &self.t[t as usize][r % MAX_ROWS]
    }

    /// The `i32` at column `n` of row `m` of a tile.
    fn dword(&self, t: Tmm, m: usize, n: usize) -> [u8; 4] {
        let row = &self.t[t as usize][m];
        [row[4 * n], row[4 * n + 1], row[4 * n + 2], row[4 * n + 3]]
    }
}

impl Tiles for Emulated {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        self.cfg = *cfg;
        self.t = [[[0; MAX_COLSB]; MAX_ROWS]; 8];
    }

    unsafe fn zero(&mut self, c: CTile) {
        self.t[c.tmm() as usize] = [[0; MAX_COLSB]; MAX_ROWS];
    }

    unsafe fn load(&mut self, t: Tmm, ptr: *const u8, stride: usize) {
        let (rows, colsb) = (self.cfg.rows(t), self.cfg.colsb(t));
        for (r, row) in self.t[t as usize].iter_mut().enumerate() {
            *row = [0; MAX_COLSB];
            if r < rows {
                std::ptr::copy_nonoverlapping(ptr.add(r * stride), row.as_mut_ptr(), colsb);
            }
        }
    }

    unsafe fn dpbusd(&mut self, c: CTile, a: ATile, b: BTile) {
        let (c, a, b) = (c.tmm(), a.tmm(), b.tmm());
        let (rows, colsb) = (self.cfg.rows(c), self.cfg.colsb(c));
        let quads = self.cfg.colsb(a) / 4;
        let mut out = [[0u8; MAX_COLSB]; MAX_ROWS];
        for (m, out_row) in out.iter_mut().enumerate().take(rows) {
            for n in 0..colsb / 4 {
                let mut acc = i32::from_le_bytes(self.dword(c, m, n));
                for k in 0..quads {
                    let (x, w) = (self.dword(a, m, k), self.dword(b, k, n));
                    for i in 0..4 {
                        acc = acc.wrapping_add(x[i] as i32 * w[i] as i8 as i32);
                    }
                }
                out_row[4 * n..4 * n + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
        self.t[c as usize] = out;
    }

    unsafe fn store(&mut self, c: CTile, ptr: *mut u8, stride: usize) {
        let t = c.tmm();
        let (rows, colsb) = (self.cfg.rows(t), self.cfg.colsb(t));
        for (r, row) in self.t[t as usize].iter().enumerate().take(rows) {
            std::ptr::copy_nonoverlapping(row.as_ptr(), ptr.add(r * stride), colsb);
        }
    }

    unsafe fn release(&mut self) {
        *self = Emulated::default();
        self.cfg = TileConfig { bytes: [0; 64] };
    }
}

/// The instructions themselves (AMX-TILE, AMX-INT8), through `asm!` in Intel syntax.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Amx;

#[cfg(target_arch = "x86_64")]
impl Tiles for Amx {
    #[inline(always)]
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        // SAFETY: the caller's conditions; `cfg` is 64 readable bytes.
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            cfg = in(reg) cfg.bytes.as_ptr(),
            options(nostack, readonly, preserves_flags)
        );
    }

    #[inline(always)]
    unsafe fn zero(&mut self, c: CTile) {
        macro_rules! zero {
            ($n:literal) => {
                // SAFETY: the caller's conditions (tiles configured).
                std::arch::asm!(concat!("tilezero tmm", $n), options(nostack, preserves_flags))
            };
        }
        match c {
            CTile::C0 => zero!(0),
            CTile::C1 => zero!(1),
            CTile::C2 => zero!(2),
            CTile::C3 => zero!(3),
        }
    }

    #[inline(always)]
    unsafe fn load(&mut self, t: Tmm, ptr: *const u8, stride: usize) {
        macro_rules! load {
            ($n:literal) => {
                // SAFETY: the caller's conditions: `rows` rows of `colsb` bytes readable at
                // `ptr + r · stride`.
                std::arch::asm!(
                    concat!("tileloadd tmm", $n, ", [{base} + {stride}*1]"),
                    base = in(reg) ptr,
                    stride = in(reg) stride,
                    options(nostack, readonly, preserves_flags)
                )
            };
        }
        match t {
            Tmm::T0 => load!(0),
            Tmm::T1 => load!(1),
            Tmm::T2 => load!(2),
            Tmm::T3 => load!(3),
            Tmm::T4 => load!(4),
            Tmm::T5 => load!(5),
            Tmm::T6 => load!(6),
            Tmm::T7 => load!(7),
        }
    }

    #[inline(always)]
    unsafe fn dpbusd(&mut self, c: CTile, a: ATile, b: BTile) {
        macro_rules! dp {
            ($c:literal, $a:literal, $b:literal) => {
                // SAFETY: the caller's conditions (tiles configured, shapes agree).
                std::arch::asm!(
                    concat!("tdpbusd tmm", $c, ", tmm", $a, ", tmm", $b),
                    options(nostack, preserves_flags)
                )
            };
        }
        use {ATile::*, BTile::*, CTile::*};
        match (c, a, b) {
            (C0, A0, B0) => dp!(0, 4, 6),
            (C0, A0, B1) => dp!(0, 4, 7),
            (C0, A1, B0) => dp!(0, 5, 6),
            (C0, A1, B1) => dp!(0, 5, 7),
            (C1, A0, B0) => dp!(1, 4, 6),
            (C1, A0, B1) => dp!(1, 4, 7),
            (C1, A1, B0) => dp!(1, 5, 6),
            (C1, A1, B1) => dp!(1, 5, 7),
            (C2, A0, B0) => dp!(2, 4, 6),
            (C2, A0, B1) => dp!(2, 4, 7),
            (C2, A1, B0) => dp!(2, 5, 6),
            (C2, A1, B1) => dp!(2, 5, 7),
            (C3, A0, B0) => dp!(3, 4, 6),
            (C3, A0, B1) => dp!(3, 4, 7),
            (C3, A1, B0) => dp!(3, 5, 6),
            (C3, A1, B1) => dp!(3, 5, 7),
        }
    }

    #[inline(always)]
    unsafe fn store(&mut self, c: CTile, ptr: *mut u8, stride: usize) {
        macro_rules! store {
            ($n:literal) => {
                // SAFETY: the caller's conditions: `rows` rows of `colsb` bytes writable at
                // `ptr + r · stride`.
                std::arch::asm!(
                    concat!("tilestored [{base} + {stride}*1], tmm", $n),
                    base = in(reg) ptr,
                    stride = in(reg) stride,
                    options(nostack, preserves_flags)
                )
            };
        }
        match c {
            CTile::C0 => store!(0),
            CTile::C1 => store!(1),
            CTile::C2 => store!(2),
            CTile::C3 => store!(3),
        }
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        // SAFETY: the caller's conditions (AMX present and permitted).
        std::arch::asm!("tilerelease", options(nostack, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ldtilecfg` operand byte for byte: palette 1 at byte 0, `colsb` as `u16` little endian
    /// at `16 + 2t`, rows at `48 + t`, zeros elsewhere; shapes clamped to 16 × 64.
    #[test]
    fn tile_config_layout() {
        let cfg = TileConfig::new()
            .with(Tmm::T0, 16, 64)
            .with(Tmm::T3, 5, 40)
            .with(Tmm::T7, 99, 300);
        let mut want = [0u8; 64];
        want[0] = 1;
        (want[16], want[48]) = (64, 16);
        (want[22], want[51]) = (40, 5);
        (want[30], want[55]) = (64, 16);
        assert_eq!(cfg.as_bytes(), &want);
        assert_eq!((cfg.rows(Tmm::T3), cfg.colsb(Tmm::T3)), (5, 40));
        assert_eq!((cfg.rows(Tmm::T7), cfg.colsb(Tmm::T7)), (16, 64));
        assert_eq!(std::mem::align_of::<TileConfig>(), 64);
        assert_eq!(std::mem::size_of::<TileConfig>(), 64);
    }

    /// The roles' registers: C tiles `tmm0..3`, A `tmm4, 5`, B `tmm6, 7`.
    #[test]
    fn tile_roles() {
        let c: Vec<Tmm> = (0..4).map(|i| CTile::nth(i).tmm()).collect();
        assert_eq!(c, [Tmm::T0, Tmm::T1, Tmm::T2, Tmm::T3]);
        assert_eq!([ATile::A0.tmm(), ATile::A1.tmm()], [Tmm::T4, Tmm::T5]);
        assert_eq!([BTile::B0.tmm(), BTile::B1.tmm()], [Tmm::T6, Tmm::T7]);
    }
}
