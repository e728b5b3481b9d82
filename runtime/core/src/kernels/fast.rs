//! The optimised int8 kernels behind one dispatch: the instruction set is detected once at run time
//! ([`detected`]); with AVX2 the kernels of [`super::avx2`] run, otherwise the scalar
//! [`reference`] ones. Both give the same bits (tests/kernels_bitexact.rs). On the [`Isa`] paths
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

use std::sync::OnceLock;

use super::reference;
use super::{
    check_epilogue, check_len, check_range_u8, check_zp_u8, Activation, Conv2dGeom, KernelError, Pool2dGeom,
    QAdaptiveAvgPool2d, QAvgPool2d, QConcat, QConv2d, QGlobalAvgPool, QLinear,
};
use crate::quant::{QAdd, QParams, QRange};

/// Which kernels run. The variants are in order of preference: [`detected`] picks the last one
/// this CPU runs. Every x86 path from [`Isa::Avx2`] on runs the AVX2 kernels for the steps it has
/// no kernels of its own for (depthwise convolutions, pooling, elementwise steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// The scalar reference kernels.
    Scalar,
    /// AVX2 (x86_64): `vpmaddwd` / `vpmaddubsw` convolutions, Winograd `F(2x2, 3x3)`.
    Avx2,
    /// AVX-VNNI: `vpdpbusd` on ymm for convolution and linear layers ([`super::vnni`]).
    AvxVnni,
    /// AVX-512 F/BW/VL + VNNI: `vpdpbusd` on zmm for convolution and linear layers.
    Avx512Vnni,
    /// AMX-INT8 (`tdpbusd` tiles) for convolution and linear layers, AVX-512 VNNI for the rest.
    Amx,
}

/// `QC_ISA` names an instruction set that is unknown or that this CPU (or its kernel) lacks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    #[error("QC_ISA={given}: unknown instruction set; expected one of {}", Isa::NAMES.join(", "))]
    Unknown { given: String },
    #[error(
        "QC_ISA={given}: this CPU cannot run it ({why}); it runs: {}",
        Isa::available_names()
    )]
    Unavailable { given: String, why: String },
}

impl Isa {
    /// Every variant, in order.
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx];
    /// Their names, as `QC_ISA` takes them.
    pub const NAMES: [&'static str; 5] = ["scalar", "avx2", "avxvnni", "avx512vnni", "amx"];

    /// The name `QC_ISA` takes.
    pub fn name(self) -> &'static str {
        Isa::NAMES[self as usize]
    }

    /// The variant named `name` (as [`Isa::name`], case-insensitive).
    pub fn from_name(name: &str) -> Option<Isa> {
        let lower = name.trim().to_ascii_lowercase();
        Isa::ALL.into_iter().find(|i| i.name() == lower)
    }

    /// `Ok` if this CPU runs `self`, else why not.
    pub fn check(self) -> Result<(), String> {
        match self {
            Isa::Scalar => Ok(()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if is_x86_feature_detected!("avx2") => Ok(()),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni if super::vnni::x86::has_avx_vnni() => Ok(()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if super::vnni::x86::has_avx512_vnni() => Ok(()),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => {
                super::amx::permission().map_err(|e| e.to_string())?;
                if !super::vnni::x86::has_avx512_vnni() {
                    return Err("AMX without AVX-512 VNNI, which its epilogues use".into());
                }
                Ok(())
            }
            Isa::Avx2 => Err("no AVX2".into()),
            Isa::AvxVnni => Err("no AVX-VNNI".into()),
            Isa::Avx512Vnni => Err("no AVX-512 VNNI (F, BW, VL and VNNI)".into()),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Amx => Err("not an x86_64 CPU".into()),
        }
    }

    /// The names of the variants this CPU runs, comma-separated.
    pub fn available_names() -> String {
        Isa::ALL
            .into_iter()
            .filter(|i| i.check().is_ok())
            .map(Isa::name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the AVX2 kernels run for the steps without kernels of this path's own.
    pub fn has_avx2(self) -> bool {
        self != Isa::Scalar
    }
}

/// The best [`Isa`] this CPU supports, detected once (AMX only when Linux grants the process
/// the tile state, see `amx::permission`).
pub fn detected() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.check().is_ok())
            .unwrap_or(Isa::Scalar)
    })
}

/// The kernels to run: `QC_ISA` if set (refused when unknown or when this CPU lacks it), else
/// [`detected`].
pub fn selected() -> Result<Isa, IsaError> {
    match std::env::var("QC_ISA") {
        Ok(given) if !given.trim().is_empty() => {
            let isa = Isa::from_name(&given).ok_or_else(|| IsaError::Unknown { given: given.clone() })?;
            isa.check().map_err(|why| IsaError::Unavailable { given, why })?;
            Ok(isa)
        }
        _ => Ok(detected()),
    }
}

/// `isa` if this CPU supports it, else [`Isa::Scalar`].
fn supported(isa: Isa) -> Isa {
    if isa.check().is_ok() {
        isa
    } else {
        Isa::Scalar
    }
}

/// Whether a 7-bit convolution with `groups`, `cig` input channels per group and `taps` kernel
/// taps runs on im2col rows: one group, several taps, and the `KH·KW·Cin` reduction in whole
/// quads of 4 bytes is at least an eighth shorter than `KH·KW` taps of `Cin` rounded up to
/// quads (Cin = 3, 7x7: 37 quads instead of 49). The reduction stays short enough (≤ 1024
/// bytes) for a row of windows to sit in the L1/L2 cache.
pub fn im2col_pays(groups: usize, cig: usize, taps: usize) -> bool {
    let (direct, packed) = (taps * cig.div_ceil(4), (taps * cig).div_ceil(4));
    groups == 1 && taps > 1 && taps * cig <= 1024 && 8 * packed <= 7 * direct
}

/// Whether a convolution packs for Winograd `F(2x2, 3x3)` ([`super::avx2::WinoPack`]): a 3x3
/// kernel, one group, at least 16 input channels (fewer leave the transforms' cost unpaid), at
/// most 256 × 256 channels (the transformed weights, 16 `i16` per weight pair, stay within 2 MiB;
/// ResNet's 512-channel layers on 7×7 images read their 8 MiB from memory more slowly than the
/// direct kernels compute), and
/// `4 · Σ |(x - zp) · w|` within `i32` over the 9·Cin terms (the bound the exact-integer
/// transforms need, see `WinoPack`).
fn winograd_pays(p: &QConv2d) -> bool {
    let g = &p.geom;
    let k = 9 * g.in_c as u64;
    g.h.kernel == 3
        && g.w.kernel == 3
        && g.groups == 1
        && g.in_c >= 16
        && g.in_c * g.out_c <= 256 * 256
        && 4 * crate::quant::accumulator_bound(k, QRange::U8, p.input_zero_point, QRange::I8) <= i32::MAX as u64
}

