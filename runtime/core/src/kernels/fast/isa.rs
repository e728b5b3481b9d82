//! Which int8 kernels run: the instruction sets, detected once, or named by `QC_ISA`.

use std::sync::OnceLock;

/// Which kernels run. The variants are in order of preference: [`detected`] picks the last one
/// this CPU runs. Every x86 path from [`Isa::Avx2`] on runs the AVX2 kernels for the steps it has
/// no kernels of its own for (depthwise convolutions, pooling, elementwise steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// The scalar reference kernels.
    Scalar,
    /// AVX2 (x86_64): `vpmaddwd` / `vpmaddubsw` convolutions, Winograd `F(2x2, 3x3)`.
    Avx2,
    /// AVX-VNNI: `vpdpbusd` on ymm for convolution and linear layers ([`crate::kernels::vnni`]).
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
            Isa::AvxVnni if crate::kernels::vnni::x86::has_avx_vnni() => Ok(()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if crate::kernels::vnni::x86::has_avx512_vnni() => Ok(()),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => {
                crate::kernels::amx::permission().map_err(|e| e.to_string())?;
                if !crate::kernels::vnni::x86::has_avx512_vnni() {
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
pub(super) fn supported(isa: Isa) -> Isa {
    if isa.check().is_ok() {
        isa
    } else {
        Isa::Scalar
    }
}
