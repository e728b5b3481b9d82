//! Reading real PyTorch 2.11 checkpoints (`tests/data`, written by `tests/data/generate.py`):
//! every key of every fixture against its `.expect.json` (order, dtype, shape, quantization
//! parameters bit for bit, sums), the float fixtures against the examples' own keys and against
//! their `.safetensors` twins, and 2,000 seeded mutations of fixtures that must never panic.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use qc_compiler::ir::Stage;
use qc_compiler::pth::{self, CheckpointFormat, PthError, PthValue, QScheme, QTensor};
use qc_compiler::RunOptions;
use qc_runtime::{DType, SplitMix64, Tensor, TensorData};
use serde_json::Value;

const MODELS: &[&str] = &["fashion_cnn", "conv1d_net", "inception_block"];
const STAGES: &[&str] = &["fp32", "qat", "int8"];

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn expect(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(data(&format!("{name}.expect.json"))).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

/// qc's dtype for a PyTorch dtype (see `pth`'s module docs for the conversions).
fn qc_dtype(torch: &str) -> DType {
    match torch {
        "torch.float32" | "torch.float64" | "torch.float16" | "torch.bfloat16" => DType::F32,
        "torch.int64" => DType::I64,
        "torch.int32" => DType::I32,
        "torch.int8" | "torch.qint8" => DType::I8,
        "torch.uint8" | "torch.bool" | "torch.quint8" => DType::U8,
        "torch.qint32" => DType::I32,
        other => panic!("unexpected dtype {other}"),
    }
}

fn sums(t: &Tensor) -> (f64, f64) {
    fn go<T: Copy + Into<f64>>(v: &[T]) -> (f64, f64) {
        v.iter().fold((0.0, 0.0), |(s, a), x| {
            let x: f64 = (*x).into();
            (s + x, a + x.abs())
        })
    }
    match &t.data {
        TensorData::F32(v) => go(v),
        TensorData::I64(v) => v
            .iter()
            .fold((0.0, 0.0), |(s, a), x| (s + *x as f64, a + (*x as f64).abs())),
        TensorData::I32(v) => go(v),
        TensorData::I8(v) => go(v),
        TensorData::U8(v) => go(v),
    }
}

fn check_tensor(what: &str, t: &Tensor, e: &Value) {
    assert_eq!(t.dtype(), qc_dtype(e["dtype"].as_str().unwrap()), "{what}: dtype");
    let shape: Vec<usize> = e["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(t.shape, shape, "{what}: shape");
    assert_eq!(
        t.len(),
        t.to_le_bytes().len() / t.dtype().size(),
        "{what}: element count"
    );
    let (sum, abs_sum) = sums(t);
    let (want, want_abs) = (e["sum"].as_f64().unwrap(), e["abs_sum"].as_f64().unwrap());
    let tol = 1e-6 * want_abs.max(1.0);
    assert!((sum - want).abs() <= tol, "{what}: sum {sum} != {want}");
    assert!(
        (abs_sum - want_abs).abs() <= tol,
        "{what}: |sum| {abs_sum} != {want_abs}"
    );
}

fn bits(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn check_quantized(what: &str, q: &QTensor, e: &Value) {
    assert_eq!(e["kind"], "quantized", "{what}");
    check_tensor(what, &q.int_repr, e);
    match (&q.scheme, e["qscheme"].as_str().unwrap()) {
        (QScheme::PerTensor { scale, zero_point }, "per_tensor_affine") => {
            assert_eq!(scale.to_bits(), bits(&e["scale_bits"]), "{what}: scale {scale}");
            assert_eq!(*zero_point, e["zero_point"].as_i64().unwrap(), "{what}: zero point");
        }
        (
            QScheme::PerChannel {
                axis,
                scales,
                zero_points,
            },
            "per_channel_affine",
        ) => {
            assert_eq!(*axis as u64, e["axis"].as_u64().unwrap(), "{what}: axis");
            let want: Vec<u64> = e["scales_bits"].as_array().unwrap().iter().map(bits).collect();
            let got: Vec<u64> = scales.iter().map(|s| s.to_bits()).collect();
            assert_eq!(got, want, "{what}: scales");
            let want: Vec<i64> = e["zero_points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|z| z.as_i64().unwrap())
                .collect();
            assert_eq!(*zero_points, want, "{what}: zero points");
        }
        (got, want) => panic!("{what}: scheme {got:?}, expected {want}"),
    }
}

fn check_fixture(name: &str) -> IndexMap<String, PthValue> {
    let sd = pth::read_pth(&data(&format!("{name}.pth"))).unwrap_or_else(|e| panic!("{e}"));
    let expected = expect(name);
    let keys: Vec<&str> = sd.keys().map(String::as_str).collect();
    let want: Vec<&str> = expected.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, want, "{name}: keys and their order");
    for (e, (key, v)) in expected.iter().zip(&sd) {
        let what = format!("{name}: {key}");
        match (v, e["kind"].as_str().unwrap()) {
            (PthValue::Tensor(t), "tensor") => check_tensor(&what, t, e),
            (PthValue::Quantized(q), "quantized") => check_quantized(&what, q, e),
            (PthValue::Packed { weight, bias }, "packed") => {
                check_quantized(&format!("{what} (weight)"), weight, &e["weight"]);
                match (bias, &e["bias"]) {
                    (None, Value::Null) => {}
                    (Some(b), eb) if !eb.is_null() => check_tensor(&format!("{what} (bias)"), b, eb),
                    (b, eb) => panic!("{what}: bias {b:?}, expected {eb}"),
                }
            }
            (PthValue::DType(d), "dtype") => assert_eq!(d, e["value"].as_str().unwrap(), "{what}"),
            (PthValue::None, "none") => {}
            (v, kind) => panic!("{what}: got {v:?}, expected a {kind}"),
        }
    }
    sd
}

#[test]
fn every_fixture_reads_as_pytorch_wrote_it() {
    for model in MODELS {
        for stage in STAGES {
            let sd = check_fixture(&format!("{model}.{stage}"));
            assert!(sd.len() >= 18, "{model}.{stage}: {} keys", sd.len());
        }
    }
    check_fixture("edge_cases");
}

#[test]
fn qat_and_int8_fixtures_have_the_keys_of_eager_mode_quantization() {
    let qat = pth::read_pth(&data("fashion_cnn.qat.pth")).unwrap();
    for key in [
        "quant.activation_post_process.scale",
        "conv1.bn.weight",
        "conv1.bn.num_batches_tracked",
        "conv1.weight_fake_quant.scale",
        "conv1.weight_fake_quant.activation_post_process.min_val",
        "conv1.activation_post_process.zero_point",
        "fc1.weight_fake_quant.zero_point",
    ] {
        assert!(qat.contains_key(key), "fashion_cnn.qat: no `{key}`");
    }
    let int8 = pth::read_pth(&data("fashion_cnn.int8.pth")).unwrap();
    assert!(matches!(&int8["conv1.weight"], PthValue::Quantized(q)
        if q.int_repr.dtype() == DType::I8 && matches!(q.scheme, QScheme::PerChannel { axis: 0, .. })));
    assert!(matches!(&int8["conv1.scale"], PthValue::Tensor(t) if t.dtype() == DType::F32 && t.shape.is_empty()));
    assert!(matches!(&int8["quant.zero_point"], PthValue::Tensor(t) if t.dtype() == DType::I64));
    assert_eq!(int8["fc1._packed_params.dtype"], PthValue::DType("torch.qint8".into()));
    match &int8["fc1._packed_params._packed_params"] {
        PthValue::Packed { weight, bias: Some(b) } => {
            assert_eq!(weight.int_repr.shape, [64, 1568]);
            assert_eq!(b.shape, [64]);
        }
        other => panic!("fc1 packed params: {other:?}"),
    }
    let inception = pth::read_pth(&data("inception_block.int8.pth")).unwrap();
    assert!(inception.contains_key("Mixed_5b.cat.scale"));
    assert!(inception.contains_key("Conv2d_1a_3x3.conv.weight"));
}

/// The float fixtures have exactly the examples' keys, order, dtypes and shapes, and the same
/// values as their safetensors twins.
#[test]
fn float_fixtures_fit_the_examples_and_match_safetensors() {
    for model in MODELS {
        let loaded = qc_dsl::load(&Path::new("examples").join(format!("{model}.qrecipe"))).unwrap();
        let opts = RunOptions {
            stop_after: Some(Stage::Float),
            ..Default::default()
        };
        let module = qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {})
            .unwrap_or_else(|_| panic!("{model} compiles"));
        let sd = pth::read_pth(&data(&format!("{model}.fp32.pth"))).unwrap();
        let got: Vec<(String, DType, Vec<usize>)> = sd
            .iter()
            .map(|(k, v)| match v {
                PthValue::Tensor(t) => (k.clone(), t.dtype(), t.shape.clone()),
                other => panic!("{model}: `{k}` is {other:?}"),
            })
            .collect();
        let want: Vec<(String, DType, Vec<usize>)> = module
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.dtype, p.shape.clone()))
            .collect();
        assert_eq!(got, want, "{model}: keys, order, dtypes, shapes");

        let st = qc_compiler::checkpoint::read_safetensors(&data(&format!("{model}.fp32.safetensors"))).unwrap();
        assert_eq!(st.len(), sd.len());
        for (k, t) in &st {
            assert_eq!(
                sd[k],
                PthValue::Tensor(t.clone()),
                "{model}: `{k}` differs from safetensors"
            );
        }
    }
}