/// Whether geometry `g` is one that a Winograd pack computes: stride 1, padding 1, dilation 1.
fn winograd_geometry(g: &Conv2dGeom) -> bool {
    let a = super::Axis::new(3, 1, 1, 1);
    g.h == a && g.w == a
}

/// The direct AVX2 kernels for `p`: depthwise, 7-bit (im2col rows or per tap) or centred `i16`.
#[cfg(target_arch = "x86_64")]
fn avx2_pack(p: &QConv2d, w: &[i8], bias: Option<&[i32]>, input: QRange) -> Avx2Conv {
    let g = &p.geom;
    let (cig, cog, taps) = (g.in_c / g.groups, g.out_c / g.groups, g.h.kernel * g.w.kernel);
    let zp = p.input_zero_point;
    if cig == 1 && cog == 1 {
        Avx2Conv::Depthwise(super::avx2::DwPack::new(w, g.out_c, taps, &p.requant, bias))
    } else if input.qmin() >= 0 && input.qmax() <= 127 && (0..=127).contains(&zp) {
        if im2col_pays(g.groups, cig, taps) {
            return Avx2Conv::Im2col7(super::avx2::ConvPack7::new(
                w,
                1,
                taps * cig,
                cog,
                1,
                &p.requant,
                bias,
                zp as u8,
            ));
        }
        Avx2Conv::Direct7(super::avx2::ConvPack7::new(
            w, g.groups, cig, cog, taps, &p.requant, bias, zp as u8,
        ))
    } else {
        Avx2Conv::Direct(super::avx2::ConvPack::new(
            w, g.groups, cig, cog, taps, &p.requant, bias,
        ))
    }
}

/// Below this many multiply-accumulates a convolution runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 20;

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Debug)]
enum Avx2Conv {
    Direct(super::avx2::ConvPack),
    /// 7-bit input: `vpmaddubsw` on raw bytes ([`super::avx2::conv7_row`]).
    Direct7(super::avx2::ConvPack7),
    /// 7-bit input with few input channels (ResNet's RGB stem): each output row's windows are
    /// gathered into an im2col row ([`super::avx2::im2col7_row`]), whose `KH·KW·Cin` bytes are one
    /// reduction for a 1x1 [`super::avx2::conv7_row`] (the pack has one tap of `KH·KW·Cin`
    /// channels), so `vpmaddubsw` quads are not padded per tap.
    Im2col7(super::avx2::ConvPack7),
    Depthwise(super::avx2::DwPack),
    /// A 3x3 convolution of one group: Winograd `F(2x2, 3x3)` ([`super::avx2::WinoPack`]) when
    /// run with stride 1, padding 1 and dilation 1, else `direct`.
    Winograd {
        wino: super::avx2::WinoPack,
        direct: Box<Avx2Conv>,
    },
}

/// `new` and `with_isa` of a packed op (its weights `w`: OHWI for a convolution, `[M, K]` for a
/// linear layer), both through its `with_input_range` for inputs over the whole `u8` range.
macro_rules! pack_constructors {
    ($packed:ident, $params:ty) => {
        impl $packed {
            /// Packs for [`detected`]'s kernels. Checks the weight and bias lengths, the groups
            /// and the epilogue (u8 output ranges, no accumulator overflow) once.
            pub fn new(p: &$params, w: &[i8], bias: Option<&[i32]>) -> Result<$packed, KernelError> {
                $packed::with_isa(p, w, bias, detected())
            }

            /// Packs for `isa` (the scalar kernels when this CPU lacks it).
            pub fn with_isa(p: &$params, w: &[i8], bias: Option<&[i32]>, isa: Isa) -> Result<$packed, KernelError> {
                $packed::with_input_range(p, w, bias, isa, QRange::U8)
            }
        }
    };
}

pack_constructors!(PackedConv, QConv2d);
pack_constructors!(PackedLinear, QLinear);

/// A quantized convolution with its weights packed for the selected kernels. The geometry given
/// to [`PackedConv::run`] may change batch, input size, stride, padding and dilation, but not the
/// channels, kernel size or groups it was packed for.
#[derive(Clone, Debug)]
pub struct PackedConv {
    params: QConv2d,
    weight: Vec<i8>,
    bias: Option<Vec<i32>>,
    isa: Isa,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<Avx2Conv>,
    /// The `vpdpbusd` / AMX kernels (every convolution but a depthwise one, on those paths).
    #[cfg(target_arch = "x86_64")]
    vnni: Option<VnniConv>,
}

/// A convolution packed for the VNNI-layout kernels of one instruction set.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Debug)]
struct VnniConv {
    pack: super::vnni::VnniPack,
    /// The kernel of one task, and its tile's pixels.
    range: super::vnni::RangeFn,
    tile: usize,
    /// For [`PackedConv::kernel`].
    name: &'static str,
    /// For runs of fewer output pixels than one AMX tile has rows (a linear layer at batch 1,
    /// the last 7×7 maps): the `vpdpbusd` kernel on the same pack, which any quad alignment
    /// suits, instead of tiles mostly empty. `None` on the `vpdpbusd` paths themselves.
    few_pixels: Option<super::vnni::RangeFn>,
}

/// Below this many output pixels an AMX pack runs its `few_pixels` kernel: one A tile's rows.
#[cfg(target_arch = "x86_64")]
const AMX_MIN_PIXELS: usize = 16;

