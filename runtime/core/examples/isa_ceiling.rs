//! The int8 multiply-accumulate ceiling of each of qc's kernel paths on this CPU: a tight loop
//! of the path's instruction with many independent accumulators (no loads, no stores), run on
//! N threads at once, reported in GMAC/s (one MAC = one u8 × s8 product added into an i32).
//!
//! | path | loop | MACs per instruction (group) |
//! | --- | --- | --- |
//! | `avx2` | `vpmaddubsw` + `vpmaddwd` + `vpaddd` on ymm (12 chains) | 32 |
//! | `avxvnni` | VEX `vpdpbusd` on ymm (12 accumulators) | 32 |
//! | `avx512vnni` | EVEX `vpdpbusd` on zmm (24 accumulators) | 64 |
//! | `amx` | `tdpbusd` on 16 rows × 64 bytes tiles (4 accumulator tiles) | 16 384 |
//!
//! A path this CPU lacks (`Isa::check`) is reported as "not available: <reason>" and not run;
//! every loop compiles everywhere on x86_64 (`asm!`, so the compiler can neither hoist nor drop
//! the work). AMX asks Linux for the tile state first (`kernels::amx::permission`).
//!
//! `cargo run --release -p qc-runtime --example isa_ceiling -- --threads 2 [--json]
//! [--seconds S] [--repeats R] [--paths avx2,amx]`: each path runs R timed blocks of about S
//! seconds on all threads together (a barrier starts them); the best block is the ceiling. The
//! figure is the sum over threads. `bench/side_by_side.py` calls it once per invocation.
use qc_runtime::kernels::fast::Isa;
use std::sync::Barrier;
use std::time::Instant;

/// The paths measured, in the order printed.
const PATHS: [Isa; 4] = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx];

struct Options {
    threads: usize,
    json: bool,
    seconds: f64,
    repeats: usize,
    paths: Vec<Isa>,
}

fn usage() -> ! {
    eprintln!(
        "usage: isa_ceiling [--threads N] [--json] [--seconds S] [--repeats R] [--paths avx2,avxvnni,avx512vnni,amx]"
    );
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut o = Options {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        json: false,
        seconds: 0.2,
        repeats: 5,
        paths: PATHS.to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--threads" => o.threads = value().parse().unwrap_or_else(|_| usage()),
            "--json" => o.json = true,
            "--seconds" => o.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--repeats" => o.repeats = value().parse().unwrap_or_else(|_| usage()),
            "--paths" => {
                o.paths = value()
                    .split(',')
                    .map(|n| match Isa::from_name(n) {
                        Some(isa) if isa != Isa::Scalar => isa,
                        _ => usage(),
                    })
                    .collect()
            }
            _ => usage(),
        }
    }
    if o.threads == 0 || o.repeats == 0 || o.seconds.is_nan() || o.seconds <= 0.0 {
        usage()
    }
    o
}

/// One path's loop: `iters` iterations on this thread; returns the MACs done.
type Kernel = fn(u64) -> u64;

