//! The two AVX2 convolution paths (`vpmaddwd` on centred `i16` input, `vpmaddubsw` on 7-bit
//! input, and Winograd where it applies) timed in on-CPU time (`CLOCK_THREAD_CPUTIME_ID`), alternated round by round,
//! best round kept: ratios that survive a machine shared with other jobs better than criterion's
//! wall-clock figures. Run with `RAYON_NUM_THREADS=1 cargo run --release -p qc-runtime --example
//! avx2_paths` (one thread: on-CPU time of the calling thread only). See benches/README.md.
use qc_runtime::kernels::fast::{Isa, PackedConv};
use qc_runtime::kernels::{Axis, Conv2dGeom, QConv2d};
use qc_runtime::quant::{QRange, Requant};
use qc_runtime::SplitMix64;

/// Nanoseconds this thread has run on a CPU: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, exact
/// to the nanosecond (`/proc/thread-self/schedstat` advances in scheduler ticks while a thread
/// runs, 4 ms here).
fn oncpu() -> u64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid timespec; the clock id is Linux's.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    t.sec as u64 * 1_000_000_000 + t.nsec as u64
}

fn main() {
    if Isa::Avx2.check().is_err() {
        println!("no AVX2");
        return;
    }
    let shapes = [
        (56, 64, 64, 3, 1, "3x3 64 56"),
        (28, 128, 128, 3, 1, "3x3 128 28"),
        (14, 256, 256, 3, 1, "3x3 256 14"),
        (7, 512, 512, 3, 1, "3x3 512 7"),
        (7, 512, 512, 3, 1, "3x3 512 7 batch 8"),
        (224, 3, 64, 7, 2, "7x7 3-64 224 s2 (stem)"),
        (28, 128, 256, 1, 2, "1x1 128-256 28 s2"),
        (1, 512, 1000, 1, 1, "linear 512-1000"),
    ];
    // `ONLY=stem` (a substring of the names) runs some shapes.
    let only = std::env::var("ONLY").unwrap_or_default();
    for (hw, ci, co, k, s, name) in shapes {
        if !name.contains(only.as_str()) {
            continue;
        }
        let a = Axis::new(k, s, k / 2, 1);
        let geom = if name.starts_with("linear") {
            let one = Axis::new(1, 1, 0, 1);
            Conv2dGeom {
                batch: 1,
                in_h: 1,
                in_w: 1,
                in_c: ci,
                out_c: co,
                h: one,
                w: one,
                groups: 1,
            }
        } else {
            Conv2dGeom {
                batch: if name.ends_with("batch 8") { 8 } else { 1 },
                in_h: hw,
                in_w: hw,
                in_c: ci,
                out_c: co,
                h: a,
                w: a,
                groups: 1,
            }
        };
        let r = &mut SplitMix64::new(1);
        let x: Vec<u8> = (0..geom.input_len()).map(|_| r.next_u64() as u8 & 127).collect();
        // (the stem's 3 input channels take the 7-bit im2col path)
        let w: Vec<i8> = (0..geom.weight_len()).map(|_| r.next_u64() as i8).collect();
        let rq: Vec<Requant> = (0..co)
            .map(|_| Requant::from_real(1e-4, 3, QRange::U8).unwrap())
            .collect();
        let p = QConv2d {
            geom,
            input_zero_point: 11,
            requant: rq,
        };
        let a16 = PackedConv::with_isa(&p, &w, None, Isa::Avx2).unwrap();
        let a7 = PackedConv::with_input_range(&p, &w, None, Isa::Avx2, QRange::custom(0, 127).unwrap()).unwrap();
        assert!(a7.seven_bit());
        let wino = a7.winograd();
        let (a16, a7d) = (a16.direct_only(), a7.direct_only());
        let mut out = vec![0u8; geom.output_len().unwrap()];
        let [oh, ow] = geom.out_hw().unwrap();
        let macs = (geom.batch * oh * ow * co * ci * k * k) as f64;
        let iters = (6e9 / macs).ceil() as usize;
        let mut best = [f64::MAX; 3];
        for _round in 0..6 {
            for (i, pk) in [&a16, &a7d, &a7].iter().enumerate() {
                if i == 2 && !wino {
                    continue;
                }
                let t0 = oncpu();
                for _ in 0..iters {
                    pk.run(&geom, &x, &mut out).unwrap();
                }
                let t = (oncpu() - t0) as f64 / iters as f64;
                best[i] = best[i].min(t);
            }
        }
        println!(
            "{name}: i16 {:.1} us ({:.1} GOPS)  u7 {:.1} us ({:.1} GOPS)  ratio {:.2}",
            best[0] / 1e3,
            2.0 * macs / best[0],
            best[1] / 1e3,
            2.0 * macs / best[1],
            best[0] / best[1]
        );
        if wino {
            println!(
                "    winograd {:.1} us ({:.1} GOPS, direct-equivalent)  u7/winograd {:.2}",
                best[2] / 1e3,
                2.0 * macs / best[2],
                best[1] / best[2]
            );
        }
    }
}
