//! Convolution and linear layers: the kernels each layer packs for (AVX2 direct, 7-bit, im2col,
//! depthwise, Winograd; VNNI; AMX), the packing, and running a pack with the reference fallback.

use super::isa::{detected, supported, Isa};
#[cfg(target_arch = "x86_64")]
use super::threads::run_avx2;
use crate::kernels::reference;
use crate::kernels::{check_epilogue, check_len, Conv2dGeom, KernelError, QConv2d, QLinear};
use crate::quant::QRange;

/// Whether a 7-bit convolution with `groups`, `cig` input channels per group and `taps` kernel
/// taps runs on im2col rows: one group, several taps, and the `KH·KW·Cin` reduction in whole
/// quads of 4 bytes is at least an eighth shorter than `KH·KW` taps of `Cin` rounded up to
/// quads (Cin = 3, 7x7: 37 quads instead of 49). The reduction stays short enough (≤ 1024
/// bytes) for a row of windows to sit in the L1/L2 cache.
pub fn im2col_pays(groups: usize, cig: usize, taps: usize) -> bool {
    let (direct, packed) = (taps * cig.div_ceil(4), (taps * cig).div_ceil(4));
    groups == 1 && taps > 1 && taps * cig <= 1024 && 8 * packed <= 7 * direct
}

/// Whether a convolution packs for Winograd `F(2x2, 3x3)` ([`crate::kernels::avx2::WinoPack`]): a 3x3
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
pub(super) fn winograd_geometry(g: &Conv2dGeom) -> bool {
    let a = crate::kernels::Axis::new(3, 1, 1, 1);
    g.h == a && g.w == a
}