#[cfg(target_arch = "x86_64")]
impl VnniConv {
    /// `None` for a depthwise convolution (one input and one output channel per group: the AVX2
    /// kernels serve those) and for paths without VNNI.
    fn new(p: &QConv2d, w: &[i8], bias: Option<&[i32]>, isa: Isa) -> Option<VnniConv> {
        use super::vnni::x86::{range_avx512, range_avx_vnni};
        let g = &p.geom;
        let (cig, cog) = (g.in_c / g.groups, g.out_c / g.groups);
        if cig == 1 && cog == 1 {
            return None;
        }
        let (range, tile, quad_align): (super::vnni::RangeFn, usize, usize) = match isa {
            Isa::Scalar | Isa::Avx2 => return None,
            Isa::AvxVnni => (range_avx_vnni, 6, 1),
            Isa::Avx512Vnni => (range_avx512, 12, 1),
            Isa::Amx => (
                super::amx::conv::range_amx,
                super::amx::conv::STEP_PIXELS,
                super::amx::conv::quad_align(cig),
            ),
        };
        let mut conv = VnniConv::with_kernel(p, w, bias, (range, tile, quad_align, isa.name()));
        if isa == Isa::Amx {
            conv.few_pixels = Some(range_avx512);
        }
        Some(conv)
    }

    /// Packs for the kernel `range` (tiles of `tile` pixels; `quad_align` quads per tap
    /// alignment, see [`super::vnni::VnniPack`]), called `name`.
    fn with_kernel(
        p: &QConv2d,
        w: &[i8],
        bias: Option<&[i32]>,
        (range, tile, quad_align, name): (super::vnni::RangeFn, usize, usize, &'static str),
    ) -> VnniConv {
        let g = &p.geom;
        let (cig, cog, taps) = (g.in_c / g.groups, g.out_c / g.groups, g.h.kernel * g.w.kernel);
        let zp = p.input_zero_point as u8;
        let pack = super::vnni::VnniPack::new(w, (g.groups, cig, cog, taps), quad_align, &p.requant, bias, zp);
        VnniConv {
            pack,
            range,
            tile,
            name,
            few_pixels: None,
        }
    }
}

impl PackedConv {
    /// Packs for `isa`, knowing that the input's integer range is `input` (the program's
    /// [`QParams::range`] of the input value). With AVX2, a non-depthwise convolution whose input
    /// range and zero point lie in `[0, 127]` takes the 7-bit `vpmaddubsw` kernels
    /// ([`super::avx2::conv7_row`]; [`PackedConv::seven_bit`]); a run whose input nevertheless
    /// holds a byte above 127 is computed by the reference kernels instead, so the result is the
    /// reference's bits for every input.
    pub fn with_input_range(
        p: &QConv2d,
        w: &[i8],
        bias: Option<&[i32]>,
        isa: Isa,
        input: QRange,
    ) -> Result<PackedConv, KernelError> {
        let g = &p.geom;
        // `checked_rem`: `None` for zero groups (`is_multiple_of` needs Rust 1.87; MSRV was 1.85).
        if g.in_c.checked_rem(g.groups) != Some(0)
            || g.out_c.checked_rem(g.groups) != Some(0)
            || g.in_c == 0
            || g.out_c == 0
        {
            return Err(KernelError::Geometry(format!(
                "groups {} must divide in_c {} and out_c {}",
                g.groups, g.in_c, g.out_c
            )));
        }
        if g.h.kernel == 0 || g.w.kernel == 0 {
            return Err(KernelError::Geometry(format!("zero-sized kernel in {g:?}")));
        }
        check_len("weight", g.weight_len(), w.len())?;
        check_epilogue(g.out_c, g.reduction_len(), p.input_zero_point, &p.requant, bias)?;
        let isa = supported(isa);
        #[cfg(target_arch = "x86_64")]
        let vnni = VnniConv::new(p, w, bias, isa);
        #[cfg(target_arch = "x86_64")]
        let avx2 = (isa.has_avx2() && vnni.is_none()).then(|| {
            let direct = avx2_pack(p, w, bias, input);
            if winograd_pays(p) {
                Avx2Conv::Winograd {
                    wino: super::avx2::WinoPack::new(w, g.in_c, g.out_c, &p.requant, bias),
                    direct: Box::new(direct),
                }
            } else {
                direct
            }
        });
        Ok(PackedConv {
            params: p.clone(),
            weight: w.to_vec(),
            bias: bias.map(<[i32]>::to_vec),
            isa,
            #[cfg(target_arch = "x86_64")]
            avx2,
            #[cfg(target_arch = "x86_64")]
            vnni,
        })
    }

    /// The same convolution without its Winograd kernels (for benchmarks and tests of the
    /// direct ones).
    #[doc(hidden)]
    pub fn direct_only(&self) -> PackedConv {
        PackedConv {
            #[cfg(target_arch = "x86_64")]
            avx2: self.direct().cloned(),
            ..self.clone()
        }
    }

    /// The same convolution (not depthwise) on the VNNI-layout kernels with portable
    /// [`super::vnni::Emulated`] lanes: the pack, padding, tiling, threading and epilogue of the
    /// AVX-512 VNNI path, runnable on any CPU (for tests). [`PackedConv::isa`] says `Scalar`.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn emulated_vnni(p: &QConv2d, w: &[i8], bias: Option<&[i32]>) -> Result<PackedConv, KernelError> {
        let mut c = PackedConv::with_isa(p, w, bias, Isa::Scalar)?;
        let kernel = (
            super::vnni::conv::range_emulated as super::vnni::RangeFn,
            12,
            1,
            "emulated vnni",
        );
        c.vnni = Some(VnniConv::with_kernel(p, w, bias, kernel));
        Ok(c)
    }

