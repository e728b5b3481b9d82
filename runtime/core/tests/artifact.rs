//! The `.qmodel` artifact: round trips (bytes and files), each corruption with its own error, and
//! a seeded fuzz of mutations (raw bytes, and header edits with a valid checksum, which reach the
//! header and program checks) that never panics, also when a mutated model loads and runs.

mod common;

use common::*;
use qc_runtime::artifact::{Artifact, LoadError, Meta, ALIGN, FORMAT_VERSION, MAGIC};
use qc_runtime::kernels::Activation;
use qc_runtime::model::Model;
use qc_runtime::program::{FloatOp, Layout, ProgramError, StepOp};
use qc_runtime::{SplitMix64, Tensor};

/// A small mixed program (float conv, int8 conv/pool/linear), and an input for it.
fn artifact() -> (Artifact, Tensor) {
    let mut b = Builder::new(5);
    let x = random(&mut b.rng, vec![2, 2, 6, 6], -1.0, 1.0);
    let xi = b.input("x", x.clone());
    let xq = b.quantize("x.q", xi, Layout::ChannelsLast);
    let conv = b.qconv(
        "conv1",
        xq,
        window(&[3, 3], &[1, 1], &[1, 1], &[1, 1], false),
        1,
        Activation::Relu,
        (vec![4, 3, 3, 2], 0.03, Some(0.2)),
    );
    let pool = b.avgpool("pool", conv, window(&[2, 2], &[2, 2], &[0, 0], &[1, 1], false), true);
    let fl = b.flatten("flatten", pool);
    let fc = b.qlinear("fc", fl, 3, 0.02, Some(0.1), Activation::None);
    let out = b.dequantize("fc.dq", fc);
    b.output(out);
    let meta = Meta::new("tiny", "lowered", false, "0123abcd");
    (Artifact::new(meta, b.p), x)
}

