//! Criterion benchmarks of the int8 kernels: the scalar reference against the packed AVX2 paths
//! (`vpmaddwd` on centred `i16` input, and `vpmaddubsw` on 7-bit input: `avx2_u7`) on
//! ResNet-18-like shapes. Figures and the command are in benches/README.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qc_runtime::kernels::fast::{Isa, PackedConv, PackedLinear};
use qc_runtime::kernels::{reference, Axis, Conv2dGeom, QConv2d, QLinear};
use qc_runtime::quant::{QRange, Requant};

/// PyTorch x86's reduce_range activations: `[0, 127]`.
fn u7() -> QRange {
    QRange::custom(0, 127).unwrap()
}
use qc_runtime::SplitMix64;

fn bytes(r: &mut SplitMix64, n: usize) -> Vec<u8> {
    (0..n).map(|_| r.next_u64() as u8).collect()
}

/// Input bytes in `[0, 127]` (both AVX2 paths time the same input).
fn bytes7(r: &mut SplitMix64, n: usize) -> Vec<u8> {
    (0..n).map(|_| r.next_u64() as u8 & 127).collect()
}

fn requant(n: usize) -> Vec<Requant> {
    (0..n)
        .map(|i| Requant::from_real(1e-4 * (1.0 + i as f64 / n as f64), 3, QRange::U8).unwrap())
        .collect()
}

fn conv(c: &mut Criterion, name: &str, geom: Conv2dGeom) {
    let r = &mut SplitMix64::new(1);
    let x = bytes7(r, geom.input_len());
    let w: Vec<i8> = bytes(r, geom.weight_len()).into_iter().map(|b| b as i8).collect();
    let bias: Vec<i32> = (0..geom.out_c as i32).map(|i| i * 100 - 3000).collect();
    let p = QConv2d {
        geom,
        input_zero_point: 11,
        requant: requant(geom.out_c),
    };
    let n = geom.output_len().unwrap();
    let [oh, ow] = geom.out_hw().unwrap();
    let macs = (geom.batch * oh * ow * geom.out_c * geom.reduction_len()) as u64;
    let mut g = c.benchmark_group(name);
    // Elements = MACs: criterion prints MACs/s; GOPS = 2 · MACs/s.
    g.throughput(Throughput::Elements(macs));
    let mut out = vec![0u8; n];
    g.bench_function(BenchmarkId::new("reference", ""), |b| {
        b.iter(|| reference::qconv2d(&p, &x, &w, Some(&bias), &mut out).unwrap())
    });
    let packed = PackedConv::with_isa(&p, &w, Some(&bias), Isa::Avx2).unwrap();
    let label = format!("{:?}", packed.isa()).to_lowercase();
    g.bench_function(BenchmarkId::new(label, ""), |b| {
        b.iter(|| packed.run(&geom, &x, &mut out).unwrap())
    });
    let packed7 = PackedConv::with_input_range(&p, &w, Some(&bias), Isa::Avx2, u7()).unwrap();
    if packed7.seven_bit() {
        g.bench_function(BenchmarkId::new("avx2_u7", ""), |b| {
            b.iter(|| packed7.run(&geom, &x, &mut out).unwrap())
        });
    }
    // The VNNI-layout paths this CPU runs (full 8-bit inputs; none on an AVX2-only CPU).
    for isa in [Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx] {
        if isa.check().is_ok() {
            let packed = PackedConv::with_isa(&p, &w, Some(&bias), isa).unwrap();
            g.bench_function(BenchmarkId::new(isa.name(), ""), |b| {
                b.iter(|| packed.run(&geom, &x, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

fn square(batch: usize, hw: usize, in_c: usize, out_c: usize, k: usize, stride: usize, groups: usize) -> Conv2dGeom {
    let a = Axis::new(k, stride, k / 2, 1);
    Conv2dGeom {
        batch,
        in_h: hw,
        in_w: hw,
        in_c,
        out_c,
        h: a,
        w: a,
        groups,
    }
}

fn benches(c: &mut Criterion) {
    conv(c, "conv3x3_64x64_56x56", square(1, 56, 64, 64, 3, 1, 1));
    conv(c, "conv3x3_256x256_14x14", square(1, 14, 256, 256, 3, 1, 1));
    conv(c, "conv1x1_128x256_28x28_s2", square(1, 28, 128, 256, 1, 2, 1));
    conv(c, "dw3x3_128_56x56", square(1, 56, 128, 128, 3, 1, 128));

    let (k, m) = (512, 1000);
    let r = &mut SplitMix64::new(2);
    let x = bytes7(r, k);
    let w: Vec<i8> = bytes(r, m * k).into_iter().map(|b| b as i8).collect();
    let p = QLinear {
        batch: 1,
        in_features: k,
        out_features: m,
        input_zero_point: 5,
        requant: requant(m),
    };
    let mut out = vec![0u8; m];
    let mut g = c.benchmark_group("linear_512x1000_b1");
    g.throughput(Throughput::Elements((k * m) as u64));
    g.bench_function(BenchmarkId::new("reference", ""), |b| {
        b.iter(|| reference::qlinear(&p, &x, &w, None, &mut out).unwrap())
    });
    let packed = PackedLinear::with_isa(&p, &w, None, Isa::Avx2).unwrap();
    let label = format!("{:?}", packed.isa()).to_lowercase();
    g.bench_function(BenchmarkId::new(label, ""), |b| {
        b.iter(|| packed.run(1, &x, &mut out).unwrap())
    });
    let packed7 = PackedLinear::with_input_range(&p, &w, None, Isa::Avx2, u7()).unwrap();
    if packed7.seven_bit() {
        g.bench_function(BenchmarkId::new("avx2_u7", ""), |b| {
            b.iter(|| packed7.run(1, &x, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