    /// The same convolution (not depthwise) on the AMX driver ([`super::amx::conv`]) with
    /// emulated tiles and [`super::vnni::Emulated`] lanes: the pack, padding, tile shapes, A-tile
    /// loads and gathers, threading and epilogue of the AMX path, runnable on any CPU (for
    /// tests). [`PackedConv::isa`] says `Scalar`.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn emulated_amx(p: &QConv2d, w: &[i8], bias: Option<&[i32]>) -> Result<PackedConv, KernelError> {
        let mut c = PackedConv::with_isa(p, w, bias, Isa::Scalar)?;
        let g = &p.geom;
        let kernel = (
            super::amx::conv::range_emulated as super::vnni::RangeFn,
            super::amx::conv::STEP_PIXELS,
            super::amx::conv::quad_align(g.in_c / g.groups),
            "emulated amx",
        );
        let mut conv = VnniConv::with_kernel(p, w, bias, kernel);
        conv.few_pixels = Some(super::vnni::conv::range_emulated);
        c.vnni = Some(conv);
        Ok(c)
    }

    /// The kernels this convolution runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The direct kernels (those a Winograd pack falls back to for other geometries).
    #[cfg(target_arch = "x86_64")]
    fn direct(&self) -> Option<&Avx2Conv> {
        match &self.avx2 {
            Some(Avx2Conv::Winograd { direct, .. }) => Some(direct),
            a => a.as_ref(),
        }
    }

    /// Whether its direct kernels are the 7-bit `vpmaddubsw` ones (see
    /// [`PackedConv::with_input_range`]); a Winograd pack ([`PackedConv::winograd`]) runs them
    /// for geometries other than stride 1, padding 1.
    pub fn seven_bit(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(Avx2Conv::Direct7(_) | Avx2Conv::Im2col7(_)) = self.direct() {
            return true;
        }
        false
    }

    /// Whether it runs the 7-bit kernels on im2col rows (few input channels, see
    /// [`im2col_pays`]).
    pub fn im2col(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(Avx2Conv::Im2col7(_)) = self.direct() {
            return true;
        }
        false
    }

    /// Whether a run with stride 1, padding 1 and dilation 1 takes Winograd `F(2x2, 3x3)`
    /// ([`super::avx2::WinoPack`]): AVX2, a 3x3 kernel, one group, at least 16 input channels.
    pub fn winograd(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(Avx2Conv::Winograd { .. }) = &self.avx2 {
            return true;
        }
        false
    }

    /// Which kernels a run with stride 1 and padding 1 takes, for `qc run --profile`: the
    /// instruction set's name (`scalar`, `avx2`, `avxvnni`, `avx512vnni`, `amx`) and, for AVX2,
    /// the kernel (`winograd`, `7-bit`, `im2col 7-bit`, `depthwise`).
    pub fn kernel(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v) = &self.vnni {
                return v.name.to_string();
            }
            let what = match &self.avx2 {
                None => return Isa::Scalar.name().to_string(),
                Some(Avx2Conv::Winograd { .. }) => "winograd",
                Some(Avx2Conv::Im2col7(_)) => "im2col 7-bit",
                Some(Avx2Conv::Direct7(_)) => "7-bit",
                Some(Avx2Conv::Depthwise(_)) => "depthwise",
                Some(Avx2Conv::Direct(_)) => "direct",
            };
            format!("{} ({what})", Isa::Avx2.name())
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Scalar.name().to_string()
    }

    /// The parameters it was packed with.
    pub fn params(&self) -> &QConv2d {
        &self.params
    }

    /// Runs on NHWC `x` with geometry `geom` into NHWC `out` (see [`reference::qconv2d`]).
    pub fn run(&self, geom: &Conv2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
        self.run_with_residual(geom, x, None, out)
    }

    /// Whether [`PackedConv::run_add`] adds in the convolution's epilogue (the VNNI-layout
    /// kernels), rather than in a second pass over the output.
    pub fn fuses_add(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.vnni.is_some() {
            return true;
        }
        false
    }

    /// [`PackedConv::run`], then the residual add `add` of the convolution's output (its first
    /// input) and `residual` (NHWC, the output's length): the bits of the convolution followed
    /// by [`reference::qadd`], written once (see [`PackedConv::fuses_add`]).
    pub fn run_add(
        &self,
        geom: &Conv2dGeom,
        x: &[u8],
        add: &super::vnni::AddLanes,
        residual: &[u8],
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        check_len("residual", out.len(), residual.len())?;
        self.run_with_residual(geom, x, Some((add, residual)), out)
    }

    fn run_with_residual(
        &self,
        geom: &Conv2dGeom,
        x: &[u8],
        residual: Option<(&super::vnni::AddLanes, &[u8])>,
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        let pg = &self.params.geom;
        if (geom.in_c, geom.out_c, geom.h.kernel, geom.w.kernel, geom.groups)
            != (pg.in_c, pg.out_c, pg.h.kernel, pg.w.kernel, pg.groups)
        {
            return Err(KernelError::Geometry(format!(
                "convolution packed for {pg:?} run with {geom:?}"
            )));
        }
        let [oh_n, ow_n] = geom.out_hw()?;
        check_len("input", geom.input_len(), x.len())?;
        check_len("output", geom.batch * oh_n * ow_n * geom.out_c, out.len())?;
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = &self.vnni {
            let macs = geom.batch * oh_n * ow_n * geom.out_c * geom.reduction_len();
            let parallel = rayon::current_num_threads() > 1 && macs >= PAR_MIN_MACS;
            let (range, tile) = match v.few_pixels {
                Some(few) if geom.batch * oh_n * ow_n < AMX_MIN_PIXELS => (few, 12),
                _ => (v.range, v.tile),
            };
            // SAFETY: `vnni` is only built for a path this CPU runs (`supported`; AMX implies
            // AVX-512 VNNI, its `few_pixels` kernel); lengths and geometry are checked.
            unsafe { super::vnni::run(&v.pack, range, tile, geom, [oh_n, ow_n], x, residual, out, parallel) };
            return Ok(());
        }
        self.run_unfused(geom, [oh_n, ow_n], x, out)?;
        if let Some((add, res)) = residual {
            for (o, &b) in out.iter_mut().zip(res) {
                *o = add.apply(*o, b);
            }
        }
        Ok(())
    }

    /// The AVX2 or reference kernels (lengths and geometry checked).
    fn run_unfused(
        &self,
        geom: &Conv2dGeom,
        [oh_n, ow_n]: [usize; 2],
        x: &[u8],
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(a) = &self.avx2 {
            // SAFETY: `avx2` is only built when the CPU has AVX2; lengths and geometry are checked.
            if unsafe { run_avx2(a, geom, self.params.input_zero_point, [oh_n, ow_n], x, out) } {
                return Ok(());
            }
        }
        let p = QConv2d {
            geom: *geom,
            ..self.params.clone()
        };
        reference::qconv2d(&p, x, &self.weight, self.bias.as_deref(), out)
    }
}

pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// (By hand: a raw pointer is `Copy` whatever `T` is, which derive would require.)
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint output regions (and a read-only input) to rayon's threads.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH8: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static COL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// [`super::avx2::wino_row`]'s transformed inputs and products.
    static WINO: std::cell::RefCell<(Vec<i16>, Vec<i32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs the AVX2 kernels; `false` (nothing written) when a 7-bit convolution gets an input byte
/// above 127, which the caller then hands to the reference kernels.
///
/// # Safety
/// AVX2 present; geometry and lengths checked.
#[cfg(target_arch = "x86_64")]
unsafe fn run_avx2(a: &Avx2Conv, g: &Conv2dGeom, zp: i32, [oh_n, ow_n]: [usize; 2], x: &[u8], out: &mut [u8]) -> bool {
    use super::avx2::{
        conv_row, dw_row, im2col7_row, im2col_run, im2col_stride, pad_centre, pad_raw7, ConvRun, PadGeom, IM2COL_SLACK,
    };
    if let Avx2Conv::Winograd { wino, direct } = a {
        if !winograd_geometry(g) {
            return run_avx2(direct, g, zp, [oh_n, ow_n], x, out);
        }
        run_winograd(wino, g, zp, x, out);
        return true;
    }
    let (cg, cgp) = match a {
        Avx2Conv::Direct(pk) => (pk.cig, 2 * pk.pairs),
        Avx2Conv::Direct7(pk) => (pk.cig, 4 * pk.quads),
        Avx2Conv::Im2col7(_) => (g.in_c, g.in_c),
        Avx2Conv::Winograd { .. } => unreachable!("handled above"),
        Avx2Conv::Depthwise(_) => (1, 1),
    };
    let pad = PadGeom {
        batch: g.batch,
        in_h: g.in_h,
        in_w: g.in_w,
        groups: g.groups,
        cg,
        cgp,
        ph: g.h.padding,
        pw: g.w.padding,
    };
    let r = ConvRun {
        pad,
        kh: g.h.kernel,
        kw: g.w.kernel,
        sh: g.h.stride,
        sw: g.w.stride,
        dh: g.h.dilation,
        dw: g.w.dilation,
        out_h: oh_n,
        out_w: ow_n,
        out_c: g.out_c,
    };
    let rows = g.batch * oh_n;
    let macs = rows * ow_n * g.out_c * g.reduction_len();
    let threads = rayon::current_num_threads();
    let optr = SendPtr(out.as_mut_ptr());
    let parallel = threads > 1 && macs >= PAR_MIN_MACS;
    // Few rows (small images, linear layers): also split the channel blocks. Weights of more than
    // 128 KiB (ResNet's 256- and 512-channel layers) do not stay in the L2 cache from one output
    // row to the next: then each task is one pair of blocks and the tasks run block-major, so a
    // pair's weights serve every row (of every image) while they are cached.
    let split = |blocks: usize, weight_bytes: usize| {
        let big = weight_bytes > 128 << 10 && blocks > 2;
        let chunks = if big {
            blocks.div_ceil(2)
        } else if parallel && rows < 2 * threads {
            blocks.min((4 * threads).div_ceil(rows))
        } else {
            1
        };
        let per = blocks.div_ceil(chunks);
        let chunks = blocks.div_ceil(per);
        // Task `t` → (output row, blocks).
        let at = move |t: usize| {
            let (i, c) = if big {
                (t % rows, t / rows)
            } else {
                (t / chunks, t % chunks)
            };
            (i, (c * per, ((c + 1) * per).min(blocks)))
        };
        (rows * chunks, at)
    };
    if let Avx2Conv::Im2col7(pk) | Avx2Conv::Direct7(pk) = a {
        let mut buf = SCRATCH8.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let seven = pad_raw7(x, pk.zp, &pad, &mut buf);
        if seven {
            let xptr = SendPtr(buf.as_ptr() as *mut u8);
            if let Avx2Conv::Im2col7(_) = a {
                let kp = im2col_stride(pk.cig);
                let rc = im2col_run(&r, kp);
                let (tasks, at) = split(pk.blocks, 0);
                for_each_task(parallel, tasks, |t: usize| {
                    let (i, (b0, b1)) = at(t);
                    let mut col = COL.with(|s| std::mem::take(&mut *s.borrow_mut()));
                    col.clear();
                    col.resize(ow_n * kp + IM2COL_SLACK, 0);
                    im2col7_row(&r, xptr.get(), i / oh_n, i % oh_n, col.as_mut_ptr(), kp);
                    let orow = optr.get().add(i * ow_n * g.out_c);
                    conv_row(pk, &rc, col.as_ptr(), orow, 0, 0, (0, ow_n), (b0, b1));
                    COL.with(|s| *s.borrow_mut() = col);
                });
            } else {
                direct_rows(pk, &r, (xptr, optr), [oh_n, ow_n], parallel, split);
            }
        }
        SCRATCH8.with(|s| *s.borrow_mut() = buf);
        return seven;
    }
    // Taken out of the thread-local while in use: a rayon worker waiting below may run another
    // convolution that asks for its own buffer.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    pad_centre(x, zp, &pad, &mut buf);
    let xptr = SendPtr(buf.as_ptr() as *mut i16);
    match a {
        Avx2Conv::Depthwise(pk) => for_each_task(parallel, rows, |i: usize| {
            dw_row(pk, &r, xptr.get(), optr.get(), i / oh_n, i % oh_n)
        }),
        Avx2Conv::Direct(pk) => direct_rows(pk, &r, (xptr, optr), [oh_n, ow_n], parallel, split),
        Avx2Conv::Direct7(_) | Avx2Conv::Im2col7(_) | Avx2Conv::Winograd { .. } => {
            unreachable!("handled above")
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = buf);
    true
}

/// Runs `task(0..n)`, over rayon's threads when `parallel`.
#[cfg(target_arch = "x86_64")]
fn for_each_task(parallel: bool, n: usize, task: impl Fn(usize) + Send + Sync) {
    use rayon::prelude::*;
    if parallel {
        (0..n).into_par_iter().for_each(task);
    } else {
        (0..n).for_each(task);
    }
}

/// Every output row of a direct pack (centred `i16` or 7-bit bytes) on its padded input `xpad`,
/// in the tasks `split` makes of rows and channel blocks (given the pack's blocks and weight
/// bytes).
///
/// # Safety
/// AVX2 present; `xpad` the pack's padded input ([`super::avx2::conv_row`]'s conditions), `out`
/// the whole output; geometry and lengths checked.
#[cfg(target_arch = "x86_64")]
unsafe fn direct_rows<K, S, A>(
    pk: &K,
    r: &super::avx2::ConvRun,
    (xpad, out): (SendPtr<K::X>, SendPtr<u8>),
    [oh_n, ow_n]: [usize; 2],
    parallel: bool,
    split: S,
) where
    K: super::avx2::DirectPack + Sync,
    S: Fn(usize, usize) -> (usize, A),
    A: Fn(usize) -> (usize, (usize, usize)) + Send + Sync,
{
    let (tasks, at) = split(pk.blocks(), pk.groups() * pk.blocks() * pk.taps() * pk.steps() * 32);
    for_each_task(parallel, tasks, |t: usize| {
        let (i, (b0, b1)) = at(t);
        super::avx2::conv_row(pk, r, xpad.get(), out.get(), i / oh_n, i % oh_n, (0, ow_n), (b0, b1));
    });
}

/// Runs a Winograd pack (geometry: 3x3, stride 1, padding 1, dilation 1; output size = input
/// size), split over rayon's threads by pairs of output rows.
///
/// # Safety
/// AVX2 present; geometry and lengths checked.
#[cfg(target_arch = "x86_64")]
unsafe fn run_winograd(pk: &super::avx2::WinoPack, g: &Conv2dGeom, zp: i32, x: &[u8], out: &mut [u8]) {
    use super::avx2::{wino_pad, wino_tiles, WinoGeom};
    let wg = WinoGeom {
        batch: g.batch,
        in_h: g.in_h,
        in_w: g.in_w,
        cin: pk.cin,
        cinp: pk.cinp,
        cout: pk.cout,
    };
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    wino_pad(x, zp, &wg, &mut buf);
    let (xptr, optr) = (SendPtr(buf.as_ptr() as *mut i16), SendPtr(out.as_mut_ptr()));
    // Tasks of at least a tile row and at least 32 tiles (small images: the transformed weights
    // are read once per task, so fewer, larger tasks), at least 2 per thread when threaded.
    let tiles = wg.tiles();
    let macs = g.batch * g.in_h * g.in_w * g.out_c * g.reduction_len();
    let threads = if macs >= PAR_MIN_MACS {
        rayon::current_num_threads()
    } else {
        1
    };
    let per = wg.tiles_w().max(32).min(tiles.div_ceil(2 * threads).max(8)).min(tiles);
    let tasks = tiles.div_ceil(per);
    let (vlen, mlen) = wg.scratch_len(per);
    let task = |i: usize| {
        let (mut v, mut m) = WINO.with(|s| std::mem::take(&mut *s.borrow_mut()));
        v.resize(vlen.max(v.len()), 0);
        m.resize(mlen.max(m.len()), 0);
        let (t0, t1) = (i * per, ((i + 1) * per).min(tiles));
        wino_tiles(pk, &wg, xptr.get(), optr.get(), t0, t1, v.as_mut_ptr(), m.as_mut_ptr());
        WINO.with(|s| *s.borrow_mut() = (v, m));
    };
    for_each_task(threads > 1, tasks, task);
    SCRATCH.with(|s| *s.borrow_mut() = buf);
}

/// A quantized linear layer with packed weights: a 1x1 convolution over `batch` pixels.
#[derive(Clone, Debug)]
pub struct PackedLinear {
    conv: PackedConv,
}

impl PackedLinear {
    /// Packs for `isa` with the input's integer range `input` (see [`PackedConv::with_input_range`]).
    pub fn with_input_range(
        p: &QLinear,
        w: &[i8],
        bias: Option<&[i32]>,
        isa: Isa,
        input: QRange,
    ) -> Result<PackedLinear, KernelError> {
        let (k, m) = (p.in_features, p.out_features);
        if k == 0 || m == 0 {
            return Err(KernelError::Geometry(format!("qlinear with K = {k}, M = {m}")));
        }
        let conv = QConv2d {
            geom: linear_geom(1, k, m),
            input_zero_point: p.input_zero_point,
            requant: p.requant.clone(),
        };
        Ok(PackedLinear {
            conv: PackedConv::with_input_range(&conv, w, bias, isa, input)?,
        })
    }

    pub fn isa(&self) -> Isa {
        self.conv.isa
    }

    /// Which kernels it runs on (see [`PackedConv::kernel`]).
    pub fn kernel(&self) -> String {
        self.conv.kernel()
    }

    /// [`PackedConv::emulated_vnni`] for a linear layer (for tests).
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn emulated_vnni(p: &QLinear, w: &[i8], bias: Option<&[i32]>) -> Result<PackedLinear, KernelError> {
        let conv = PackedLinear::with_isa(p, w, bias, Isa::Scalar)?.conv;
        Ok(PackedLinear {
            conv: PackedConv::emulated_vnni(&conv.params, w, bias)?,
        })
    }

    /// [`PackedConv::emulated_amx`] for a linear layer (for tests).
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn emulated_amx(p: &QLinear, w: &[i8], bias: Option<&[i32]>) -> Result<PackedLinear, KernelError> {
        let conv = PackedLinear::with_isa(p, w, bias, Isa::Scalar)?.conv;
        Ok(PackedLinear {
            conv: PackedConv::emulated_amx(&conv.params, w, bias)?,
        })
    }

    /// Whether it runs the 7-bit `vpmaddubsw` kernels.
    pub fn seven_bit(&self) -> bool {
        self.conv.seven_bit()
    }

    /// `x [batch, K]` → `out [batch, M]` (see [`reference::qlinear`]).
    pub fn run(&self, batch: usize, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
        let g = &self.conv.params.geom;
        let (k, m) = (g.in_c, g.out_c);
        check_len("input", batch * k, x.len())?;
        check_len("output", batch * m, out.len())?;
        if batch == 0 {
            return Ok(());
        }
        self.conv.run(&linear_geom(batch, k, m), x, out)
    }
}

/// `[N, K] × [M, K]` as a 1x1 convolution over an `[1, 1, N, K]` image.
fn linear_geom(batch: usize, k: usize, m: usize) -> Conv2dGeom {
    let one = super::Axis::new(1, 1, 0, 1);
    Conv2dGeom {
        batch: 1,
        in_h: 1,
        in_w: batch,
        in_c: k,
        out_c: m,
        h: one,
        w: one,
        groups: 1,
    }
}

/// Packs and runs a convolution once ([`PackedConv`] to run it more often).
pub fn qconv2d(p: &QConv2d, x: &[u8], w: &[i8], bias: Option<&[i32]>, out: &mut [u8]) -> Result<(), KernelError> {
    PackedConv::new(p, w, bias)?.run(&p.geom, x, out)
}

/// Packs and runs a linear layer once ([`PackedLinear`] to run it more often).
pub fn qlinear(p: &QLinear, x: &[u8], w: &[i8], bias: Option<&[i32]>, out: &mut [u8]) -> Result<(), KernelError> {
    PackedLinear::new(p, w, bias)?.run(p.batch, x, out)
}

/// [`reference::qadd`] on `isa`'s kernels.
pub fn qadd_with(isa: Isa, p: &QAdd, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("second input", a.len(), b.len())?;
    check_len("output", a.len(), out.len())?;
    check_zp_u8("first input", p.a_zero_point)?;
    check_zp_u8("second input", p.b_zero_point)?;
    check_range_u8("output", p.out.qmin, p.out.qmax)?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        par_elementwise(out, |i0, o| {
            let n = o.len();
            // SAFETY: AVX2 detected; lengths and parameters checked; the chunk lies inside a, b.
            unsafe { super::avx2::qadd(p, &a[i0..i0 + n], &b[i0..i0 + n], o) };
        });
        return Ok(());
    }
    let _ = isa;
    reference::qadd(p, a, b, out)
}

/// [`reference::qadd`], dispatched.
pub fn qadd(p: &QAdd, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qadd_with(detected(), p, a, b, out)
}

/// [`reference::quantize_u8`] on `isa`'s kernels.
pub fn quantize_u8_with(isa: Isa, x: &[f32], p: &QParams, out: &mut [u8]) -> Result<(), KernelError> {
    check_len("output", x.len(), out.len())?;
    let r = p.range();
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() && r.qmin() >= 0 && r.qmax() <= 255 {
        par_elementwise(out, |i0, o| {
            let xs = &x[i0..i0 + o.len()];
            // SAFETY: AVX2 detected; lengths checked; the range fits u8 (so does the zero point).
            unsafe { super::avx2::quantize_u8(xs, p.inv_scale(), p.zero_point(), r, o) };
        });
        return Ok(());
    }
    let _ = (isa, r);
    reference::quantize_u8(x, p, out)
}

/// [`reference::quantize_u8`], dispatched.
pub fn quantize_u8(x: &[f32], p: &QParams, out: &mut [u8]) -> Result<(), KernelError> {
    quantize_u8_with(detected(), x, p, out)
}

/// [`reference::dequantize_u8`] on `isa`'s kernels.
pub fn dequantize_u8_with(isa: Isa, q: &[u8], p: &QParams, out: &mut [f32]) -> Result<(), KernelError> {
    check_len("output", q.len(), out.len())?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        par_elementwise(out, |i0, o| {
            let qs = &q[i0..i0 + o.len()];
            // SAFETY: AVX2 detected; lengths checked.
            unsafe { super::avx2::dequantize_u8(qs, p.scale(), p.zero_point(), o) };
        });
        return Ok(());
    }
    let _ = isa;
    reference::dequantize_u8(q, p, out)
}