#[test]
fn round_trips_through_bytes_and_files() {
    let (a, x) = artifact();
    let bytes = a.to_bytes().unwrap();
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), FORMAT_VERSION);
    let back = Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(back, a);
    // Every constant 64-byte aligned in the file.
    let h = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let data_start = (20 + h).div_ceil(ALIGN) * ALIGN;
    for c in &a.header().constants {
        assert_eq!((data_start as u64 + c.offset) % ALIGN as u64, 0);
    }
    assert_eq!(back.to_bytes().unwrap(), bytes, "writing is deterministic");

    let dir = std::env::temp_dir().join(format!("qc-artifact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.qmodel");
    a.write(&path).unwrap();
    let model = Model::load(&path).unwrap();
    let meta = model.meta();
    assert_eq!((meta.model.as_str(), meta.stage.as_str()), ("tiny", "lowered"));
    assert!(!meta.calibrated_for_accuracy);
    assert_eq!(meta.inputs[0].name, "x");
    assert_eq!(meta.inputs[0].shape, vec![None, Some(2), Some(6), Some(6)]);
    assert_eq!(meta.outputs[0].shape, vec![None, Some(3)]);
    let direct = Model::from_program(a.program.clone(), a.meta.clone()).unwrap();
    assert_eq!(model.run(std::slice::from_ref(&x)).unwrap(), direct.run(&[x]).unwrap());
    let again = dir.join("again.qmodel");
    model.save(&again).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
    assert!(matches!(
        Model::load(&dir.join("missing.qmodel")),
        Err(LoadError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quant_params_survive_json_bit_for_bit() {
    let mut rng = SplitMix64::new(1);
    for _ in 0..20_000 {
        // Positive normal f32 scales over the whole exponent range.
        let bits = (rng.next_u64() as u32 & 0x7fff_ffff).clamp(0x0080_0000, 0x7f7f_ffff);
        let q = qc_runtime::quant::QParams::new(f32::from_bits(bits), 3, qc_runtime::quant::QRange::U8).unwrap();
        let back: qc_runtime::quant::QParams = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back.scale().to_bits(), bits);
    }
    // Deserializing checks like the constructor.
    assert!(
        serde_json::from_str::<qc_runtime::quant::QParams>(r#"{"scale":0.0,"zero_point":0,"qmin":0,"qmax":255}"#)
            .is_err()
    );
    assert!(serde_json::from_str::<qc_runtime::quant::QParams>(
        r#"{"scale":1.0,"zero_point":300,"qmin":0,"qmax":255}"#
    )
    .is_err());
    assert!(serde_json::from_str::<qc_runtime::quant::QRange>(r#"{"qmin":0,"qmax":1000}"#).is_err());
}

/// The bytes with the checksum recomputed (to reach the checks after it).
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 8;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
    bytes
}

/// Replaces the JSON header (keeping the data section where it is when the length allows).
fn with_header(bytes: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let h = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let mut v: serde_json::Value = serde_json::from_slice(&bytes[20..20 + h]).unwrap();
    edit(&mut v);
    let mut json = serde_json::to_vec(&v).unwrap();
    let data_start = (20 + h).div_ceil(ALIGN) * ALIGN;
    // Pad with spaces to the old length when shorter, so the data section does not move.
    if json.len() <= data_start - 20 {
        json.resize(data_start - 20, b' ');
    }
    let mut out = bytes[..12].to_vec();
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize((20 + json.len()).div_ceil(ALIGN) * ALIGN, 0);
    out.extend_from_slice(&bytes[data_start..]);
    reseal(out)
}

#[test]
fn each_corruption_has_its_error() {
    let (a, _) = artifact();
    let bytes = a.to_bytes().unwrap();
    let load = |b: &[u8]| Artifact::from_bytes(b).expect_err("corrupt");

    // A flipped bit anywhere after the version field: the checksum.
    for i in (12..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert!(matches!(load(&b), LoadError::Checksum { .. }), "byte {i}");
    }
    // In the magic, in the version.
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(load(&b), LoadError::Magic { .. }));
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    let e = load(&b);
    assert!(matches!(e, LoadError::Version { found: 3 }));
    assert_eq!(e.to_string(), "format version 3, this qc reads 1 to 2");
    b[8..12].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(load(&b), LoadError::Version { found: 0 }));

    // Truncated: in the data section the header still describes the full length.
    for cut in [bytes.len() - 1, bytes.len() - 9, bytes.len() - 100, bytes.len() - 300] {
        let e = load(&bytes[..cut]);
        assert!(matches!(e, LoadError::Truncated { .. }), "cut at {cut}: {e}");
    }
    assert!(matches!(load(&bytes[..10]), LoadError::TooShort { .. }));
    // Cut inside the header: nothing parses, so the checksum names it.
    assert!(matches!(load(&bytes[..100]), LoadError::Checksum { .. }));

    // The header lies about a constant's length (checksum valid).
    let e = load(&with_header(&bytes, |v| {
        v["constants"][0]["length"] = serde_json::json!(v["constants"][0]["length"].as_u64().unwrap() - 1);
    }));
    assert!(matches!(e, LoadError::ConstantLength { index: 0, .. }), "{e}");
    // About an offset: misaligned, overlapping, past the end.
    let e = load(&with_header(&bytes, |v| {
        v["constants"][1]["offset"] = serde_json::json!(65)
    }));
    assert!(matches!(e, LoadError::ConstantAlignment { index: 1, .. }), "{e}");
    let e = load(&with_header(&bytes, |v| {
        v["constants"][1]["offset"] = serde_json::json!(0)
    }));
    assert!(matches!(e, LoadError::ConstantOrder { index: 1, .. }), "{e}");
    let e = load(&with_header(&bytes, |v| {
        let last = v["constants"].as_array().unwrap().len() - 1;
        v["constants"][last]["offset"] = serde_json::json!(1 << 20);
    }));
    assert!(matches!(e, LoadError::ConstantBounds { .. }), "{e}");
    // Bytes after the last constant.
    let mut longer = bytes[..bytes.len() - 8].to_vec();
    longer.extend_from_slice(&[0; 64]);
    longer.extend_from_slice(&[0; 8]);
    assert!(matches!(load(&reseal(longer)), LoadError::FileLength { .. }));
    // A header that is not JSON, or not ours; a header length beyond the file.
    let e = load(&with_header(&bytes, |v| v["program"] = serde_json::json!(3)));
    assert!(matches!(e, LoadError::Header(_)), "{e}");
    let mut b = bytes.clone();
    b[12..20].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(load(&reseal(b)), LoadError::HeaderLength { .. }));
    // Bad quantization parameters are a header error (QParams checks itself).
    let e = load(&with_header(&bytes, |v| {
        v["program"]["values"][1]["quant"]["scale"] = serde_json::json!(-1.0)
    }));
    assert!(matches!(e, LoadError::Header(_)), "{e}");
    // A valid file whose program is malformed: the program's error, naming the step.
    let e = load(&with_header(&bytes, |v| {
        v["program"]["steps"][1]["inputs"] = serde_json::json!([5])
    }));
    assert!(
        matches!(e, LoadError::Program(ProgramError::NotYetComputed { .. })),
        "{e}"
    );
}

#[test]
fn writing_refuses_what_json_cannot_carry() {
    let (mut a, _) = artifact();
    let n = a.program.values.len();
    let last = a.program.outputs[0];
    a.program
        .values
        .push(qc_runtime::program::ValueInfo::float("clamped", vec![None, Some(3)]));
    a.program.steps.push(qc_runtime::program::Step {
        op: StepOp::Float(FloatOp::Clamp {
            min: f32::NEG_INFINITY,
            max: 1.0,
        }),
        inputs: vec![last],
        output: n,
    });
    a.program.outputs = vec![n];
    assert!(Model::from_program(a.program.clone(), a.meta.clone()).is_ok());
    let e = a.to_bytes().expect_err("infinite bound");
    assert!(e.to_string().contains("does not read back"), "{e}");
}

/// 2,000 seeded mutations: never a panic. Half are raw byte edits (flips, cuts, insertions,
/// overwrites; almost all stop at the checksum), half edit the header's JSON text and reseal
/// the checksum, so the header parser, the constant checks, validation and, when a mutant
/// still loads, a run all see odd input.
#[test]
fn fuzzed_files_never_panic() {
    let (a, x) = artifact();
    let bytes = a.to_bytes().unwrap();
    let h = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let json = bytes[20..20 + h].to_vec();
    let mut rng = SplitMix64::new(2024);
    let (mut loaded, mut ran) = (0, 0);
    let digits = b"0123456789";
    for i in 0..2000 {
        let below = |rng: &mut SplitMix64, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
        let mutant = if i % 2 == 0 {
            let mut b = bytes.clone();
            match below(&mut rng, 4) {
                0 => {
                    let at = below(&mut rng, b.len());
                    b[at] ^= 1 << below(&mut rng, 8);
                }
                1 => b.truncate(below(&mut rng, b.len())),
                2 => {
                    let at = below(&mut rng, b.len());
                    b.insert(at, rng.next_u64() as u8);
                }
                _ => {
                    for _ in 0..4 {
                        let at = below(&mut rng, b.len());
                        b[at] = rng.next_u64() as u8;
                    }
                }
            }
            if below(&mut rng, 2) == 0 && b.len() >= 28 {
                reseal(b)
            } else {
                b
            }
        } else {
            // Edit the JSON text: replace a digit, delete or duplicate a short run, swap quotes.
            let mut j = json.clone();
            for _ in 0..1 + below(&mut rng, 3) {
                let at = below(&mut rng, j.len());
                match below(&mut rng, 4) {
                    0 => {
                        if let Some(p) = j[at..].iter().position(u8::is_ascii_digit) {
                            j[at + p] = digits[below(&mut rng, 10)];
                        }
                    }
                    1 => {
                        let end = (at + 1 + below(&mut rng, 8)).min(j.len());
                        j.drain(at..end);
                    }
                    2 => {
                        let end = (at + 1 + below(&mut rng, 8)).min(j.len());
                        let run = j[at..end].to_vec();
                        j.splice(at..at, run);
                    }
                    _ => {
                        if let Some(p) = j[at..].iter().position(u8::is_ascii_digit) {
                            j.insert(at + p, digits[below(&mut rng, 10)]);
                        }
                    }
                }
            }
            let mut b = bytes[..12].to_vec();
            b.extend_from_slice(&(j.len() as u64).to_le_bytes());
            b.extend_from_slice(&j);
            b.resize((20 + j.len()).div_ceil(ALIGN) * ALIGN, 0);
            b.extend_from_slice(&bytes[(20 + h).div_ceil(ALIGN) * ALIGN..]);
            reseal(b)
        };
        if let Ok(a) = Artifact::from_bytes(&mutant) {
            loaded += 1;
            if let Ok(m) = Model::from_program(a.program, a.meta) {
                // Inputs as the mutant declares them (any result but a panic is fine).
                let inputs: Vec<Tensor> = m
                    .meta()
                    .inputs
                    .iter()
                    .map(|s| {
                        let shape: Vec<usize> = s.shape.iter().map(|d| d.unwrap_or(2)).collect();
                        if shape == x.shape {
                            x.clone()
                        } else {
                            Tensor::zeros(s.dtype, shape)
                        }
                    })
                    .collect();
                if m.run(&inputs).is_ok() {
                    ran += 1;
                }
            }
        }
    }
    // Some mutants (a digit changed in a name, a scale or a zero point) still load and run.
    eprintln!("fuzz: {loaded} of 2000 mutants loaded, {ran} ran");
    assert!(loaded > 0);
}

fn with_normalize(a: &Artifact, name: &str, n: qc_runtime::normalize::Normalize) -> Artifact {
    let mut a = a.clone();
    a.meta = a
        .meta
        .clone()
        .with_input_normalize([(name.to_string(), n)].into_iter().collect());
    a
}

/// A `.qmodel` whose input normalization cannot be applied does not load (it would run and print
/// garbage): a std of 0 or below, lists of different lengths, a per-channel list that is not the
/// input's channel count, a name that is no input.
#[test]
fn a_normalization_that_cannot_be_applied_is_refused() {
    use qc_runtime::normalize::Normalize;
    let (a, _) = artifact();
    // (NaN and infinities cannot be written: JSON has none.)
    let per = |mean: Vec<f64>, std: Vec<f64>| Normalize { mean, std };
    for (name, n, says) in [
        ("x", Normalize::new(0.5, 0.0), "std 0 is not a finite number above 0"),
        ("x", Normalize::new(0.5, -0.0), "std -0 is not a finite number above 0"),
        ("x", Normalize::new(0.5, -1.0), "std -1 is not"),
        ("x", per(vec![0.1, 0.2], vec![1.0]), "2 mean(s) and 1 std(s)"),
        ("x", per(vec![], vec![]), "0 mean(s)"),
        (
            "x",
            per(vec![0.0; 3], vec![1.0; 3]),
            "3 values per channel, but the input has 2 channels",
        ),
        ("y", Normalize::new(0.5, 0.5), "`y`, which is no input"),
    ] {
        let bytes = with_normalize(&a, name, n.clone()).to_bytes().unwrap();
        match Artifact::from_bytes(&bytes) {
            Err(LoadError::Header(m)) => assert!(m.contains(says), "{n:?}: {m}"),
            other => panic!("{n:?}: {other:?}"),
        }
    }
    let ok = with_normalize(&a, "x", per(vec![0.1, 0.2], vec![0.5, 0.25]));
    assert_eq!(Artifact::from_bytes(&ok.to_bytes().unwrap()).unwrap(), ok);
}

/// `Model::run` normalizes the input its metadata names, per channel, exactly as
/// `Normalize::apply` does, then runs the program.
#[test]
fn the_model_normalizes_its_input_per_channel() {
    use qc_runtime::normalize::Normalize;
    let (a, x) = artifact();
    let n = Normalize {
        mean: vec![0.1, -0.2],
        std: vec![0.5, 2.0],
    };
    let normalizing = with_normalize(&a, "x", n.clone());
    let model = Model::from_program(normalizing.program.clone(), normalizing.meta.clone()).unwrap();
    let plain = Model::from_program(a.program.clone(), a.meta.clone()).unwrap();
    let by_hand = n.applied(&x).unwrap();
    assert_eq!(
        model.run(std::slice::from_ref(&x)).unwrap(),
        plain.run(std::slice::from_ref(&by_hand)).unwrap()
    );
    assert_eq!(model.normalize(std::slice::from_ref(&x)).unwrap(), vec![by_hand]);
    // A batch of another channel count is refused as the executor refuses it, not misread.
    let wrong = Tensor::f32(vec![1, 3, 6, 6], vec![0.0; 108]);
    assert!(matches!(
        model.run(&[wrong]),
        Err(qc_runtime::program::RunError::InputShape { .. })
    ));
}

/// A version-1 file (qc before per-input normalization) holds one `{mean, std}` pair; it still
/// loads, with that pair on every f32 input, the numbers read as written.
#[test]
fn a_version_1_file_with_one_normalization_pair_still_loads() {
    let (a, x) = artifact();
    let bytes = a.to_bytes().unwrap();
    let h = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let data_start = (20 + h).div_ceil(ALIGN) * ALIGN;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[20..20 + h]).unwrap();
    header["input_normalize"] = serde_json::json!({ "mean": 0.286, "std": 0.353 });
    let v1 = |header: &serde_json::Value| {
        let json = serde_json::to_vec(header).unwrap();
        let mut out = b"QCMODEL\0".to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.resize((20 + json.len()).div_ceil(ALIGN) * ALIGN, 0);
        out.extend_from_slice(&bytes[data_start..bytes.len() - 8]);
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    };
    let back = Artifact::from_bytes(&v1(&header)).unwrap();
    let n = &back.meta.input_normalize["x"];
    assert_eq!((n.mean.as_slice(), n.std.as_slice()), (&[0.286][..], &[0.353][..]));
    let model = Model::from_program(back.program.clone(), back.meta.clone()).unwrap();
    let plain = Model::from_program(a.program.clone(), a.meta.clone()).unwrap();
    let by_hand: Vec<f32> = x
        .as_f32()
        .unwrap()
        .iter()
        .map(|&v| ((v as f64 - 0.286) / 0.353) as f32)
        .collect();
    assert_eq!(
        model.run(std::slice::from_ref(&x)).unwrap(),
        plain.run(&[Tensor::f32(x.shape.clone(), by_hand)]).unwrap()
    );
    // Its std of 0 is refused as in version 2.
    header["input_normalize"] = serde_json::json!({ "mean": 0.5, "std": 0 });
    assert!(matches!(Artifact::from_bytes(&v1(&header)), Err(LoadError::Header(m)) if m.contains("std 0")));
    // A version-2 map in a version-1 file is not read as something else.
    header["input_normalize"] = serde_json::json!({ "x": { "mean": [0.5], "std": [0.5] } });
    assert!(matches!(Artifact::from_bytes(&v1(&header)), Err(LoadError::Header(_))));
}