/// The direct AVX2 kernels for `p`: depthwise, 7-bit (im2col rows or per tap) or centred `i16`.
#[cfg(target_arch = "x86_64")]
fn avx2_pack(p: &QConv2d, w: &[i8], bias: Option<&[i32]>, input: QRange) -> Avx2Conv {
    let g = &p.geom;
    let (cig, cog, taps) = (g.in_c / g.groups, g.out_c / g.groups, g.h.kernel * g.w.kernel);
    let zp = p.input_zero_point;
    if cig == 1 && cog == 1 {
        Avx2Conv::Depthwise(crate::kernels::avx2::DwPack::new(w, g.out_c, taps, &p.requant, bias))
    } else if input.qmin() >= 0 && input.qmax() <= 127 && (0..=127).contains(&zp) {
        if im2col_pays(g.groups, cig, taps) {
            return Avx2Conv::Im2col7(crate::kernels::avx2::ConvPack7::new(
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
        Avx2Conv::Direct7(crate::kernels::avx2::ConvPack7::new(
            w, g.groups, cig, cog, taps, &p.requant, bias, zp as u8,
        ))
    } else {
        Avx2Conv::Direct(crate::kernels::avx2::ConvPack::new(
            w, g.groups, cig, cog, taps, &p.requant, bias,
        ))
    }
}

/// Below this many multiply-accumulates a convolution runs on the calling thread.
pub(super) const PAR_MIN_MACS: usize = 1 << 20;

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Debug)]
pub(super) enum Avx2Conv {
    Direct(crate::kernels::avx2::ConvPack),
    /// 7-bit input: `vpmaddubsw` on raw bytes ([`crate::kernels::avx2::conv7_row`]).
    Direct7(crate::kernels::avx2::ConvPack7),
    /// 7-bit input with few input channels (ResNet's RGB stem): each output row's windows are
    /// gathered into an im2col row ([`crate::kernels::avx2::im2col7_row`]), whose `KH·KW·Cin` bytes are one
    /// reduction for a 1x1 [`crate::kernels::avx2::conv7_row`] (the pack has one tap of `KH·KW·Cin`
    /// channels), so `vpmaddubsw` quads are not padded per tap.
    Im2col7(crate::kernels::avx2::ConvPack7),
    Depthwise(crate::kernels::avx2::DwPack),
    /// A 3x3 convolution of one group: Winograd `F(2x2, 3x3)` ([`crate::kernels::avx2::WinoPack`]) when
    /// run with stride 1, padding 1 and dilation 1, else `direct`.
    Winograd {
        wino: crate::kernels::avx2::WinoPack,
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
    pack: crate::kernels::vnni::VnniPack,
    /// The kernel of one task, and its tile's pixels.
    range: crate::kernels::vnni::RangeFn,
    tile: usize,
    /// For [`PackedConv::kernel`].
    name: &'static str,
    /// For runs of fewer output pixels than one AMX tile has rows (a linear layer at batch 1,
    /// the last 7×7 maps): the `vpdpbusd` kernel on the same pack, which any quad alignment
    /// suits, instead of tiles mostly empty. `None` on the `vpdpbusd` paths themselves.
    few_pixels: Option<crate::kernels::vnni::RangeFn>,
}

/// Below this many output pixels an AMX pack runs its `few_pixels` kernel: one A tile's rows.
#[cfg(target_arch = "x86_64")]
const AMX_MIN_PIXELS: usize = 16;

#[cfg(target_arch = "x86_64")]
impl VnniConv {
    /// `None` for a depthwise convolution (one input and one output channel per group: the AVX2
    /// kernels serve those) and for paths without VNNI.
    fn new(p: &QConv2d, w: &[i8], bias: Option<&[i32]>, isa: Isa) -> Option<VnniConv> {
        use crate::kernels::vnni::x86::{range_avx512, range_avx_vnni};
        let g = &p.geom;
        let (cig, cog) = (g.in_c / g.groups, g.out_c / g.groups);
        if cig == 1 && cog == 1 {
            return None;
        }
        let (range, tile, quad_align): (crate::kernels::vnni::RangeFn, usize, usize) = match isa {
            Isa::Scalar | Isa::Avx2 => return None,
            Isa::AvxVnni => (range_avx_vnni, 6, 1),
            Isa::Avx512Vnni => (range_avx512, 12, 1),
            Isa::Amx => (
                crate::kernels::amx::conv::range_amx,
                crate::kernels::amx::conv::STEP_PIXELS,
                crate::kernels::amx::conv::quad_align(cig),
            ),
        };
        let mut conv = VnniConv::with_kernel(p, w, bias, (range, tile, quad_align, isa.name()));
        if isa == Isa::Amx {
            conv.few_pixels = Some(range_avx512);
        }
        Some(conv)
    }

    /// Packs for the kernel `range` (tiles of `tile` pixels; `quad_align` quads per tap
    /// alignment, see [`crate::kernels::vnni::VnniPack`]), called `name`.
    fn with_kernel(
        p: &QConv2d,
        w: &[i8],
        bias: Option<&[i32]>,
        (range, tile, quad_align, name): (crate::kernels::vnni::RangeFn, usize, usize, &'static str),
    ) -> VnniConv {
        let g = &p.geom;
        let (cig, cog, taps) = (g.in_c / g.groups, g.out_c / g.groups, g.h.kernel * g.w.kernel);
        let zp = p.input_zero_point as u8;
        let pack = crate::kernels::vnni::VnniPack::new(w, (g.groups, cig, cog, taps), quad_align, &p.requant, bias, zp);
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
    /// ([`crate::kernels::avx2::conv7_row`]; [`PackedConv::seven_bit`]); a run whose input nevertheless
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
                    wino: crate::kernels::avx2::WinoPack::new(w, g.in_c, g.out_c, &p.requant, bias),
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
    /// [`crate::kernels::vnni::Emulated`] lanes: the pack, padding, tiling, threading and epilogue of the
    /// AVX-512 VNNI path, runnable on any CPU (for tests). [`PackedConv::isa`] says `Scalar`.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn emulated_vnni(p: &QConv2d, w: &[i8], bias: Option<&[i32]>) -> Result<PackedConv, KernelError> {
        let mut c = PackedConv::with_isa(p, w, bias, Isa::Scalar)?;
        let kernel = (
            crate::kernels::vnni::conv::range_emulated as crate::kernels::vnni::RangeFn,
            12,
            1,
            "emulated vnni",
        );
        c.vnni = Some(VnniConv::with_kernel(p, w, bias, kernel));
        Ok(c)
    }

    /// The same convolution (not depthwise) on the AMX driver ([`crate::kernels::amx::conv`]) with
    /// emulated tiles and [`crate::kernels::vnni::Emulated`] lanes: the pack, padding, tile shapes, A-tile
    /// loads and gathers, threading and epilogue of the AMX path, runnable on any CPU (for
    /// tests). [`PackedConv::isa`] says `Scalar`.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn emulated_amx(p: &QConv2d, w: &[i8], bias: Option<&[i32]>) -> Result<PackedConv, KernelError> {
        let mut c = PackedConv::with_isa(p, w, bias, Isa::Scalar)?;
        let g = &p.geom;
        let kernel = (
            crate::kernels::amx::conv::range_emulated as crate::kernels::vnni::RangeFn,
            crate::kernels::amx::conv::STEP_PIXELS,
            crate::kernels::amx::conv::quad_align(g.in_c / g.groups),
            "emulated amx",
        );
        let mut conv = VnniConv::with_kernel(p, w, bias, kernel);
        conv.few_pixels = Some(crate::kernels::vnni::conv::range_emulated);
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
    /// ([`crate::kernels::avx2::WinoPack`]): AVX2, a 3x3 kernel, one group, at least 16 input channels.
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
        add: &crate::kernels::vnni::AddLanes,
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
        residual: Option<(&crate::kernels::vnni::AddLanes, &[u8])>,
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
            unsafe { crate::kernels::vnni::run(&v.pack, range, tile, geom, [oh_n, ow_n], x, residual, out, parallel) };
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
    let one = crate::kernels::Axis::new(1, 1, 0, 1);
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