/// [`reference::dequantize_u8`], dispatched.
pub fn dequantize_u8(q: &[u8], p: &QParams, out: &mut [f32]) -> Result<(), KernelError> {
    dequantize_u8_with(detected(), q, p, out)
}

/// [`reference::qmaxpool2d`] on `isa`'s kernels.
pub fn qmaxpool2d_with(isa: Isa, g: &Pool2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let [oh_n, ow_n] = g.out_hw()?;
    check_len("input", g.input_len(), x.len())?;
    check_len("output", g.batch * oh_n * ow_n * g.channels, out.len())?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        let rows = g.batch * oh_n;
        let optr = SendPtr(out.as_mut_ptr());
        // SAFETY: AVX2 detected; geometry and lengths checked; tasks write disjoint output rows.
        let task = |r: usize| unsafe { super::avx2::maxpool_rows(g, [oh_n, ow_n], x, optr.get(), r, r + 1) };
        if rayon::current_num_threads() > 1 && out.len() >= PAR_MIN_ELEMS && rows > 1 {
            use rayon::prelude::*;
            (0..rows).into_par_iter().for_each(task);
        } else {
            // SAFETY: as above, all rows at once.
            unsafe { super::avx2::maxpool_rows(g, [oh_n, ow_n], x, optr.get(), 0, rows) };
        }
        return Ok(());
    }
    let _ = isa;
    reference::qmaxpool2d(g, x, out)
}