#[test]
fn formats_are_told_apart_by_content() {
    let read = |n: &str| std::fs::read(data(n)).unwrap();
    assert_eq!(pth::sniff(&read("edge_cases.pth")), CheckpointFormat::Pth);
    assert!(pth::is_pth(&read("conv1d_net.int8.pth")));
    assert_eq!(
        pth::sniff(&read("conv1d_net.fp32.safetensors")),
        CheckpointFormat::Safetensors
    );
    assert_eq!(pth::sniff(&read("legacy.pth")), CheckpointFormat::LegacyPth);
    let err = pth::read_pth(&data("legacy.pth")).unwrap_err();
    assert!(matches!(err, PthError::Legacy { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("legacy.pth") && msg.contains("_use_new_zipfile_serialization"),
        "{msg}"
    );
    let err = pth::read_pth(&data("nonexistent.pth")).unwrap_err();
    assert!(matches!(err, PthError::Io { .. }));
}

#[test]
fn corrupted_storages_are_caught_by_their_checksum() {
    let mut f = std::fs::read(data("edge_cases.pth")).unwrap();
    // The first storage, `data/0`, holds `f32` (2x3 float32); change one of its bytes.
    let name = b"edge_cases/data/0";
    let at = f.windows(name.len()).position(|w| w == name).unwrap();
    let extra = u16::from_le_bytes([f[at - 2], f[at - 1]]) as usize;
    f[at + name.len() + extra] ^= 0x40;
    let err = pth::read_pth_bytes(&f).unwrap_err().to_string();
    assert!(
        err.contains("`f32`") && err.to_lowercase().contains("checksum"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness.

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Where the stored `data.pkl` lies in a torch.save archive, and where its two CRC fields are.
struct PickleSpan {
    start: usize,
    len: usize,
    crc_fields: Vec<usize>,
}

fn pickle_span(file: &[u8]) -> PickleSpan {
    let u16_at = |i: usize| u16::from_le_bytes([file[i], file[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes([file[i], file[i + 1], file[i + 2], file[i + 3]]) as usize;
    let find = |sig: &[u8]| -> usize {
        (0..file.len() - 46)
            .find(|&i| {
                file[i..].starts_with(sig) && {
                    let (n, name) = if sig == b"PK\x03\x04" {
                        (u16_at(i + 26), i + 30)
                    } else {
                        (u16_at(i + 28), i + 46)
                    };
                    file[name..name + n].ends_with(b"/data.pkl")
                }
            })
            .unwrap()
    };
    let local = find(b"PK\x03\x04");
    let central = find(b"PK\x01\x02");
    let start = local + 30 + u16_at(local + 26) + u16_at(local + 28);
    let len = u32_at(central + 24);
    // torch's writer streams: the local header's CRC is zero and a data descriptor follows.
    let mut crc_fields = vec![central + 16, local + 14];
    if u16_at(local + 6) & 8 != 0 {
        let d = start + len;
        crc_fields.push(if file[d..].starts_with(b"PK\x07\x08") { d + 4 } else { d });
    }
    PickleSpan { start, len, crc_fields }
}

fn mutate(file: &[u8], span: &PickleSpan, rng: &mut SplitMix64) -> (Vec<u8>, String) {
    let mut m = file.to_vec();
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    match pick(6) {
        // Inside the pickle, with the CRCs fixed so that the pickle machine sees the bytes.
        0..=2 => {
            let mut what = vec![];
            for _ in 0..1 + pick(3) {
                let at = span.start + pick(span.len);
                let v = pick(256) as u8;
                what.push(format!("pickle[{}]={v:#04x}", at - span.start));
                m[at] = v;
            }
            let crc = crc32(&m[span.start..span.start + span.len]).to_le_bytes();
            for &f in &span.crc_fields {
                if f == span.crc_fields[1] && file[f..f + 4] == [0; 4] {
                    continue; // a zero local CRC stays zero
                }
                m[f..f + 4].copy_from_slice(&crc);
            }
            (m, what.join(" "))
        }
        // Anywhere in the file: the zip structure, the storages.
        3 | 4 => {
            let at = pick(m.len());
            let v = pick(256) as u8;
            m[at] = v;
            (m, format!("file[{at}]={v:#04x}"))
        }
        _ => {
            let at = pick(m.len());
            m.truncate(at);
            (m, format!("truncated at {at}"))
        }
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let fixtures: Vec<(&str, Vec<u8>)> = ["edge_cases.pth", "fashion_cnn.int8.pth", "conv1d_net.qat.pth"]
        .iter()
        .map(|n| (*n, std::fs::read(data(n)).unwrap()))
        .collect();
    let spans: Vec<PickleSpan> = fixtures.iter().map(|(_, f)| pickle_span(f)).collect();
    // The CRC fix-up is right: an unmutated pickle with recomputed CRCs still reads.
    for ((name, f), s) in fixtures.iter().zip(&spans) {
        assert_eq!(
            crc32(&f[s.start..s.start + s.len]).to_le_bytes(),
            f[s.crc_fields[0]..s.crc_fields[0] + 4],
            "{name}"
        );
    }
    let seed = 0x00c0_ffee_d00d_u64;
    let mut rng = SplitMix64::new(seed);
    let (mut ok, mut errors, mut crc_errors) = (0, 0, 0);
    let mut panics = vec![];
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    // `QC_PTH_CASES` explores further (30,000 pass).
    let cases: usize = std::env::var("QC_PTH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for case in 0..cases {
        let i = case % fixtures.len();
        let (m, what) = mutate(&fixtures[i].1, &spans[i], &mut rng);
        match panic::catch_unwind(AssertUnwindSafe(|| pth::read_pth_bytes(&m))) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                if what.starts_with("pickle") && msg.to_lowercase().contains("checksum") {
                    crc_errors += 1;
                }
                errors += 1
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panics.push(format!("case {case} ({}: {what}): {msg}", fixtures[i].0));
            }
        }
    }
    panic::set_hook(hook);
    assert!(
        panics.is_empty(),
        "{} panics (seed {seed:#x}):\n{}",
        panics.len(),
        panics.join("\n")
    );
    eprintln!("{ok} mutated files read, {errors} refused");
    // Mutations inside the pickle reach the pickle machine (the CRCs were fixed up).
    assert_eq!(crc_errors, 0);
    // Most mutations must be noticed; some (a changed float, a changed storage key) read fine.
    assert!(errors > cases / 2 && ok > 0, "{errors} errors, {ok} read");
}