#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::asm;

    /// MACs per iteration of each loop.
    pub const AVX2_MACS: u64 = 12 * 32;
    pub const AVXVNNI_MACS: u64 = 12 * 32;
    pub const AVX512_MACS: u64 = 24 * 64;
    pub const AMX_MACS: u64 = 4 * 16 * 16 * 64;

    /// `vpmaddubsw` (32 u8·s8 products, pairs summed to i16) + `vpmaddwd` by ones (to i32) +
    /// `vpaddd`, 12 independent chains per iteration.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(iters: u64) {
        asm!(
            "vpcmpeqb ymm15, ymm15, ymm15",  // a = 0xff bytes (u8 255)
            "vpabsb ymm14, ymm15",           // b = 1 (s8)
            "vpsrlw ymm13, ymm15, 15",       // ones (i16)
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm4, ymm4, ymm4",
            "vpxor ymm5, ymm5, ymm5",
            "2:",
            "vpmaddubsw ymm6, ymm15, ymm14",
            "vpmaddubsw ymm7, ymm15, ymm14",
            "vpmaddubsw ymm8, ymm15, ymm14",
            "vpmaddubsw ymm9, ymm15, ymm14",
            "vpmaddubsw ymm10, ymm15, ymm14",
            "vpmaddubsw ymm11, ymm15, ymm14",
            "vpmaddwd ymm6, ymm6, ymm13",
            "vpmaddwd ymm7, ymm7, ymm13",
            "vpmaddwd ymm8, ymm8, ymm13",
            "vpmaddwd ymm9, ymm9, ymm13",
            "vpmaddwd ymm10, ymm10, ymm13",
            "vpmaddwd ymm11, ymm11, ymm13",
            "vpaddd ymm0, ymm0, ymm6",
            "vpaddd ymm1, ymm1, ymm7",
            "vpaddd ymm2, ymm2, ymm8",
            "vpaddd ymm3, ymm3, ymm9",
            "vpaddd ymm4, ymm4, ymm10",
            "vpaddd ymm5, ymm5, ymm11",
            "vpmaddubsw ymm6, ymm15, ymm14",
            "vpmaddubsw ymm7, ymm15, ymm14",
            "vpmaddubsw ymm8, ymm15, ymm14",
            "vpmaddubsw ymm9, ymm15, ymm14",
            "vpmaddubsw ymm10, ymm15, ymm14",
            "vpmaddubsw ymm11, ymm15, ymm14",
            "vpmaddwd ymm6, ymm6, ymm13",
            "vpmaddwd ymm7, ymm7, ymm13",
            "vpmaddwd ymm8, ymm8, ymm13",
            "vpmaddwd ymm9, ymm9, ymm13",
            "vpmaddwd ymm10, ymm10, ymm13",
            "vpmaddwd ymm11, ymm11, ymm13",
            "vpaddd ymm0, ymm0, ymm6",
            "vpaddd ymm1, ymm1, ymm7",
            "vpaddd ymm2, ymm2, ymm8",
            "vpaddd ymm3, ymm3, ymm9",
            "vpaddd ymm4, ymm4, ymm10",
            "vpaddd ymm5, ymm5, ymm11",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
            out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
            out("ymm10") _, out("ymm11") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
    }

    /// VEX-encoded `vpdpbusd` (AVX-VNNI) on ymm: 12 independent accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn avxvnni(iters: u64) {
        asm!(
            "vpcmpeqb ymm15, ymm15, ymm15",
            "vpabsb ymm14, ymm15",
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm4, ymm4, ymm4",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm6, ymm6, ymm6",
            "vpxor ymm7, ymm7, ymm7",
            "vpxor ymm8, ymm8, ymm8",
            "vpxor ymm9, ymm9, ymm9",
            "vpxor ymm10, ymm10, ymm10",
            "vpxor ymm11, ymm11, ymm11",
            "2:",
            "{{vex}} vpdpbusd ymm0, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm1, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm2, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm3, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm4, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm5, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm6, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm7, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm8, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm9, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm10, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm11, ymm15, ymm14",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
            out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
            out("ymm10") _, out("ymm11") _, out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
    }

    /// EVEX `vpdpbusd` on zmm: 24 independent accumulators (zmm0–zmm23).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512vnni(iters: u64) {
        asm!(
            "vpternlogd zmm31, zmm31, zmm31, 0xff",
            "vpabsb zmm30, zmm31",
            "vpxord zmm0, zmm0, zmm0",
            "vpxord zmm1, zmm1, zmm1",
            "vpxord zmm2, zmm2, zmm2",
            "vpxord zmm3, zmm3, zmm3",
            "vpxord zmm4, zmm4, zmm4",
            "vpxord zmm5, zmm5, zmm5",
            "vpxord zmm6, zmm6, zmm6",
            "vpxord zmm7, zmm7, zmm7",
            "vpxord zmm8, zmm8, zmm8",
            "vpxord zmm9, zmm9, zmm9",
            "vpxord zmm10, zmm10, zmm10",
            "vpxord zmm11, zmm11, zmm11",
            "vpxord zmm12, zmm12, zmm12",
            "vpxord zmm13, zmm13, zmm13",
            "vpxord zmm14, zmm14, zmm14",
            "vpxord zmm15, zmm15, zmm15",
            "vpxord zmm16, zmm16, zmm16",
            "vpxord zmm17, zmm17, zmm17",
            "vpxord zmm18, zmm18, zmm18",
            "vpxord zmm19, zmm19, zmm19",
            "vpxord zmm20, zmm20, zmm20",
            "vpxord zmm21, zmm21, zmm21",
            "vpxord zmm22, zmm22, zmm22",
            "vpxord zmm23, zmm23, zmm23",
            "2:",
            "vpdpbusd zmm0, zmm31, zmm30",
            "vpdpbusd zmm1, zmm31, zmm30",
            "vpdpbusd zmm2, zmm31, zmm30",
            "vpdpbusd zmm3, zmm31, zmm30",
            "vpdpbusd zmm4, zmm31, zmm30",
            "vpdpbusd zmm5, zmm31, zmm30",
            "vpdpbusd zmm6, zmm31, zmm30",
            "vpdpbusd zmm7, zmm31, zmm30",
            "vpdpbusd zmm8, zmm31, zmm30",
            "vpdpbusd zmm9, zmm31, zmm30",
            "vpdpbusd zmm10, zmm31, zmm30",
            "vpdpbusd zmm11, zmm31, zmm30",
            "vpdpbusd zmm12, zmm31, zmm30",
            "vpdpbusd zmm13, zmm31, zmm30",
            "vpdpbusd zmm14, zmm31, zmm30",
            "vpdpbusd zmm15, zmm31, zmm30",
            "vpdpbusd zmm16, zmm31, zmm30",
            "vpdpbusd zmm17, zmm31, zmm30",
            "vpdpbusd zmm18, zmm31, zmm30",
            "vpdpbusd zmm19, zmm31, zmm30",
            "vpdpbusd zmm20, zmm31, zmm30",
            "vpdpbusd zmm21, zmm31, zmm30",
            "vpdpbusd zmm22, zmm31, zmm30",
            "vpdpbusd zmm23, zmm31, zmm30",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) iters => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
            out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _,
            out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm30") _,
            out("zmm31") _,
            options(nostack, nomem),
        );
    }

    /// The 64-byte AMX tile configuration (palette 1): tiles 0–7 all 16 rows × 64 bytes
    /// (tmm0–tmm3: 16×16 i32 accumulators; tmm4, tmm5: u8 rows; tmm6, tmm7: VNNI-packed s8).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    fn tile_config() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }

    /// `tdpbusd` on tiles: 4 independent 16×16 accumulators per iteration (tmm0 += tmm4·tmm6,
    /// tmm1 += tmm4·tmm7, tmm2 += tmm5·tmm6, tmm3 += tmm5·tmm7), each 16·16·64 MACs; the
    /// operands are loaded once, the accumulators stored once at the end.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and AMX-INT8 and Linux granted this process the tile state
    /// (`qc_runtime::kernels::amx::permission()` returned `Ok`).
    unsafe fn amx(iters: u64) {
        let cfg = tile_config();
        #[repr(C, align(64))]
        struct Buf([u8; 1024]);
        let a = Buf([1; 1024]);
        let b = Buf([1; 1024]);
        let mut c = Buf([0; 1024]);
        asm!(
            "ldtilecfg [{cfg}]",
            "tileloadd tmm4, [{a} + {stride}*1]",
            "tileloadd tmm5, [{a} + {stride}*1]",
            "tileloadd tmm6, [{b} + {stride}*1]",
            "tileloadd tmm7, [{b} + {stride}*1]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {stride}*1], tmm0",
            "tilerelease",
            cfg = in(reg) cfg.0.as_ptr(),
            a = in(reg) a.0.as_ptr(),
            b = in(reg) b.0.as_ptr(),
            c = in(reg) c.0.as_mut_ptr(),
            stride = in(reg) 64usize,
            n = inout(reg) iters => _,
            options(nostack),
        );
        std::hint::black_box(&mut c);
    }

    pub fn run_avx2(iters: u64) -> u64 {
        // SAFETY: only called after Isa::Avx2.check() returned Ok.
        unsafe { avx2(iters) };
        iters * AVX2_MACS
    }

    pub fn run_avxvnni(iters: u64) -> u64 {
        // SAFETY: only called after Isa::AvxVnni.check() returned Ok.
        unsafe { avxvnni(iters) };
        iters * AVXVNNI_MACS
    }

    pub fn run_avx512vnni(iters: u64) -> u64 {
        // SAFETY: only called after Isa::Avx512Vnni.check() returned Ok.
        unsafe { avx512vnni(iters) };
        iters * AVX512_MACS
    }

    pub fn run_amx(iters: u64) -> u64 {
        // SAFETY: only called after Isa::Amx.check() and amx::permission() returned Ok.
        unsafe { amx(iters) };
        iters * AMX_MACS
    }
}