/// [`reference::qmaxpool2d`], dispatched.
pub fn qmaxpool2d(g: &Pool2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qmaxpool2d_with(detected(), g, x, out)
}

/// [`reference::qglobal_avgpool`] on `isa`'s kernels.
pub fn qglobal_avgpool_with(isa: Isa, p: &QGlobalAvgPool, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let (s_n, c_n) = (p.spatial, p.channels);
    let checked = (1..=1 << 23).contains(&s_n)
        && c_n > 0
        && x.len() == p.batch * s_n * c_n
        && out.len() == p.batch * c_n
        && (0..=255).contains(&p.zero_point)
        && p.range.qmin() >= 0
        && p.range.qmax() <= 255;
    #[cfg(target_arch = "x86_64")]
    if checked && supported(isa).has_avx2() {
        // SAFETY: AVX2 detected; the reference's checks hold (else it reports the error).
        unsafe { super::avx2::global_avgpool(p, x, out) };
        return Ok(());
    }
    let _ = (isa, checked);
    reference::qglobal_avgpool(p, x, out)
}

/// [`reference::qglobal_avgpool`], dispatched.
pub fn qglobal_avgpool(p: &QGlobalAvgPool, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qglobal_avgpool_with(detected(), p, x, out)
}

// ---------------------------------------------------------------------------------------------
// Layout changes, and elementwise kernels split over threads
// ---------------------------------------------------------------------------------------------

/// Below this many elements an elementwise kernel runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Runs `f(i0, chunk)` over consecutive chunks `[i0, i0 + chunk.len())` of `out` (rayon's threads
/// for large outputs); every output element is computed by `f` alone, so the split never changes
/// a result.
fn par_elementwise<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    let threads = rayon::current_num_threads();
    if threads > 1 && out.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        let per = out.len().div_ceil(4 * threads).max(PAR_MIN_ELEMS / 4);
        out.par_chunks_mut(per).enumerate().for_each(|(i, c)| f(i * per, c));
    } else {
        f(0, out);
    }
}

/// `dst[c][r] = src[r][c]` for a `rows × cols` matrix, in 32×32 tiles (both sides stay in the L1
/// cache); bytes with AVX2 ([`super::avx2::transpose_u8`]). Lengths checked by the caller.
fn transpose<T: Copy + 'static>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<u8>() && detected().has_avx2() {
        // SAFETY: T is u8 (same layout); AVX2 detected; lengths asserted above.
        unsafe {
            let s = std::slice::from_raw_parts(src.as_ptr() as *const u8, src.len());
            let d = std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len());
            super::avx2::transpose_u8(s, rows, cols, d);
        }
        return;
    }
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                for c in c0..c1 {
                    // SAFETY: r < rows, c < cols, both slices hold rows · cols elements (asserted).
                    unsafe { *dst.get_unchecked_mut(c * rows + r) = *src.get_unchecked(r * cols + c) };
                }
            }
        }
    }
}

/// [`reference::nchw_to_nhwc`], tiled (the same elements moved; any element type).
pub fn nchw_to_nhwc<T: Copy + 'static>(x: &[T], [n, c, h, w]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * c * h * w, x.len())?;
    check_len("output", x.len(), out.len())?;
    let img = c * h * w;
    if img == 0 {
        return Ok(());
    }
    for (xs, os) in x.chunks_exact(img).zip(out.chunks_exact_mut(img)) {
        transpose(xs, c, h * w, os);
    }
    Ok(())
}

/// [`reference::nhwc_to_nchw`], tiled (the same elements moved; any element type).
pub fn nhwc_to_nchw<T: Copy + 'static>(x: &[T], [n, h, w, c]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * h * w * c, x.len())?;
    check_len("output", x.len(), out.len())?;
    let img = c * h * w;
    if img == 0 {
        return Ok(());
    }
    for (xs, os) in x.chunks_exact(img).zip(out.chunks_exact_mut(img)) {
        transpose(xs, h * w, c, os);
    }
    Ok(())
}

/// [`reference::qavgpool2d`] on `isa`'s kernels (the reference's checks first).
pub fn qavgpool2d_with(isa: Isa, p: &QAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let g = &p.geom;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2()
        && g.h.dilation == 1
        && g.w.dilation == 1
        && g.h.kernel.saturating_mul(g.w.kernel) <= 1 << 23
    {
        let [oh_n, ow_n] = g.out_hw()?;
        check_len("input", g.input_len(), x.len())?;
        check_len("output", g.batch * oh_n * ow_n * g.channels, out.len())?;
        check_zp_u8("input", p.zero_point)?;
        check_range_u8("input", p.range.qmin(), p.range.qmax())?;
        // SAFETY: AVX2 detected; the reference's checks hold.
        unsafe { super::avx2::avgpool(p, [oh_n, ow_n], x, out) };
        return Ok(());
    }
    let _ = (isa, g);
    reference::qavgpool2d(p, x, out)
}

/// [`reference::qavgpool2d`], dispatched.
pub fn qavgpool2d(p: &QAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qavgpool2d_with(detected(), p, x, out)
}

/// [`reference::qadaptive_avgpool2d`] on `isa`'s kernels (the reference's checks first).
pub fn qadaptive_avgpool2d_with(isa: Isa, p: &QAdaptiveAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let ([h_n, w_n], [oh_n, ow_n], c_n) = (p.in_hw, p.out_hw, p.channels);
    let checked = h_n > 0
        && w_n > 0
        && oh_n > 0
        && ow_n > 0
        && c_n > 0
        && (h_n.div_ceil(oh_n) + 1).saturating_mul(w_n.div_ceil(ow_n) + 1) <= 1 << 23
        && x.len() == p.batch * h_n * w_n * c_n
        && out.len() == p.batch * oh_n * ow_n * c_n
        && (0..=255).contains(&p.zero_point)
        && p.range.qmin() >= 0
        && p.range.qmax() <= 255;
    #[cfg(target_arch = "x86_64")]
    if checked && supported(isa).has_avx2() {
        // SAFETY: AVX2 detected; the reference's checks hold (else it reports the error).
        unsafe { super::avx2::adaptive_avgpool(p, x, out) };
        return Ok(());
    }
    let _ = (isa, checked);
    reference::qadaptive_avgpool2d(p, x, out)
}

/// [`reference::qadaptive_avgpool2d`], dispatched.
pub fn qadaptive_avgpool2d(p: &QAdaptiveAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qadaptive_avgpool2d_with(detected(), p, x, out)
}

/// [`reference::qclamp`] on `isa`'s kernels.
pub fn qclamp_with(isa: Isa, act: Activation, p: &QParams, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    act.check()?;
    check_len("output", x.len(), out.len())?;
    check_range_u8("input", p.range().qmin(), p.range().qmax())?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        // The reference's `max(lo).min(hi)` on codes in [0, 255]: with lo <= hi (a checked
        // activation), clamping the bounds into [0, 255] first changes no result.
        let (lo, hi) = act.bounds(p);
        let (lo, hi) = (lo.clamp(0, 255) as u8, hi.clamp(0, 255) as u8);
        par_elementwise(out, |i0, o| {
            // SAFETY: AVX2 detected; the chunk lies inside x.
            unsafe { super::avx2::clamp_u8(&x[i0..i0 + o.len()], lo, hi, o) };
        });
        return Ok(());
    }
    let _ = isa;
    reference::qclamp(act, p, x, out)
}

/// [`reference::qclamp`], dispatched.
pub fn qclamp(act: Activation, p: &QParams, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qclamp_with(detected(), act, p, x, out)
}

/// [`reference::qconcat_channels`] on `isa`'s kernels (the reference's checks first).
pub fn qconcat_channels_with(isa: Isa, p: &QConcat, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("inputs", p.parts.len(), inputs.len())?;
    let total = p.out_channels();
    check_len("output", p.outer * total, out.len())?;
    for (part, x) in p.parts.iter().zip(inputs) {
        check_len("concat input", p.outer * part.channels, x.len())?;
        check_zp_u8("concat input", part.input_zero_point)?;
        check_range_u8("output", part.requant.qmin, part.requant.qmax)?;
    }
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        let mut c0 = 0;
        for (part, x) in p.parts.iter().zip(inputs) {
            // SAFETY: AVX2 detected; lengths and parameters checked above.
            unsafe { super::avx2::concat_part(&part.requant, part.input_zero_point, x, part.channels, out, total, c0) };
            c0 += part.channels;
        }
        return Ok(());
    }
    let _ = isa;
    reference::qconcat_channels(p, inputs, out)
}

/// [`reference::qconcat_channels`], dispatched.
pub fn qconcat_channels(p: &QConcat, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), KernelError> {
    qconcat_channels_with(detected(), p, inputs, out)
}