/// The loop of `isa`, or why it cannot run on this CPU.
fn kernel(isa: Isa) -> Result<Kernel, String> {
    isa.check()?;
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx2 => Ok(loops::run_avx2),
            Isa::AvxVnni => Ok(loops::run_avxvnni),
            Isa::Avx512Vnni => Ok(loops::run_avx512vnni),
            Isa::Amx => {
                qc_runtime::kernels::amx::permission().map_err(|e| e.to_string())?;
                Ok(loops::run_amx)
            }
            Isa::Scalar => Err("no ceiling loop for the scalar path".into()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err("not an x86_64 CPU".into())
}

/// Seconds for `threads` threads to run `iters` iterations each, started together; and MACs.
fn timed_block(k: Kernel, threads: usize, iters: u64) -> (f64, u64) {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    k(iters)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let macs: u64 = workers.into_iter().map(|w| w.join().expect("worker panicked")).sum();
        (start.elapsed().as_secs_f64(), macs)
    })
}

/// The best GMAC/s of `repeats` blocks of about `seconds` each on `threads` threads.
fn ceiling(k: Kernel, o: &Options) -> f64 {
    // Probe on one thread for the iteration count of a block.
    let mut iters = 1000u64;
    loop {
        let (t, _) = timed_block(k, 1, iters);
        if t > 0.02 {
            iters = ((iters as f64) * o.seconds / t).max(1.0) as u64;
            break;
        }
        iters *= 4;
    }
    (0..o.repeats)
        .map(|_| {
            let (t, macs) = timed_block(k, o.threads, iters);
            macs as f64 / t / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() {
    let o = parse_options();
    let results: Vec<(Isa, Result<f64, String>)> = o
        .paths
        .iter()
        .map(|&isa| (isa, kernel(isa).map(|k| ceiling(k, &o))))
        .collect();
    if o.json {
        let paths: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(isa, r)| {
                let v = match r {
                    Ok(g) => serde_json::json!({ "gmacs": g }),
                    Err(why) => serde_json::json!({ "unavailable": why }),
                };
                (isa.name().to_string(), v)
            })
            .collect();
        let doc = serde_json::json!({
            "threads": o.threads,
            "seconds": o.seconds,
            "repeats": o.repeats,
            "paths": paths,
        });
        println!("{doc}");
    } else {
        println!(
            "int8 MAC ceilings, {} threads (best of {} blocks of ~{} s):",
            o.threads, o.repeats, o.seconds
        );
        for (isa, r) in &results {
            match r {
                Ok(g) => println!("  {:<11} {g:8.1} GMAC/s", isa.name()),
                Err(why) => println!("  {:<11} not available: {why}", isa.name()),
            }
        }
    }
}
