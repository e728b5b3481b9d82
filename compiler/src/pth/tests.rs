//! Tests of the `.pth` reader: hand-built pickles and archives, views, quantized tensors, limits.

use super::*;
use std::io::Write;

/// A hand-written pickle, protocol 2, opcode by opcode.
struct P(Vec<u8>);

impl P {
    fn new() -> P {
        P(vec![0x80, 2])
    }
    fn op(mut self, b: &[u8]) -> P {
        self.0.extend_from_slice(b);
        self
    }
    fn global(self, module: &str, name: &str) -> P {
        self.op(b"c").op(format!("{module}\n{name}\n").as_bytes())
    }
    fn s(self, text: &str) -> P {
        let n = (text.len() as u32).to_le_bytes();
        self.op(b"X").op(&n).op(text.as_bytes())
    }
    fn int(self, v: i32) -> P {
        self.op(b"J").op(&v.to_le_bytes())
    }
    fn float(self, v: f64) -> P {
        self.op(b"G").op(&v.to_be_bytes())
    }
    fn ints(mut self, v: &[i64]) -> P {
        self = self.op(b"(");
        for x in v {
            self = self.int(*x as i32);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size,
    /// stride, False, OrderedDict())`
    fn tensor(self, class: &str, key: &str, numel: i32, offset: i32, size: &[i64], stride: &[i64]) -> P {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage(class, key, numel)
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
    fn storage(self, class: &str, key: &str, numel: i32) -> P {
        self.op(b"(")
            .s("storage")
            .global("torch", class)
            .s(key)
            .s("cpu")
            .int(numel)
            .op(b"tQ")
    }
    /// A state dict: `OrderedDict()`, then `SETITEMS` of the body.
    fn dict(body: P) -> Vec<u8> {
        let mut p = P::new().global("collections", "OrderedDict").op(b")R(");
        p.0.extend_from_slice(&body.0[2..]);
        p.op(b"u.").0
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn run(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Result<IndexMap<String, PthValue>, KeyFail> {
    run_order(pkl, storages, false)
}

fn run_order(
    pkl: &[u8],
    storages: &[(&str, Vec<u8>)],
    big_endian: bool,
) -> Result<IndexMap<String, PthValue>, KeyFail> {
    let map: HashMap<String, Vec<u8>> = storages.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut load = |key: &str, n: usize| match map.get(key) {
        Some(v) if v.len() == n => Ok(Rc::new(v.clone())),
        Some(v) => Err(format!(
            "storage `{key}` has {} bytes where its tensor needs {n}",
            v.len()
        )),
        None => Err(format!("no storage `{key}`")),
    };
    let root = Machine::new(pkl, big_endian, 1 << 20, &mut load)
        .run()
        .map_err(|m| (None, m))?;
    to_state_dict(root)
}

fn f32s(v: &PthValue) -> (Vec<usize>, Vec<f32>) {
    match v {
        PthValue::Tensor(Tensor {
            shape,
            data: TensorData::F32(d),
        }) => (shape.clone(), d.clone()),
        other => panic!("not an f32 tensor: {other:?}"),
    }
}

fn storage12() -> Vec<(&'static str, Vec<u8>)> {
    vec![("0", f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>()))]
}

#[test]
fn views_with_strides_and_offsets_are_materialised_row_major() {
    let body = P::new()
        .s("plain")
        .tensor("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
        .s("transposed")
        .tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4])
        .s("offset_strided")
        .tensor("FloatStorage", "0", 12, 1, &[2, 3], &[1, 4])
        .s("expanded")
        .tensor("FloatStorage", "0", 12, 5, &[2, 3], &[0, 1])
        .s("size_one_any_stride")
        .tensor("FloatStorage", "0", 12, 11, &[1, 1], &[1 << 40, 7])
        .s("scalar")
        .tensor("FloatStorage", "0", 12, 7, &[], &[])
        .s("empty")
        .tensor("FloatStorage", "0", 12, 0, &[0, 5], &[5, 1]);
    let sd = run(&P::dict(body), &storage12()).unwrap();
    let keys: Vec<&str> = sd.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "plain",
            "transposed",
            "offset_strided",
            "expanded",
            "size_one_any_stride",
            "scalar",
            "empty"
        ]
    );
    let iota: Vec<f32> = (0..12).map(|i| i as f32).collect();
    assert_eq!(f32s(&sd["plain"]), (vec![3, 4], iota));
    assert_eq!(
        f32s(&sd["transposed"]).1,
        [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
    );
    assert_eq!(f32s(&sd["offset_strided"]).1, [1., 5., 9., 2., 6., 10.]);
    assert_eq!(f32s(&sd["expanded"]).1, [5., 6., 7., 5., 6., 7.]);
    assert_eq!(f32s(&sd["size_one_any_stride"]), (vec![1, 1], vec![11.]));
    assert_eq!(f32s(&sd["scalar"]), (vec![], vec![7.]));
    assert_eq!(f32s(&sd["empty"]), (vec![0, 5], vec![]));
}

#[test]
fn views_outside_their_storage_are_refused_with_the_key() {
    for (size, stride, offset) in [
        (vec![3i64, 4], vec![4i64, 1], 1),
        (vec![2, 7], vec![1, 1], 6),
        (vec![13], vec![1], 0),
        (vec![2, 2], vec![-1, 1], 0),
        (vec![-2], vec![1], 0),
        (vec![2], vec![1], -1),
    ] {
        let body = P::new().s("w").tensor("FloatStorage", "0", 12, offset, &size, &stride);
        let (key, msg) = run(&P::dict(body), &storage12()).unwrap_err();
        assert_eq!(key.as_deref(), Some("w"), "{msg}");
    }
    // size and stride of different ranks
    let body = P::new().s("w").tensor("FloatStorage", "0", 12, 0, &[3, 4], &[1]);
    assert!(run(&P::dict(body), &storage12()).unwrap_err().1.contains("dimensions"));
}

#[test]
fn storages_are_checked_against_the_archive() {
    // The archive's record is shorter than the persistent id says.
    let body = P::new().s("w").tensor("FloatStorage", "0", 13, 0, &[13], &[1]);
    let (key, msg) = run(&P::dict(body), &storage12()).unwrap_err();
    assert_eq!(key.as_deref(), Some("w"));
    assert!(msg.contains("48 bytes where its tensor needs 52"), "{msg}");
    // A missing record.
    let body = P::new().s("w").tensor("FloatStorage", "9", 12, 0, &[12], &[1]);
    assert!(run(&P::dict(body), &storage12())
        .unwrap_err()
        .1
        .contains("no storage `9`"));
    // One key used with two storage types.
    let body = P::new()
        .s("a")
        .tensor("FloatStorage", "0", 12, 0, &[12], &[1])
        .s("b")
        .tensor("IntStorage", "0", 12, 0, &[12], &[1]);
    let (key, msg) = run(&P::dict(body), &storage12()).unwrap_err();
    assert_eq!(key.as_deref(), Some("b"), "{msg}");
    // Complex storages are refused by name.
    let body = P::new().s("c").tensor("ComplexFloatStorage", "0", 6, 0, &[6], &[1]);
    let (_, msg) = run(&P::dict(body), &storage12()).unwrap_err();
    assert!(msg.contains("torch.ComplexFloatStorage"), "{msg}");
}

#[test]
fn memo_reuse_and_its_limits() {
    // The rebuild function, the storage tuple and a finished tensor all come from the memo.
    let body = P::new()
        .s("a")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"q\x01(")
        .storage("FloatStorage", "0", 12)
        .op(b"r\x02\x00\x00\x00")
        .int(0)
        .ints(&[12])
        .ints(&[1])
        .op(&[0x89])
        .global("collections", "OrderedDict")
        .op(b")R")
        .op(b"tR")
        .op(b"q\x03") // the tensor
        .s("b")
        .op(b"h\x01(j\x02\x00\x00\x00")
        .int(2)
        .ints(&[2, 2])
        .ints(&[1, 2])
        .op(&[0x89])
        .global("collections", "OrderedDict")
        .op(b")RtR")
        .s("c")
        .op(b"h\x03");
    let sd = run(&P::dict(body), &storage12()).unwrap();
    assert_eq!(f32s(&sd["b"]), (vec![2, 2], vec![2., 4., 3., 5.]));
    assert_eq!(sd["a"], sd["c"]);

    // A dict read from the memo would be a stale copy: refused.
    let pkl = P::new().op(b"}q\x00h\x00.").0;
    assert!(run(&pkl, &[]).unwrap_err().1.contains("shared by reference"));
    // Reading an entry never written.
    let pkl = P::new().op(b"h\x05.").0;
    assert!(run(&pkl, &[]).unwrap_err().1.contains("read before it is written"));
}

#[test]
fn malformed_pickles_are_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "ends in the middle"),
        (P::new().op(b"}").0, "ends in the middle"),
        (P::new().op(b"X\xff\xff\xff\x7f").0, "ends in the middle"),
        (vec![0x80, 1, b'}', b'.'], "protocol 1"),
        (P::new().op(b"\xff").0, "unsupported pickle opcode 0xff"),
        (P::new().op(b"s.").0, "stack does not have"),
        (P::new().op(b"(}s.").0, "stack does not have"),
        (P::new().op(b"t.").0, "MARK"),
        (P::new().op(b"K\x01K\x02a.").0, "APPEND to an int"),
        (
            P::new().op(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.").0,
            "64 bits",
        ),
        (P::new().op(b"X\x02\x00\x00\x00\xc3\x28.").0, "UTF-8"),
        (P::new().op(b"cfoo").0, "not terminated"),
        (P::new().op(b"}(K\x01K\x02K\x03u.").0, "odd number"),
        (P::new().op(b"K\x07.").0, "holds an int, not a state_dict"),
    ];
    for (pkl, want) in cases {
        let err = run(&pkl, &[]).unwrap_err().1;
        assert!(err.contains(want), "{pkl:?}: {err}");
    }
    // Nesting and stack limits.
    let deep = P::new().op(b")").op(&[0x85; 100]).op(b".").0;
    assert!(run(&deep, &[]).unwrap_err().1.contains("nest deeper"));
    let mut wide = P::new().op(b"(");
    wide.0.extend(std::iter::repeat_n(b'N', MAX_STACK + 1));
    assert!(run(&wide.op(b".").0, &[]).unwrap_err().1.contains("stack grows"));
    // LONG1 within 64 bits, negative and positive.
    assert_eq!(long(&[0xff]).unwrap(), -1);
    assert_eq!(long(&[0xff, 0x00]).unwrap(), 255);
    assert_eq!(long(&[0; 9]).unwrap(), 0);
    assert_eq!(long(&[0xff; 12]).unwrap(), -1);
    assert!(long(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]).is_err());
}

#[test]
fn unsupported_globals_name_the_key_and_the_global() {
    let body = P::new()
        .s("fc._packed_params._packed_params")
        .global("foo", "Bar")
        .op(b")R");
    let (key, msg) = run(&P::dict(body), &[]).unwrap_err();
    assert_eq!(key.as_deref(), Some("fc._packed_params._packed_params"));
    assert_eq!(msg, "unsupported pickle global `foo.Bar`");
    // A pickled module (torch.save(model)): NEWOBJ then BUILD.
    let pkl = P::new().global("__main__", "Net").op(b")\x81}b.").0;
    let (key, msg) = run(&pkl, &[]).unwrap_err();
    assert_eq!(key, None);
    assert!(
        msg.contains("`__main__.Net`") && msg.contains("model.state_dict()"),
        "{msg}"
    );
    // A training checkpoint: a dict inside the dict.
    let pkl = P::new().op(b"}(").s("model").op(b"}").s("epoch").op(b"K\x03u.").0;
    let (key, msg) = run(&pkl, &[]).unwrap_err();
    assert_eq!(key, None);
    assert!(
        msg.contains("under `model`") && msg.contains("checkpoint['model']"),
        "{msg}"
    );
}

#[test]
fn quantized_tensors_and_packed_params() {
    let q = |p: P, params: P| -> P {
        p.global("torch._utils", "_rebuild_qtensor")
            .op(b"(")
            .storage("QInt8Storage", "q", 6)
            .int(0)
            .ints(&[2, 3])
            .ints(&[3, 1])
            .op(b"(")
            .op(&params.0[2..])
            .op(b"t")
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")RtR")
    };
    let storages = vec![
        ("q", vec![1u8, 2, 3, 0xff, 0xfe, 0x80]),
        (
            "s",
            [0.5f64, 0.25, 0.125].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        ("z", [0i64, 1, -1].iter().flat_map(|x| x.to_le_bytes()).collect()),
    ];
    let body = q(
        P::new().s("pt"),
        P::new().global("torch", "per_tensor_affine").float(0.25).int(-3),
    );
    let body = q(
        body.s("pc"),
        P::new()
            .global("torch", "per_channel_affine")
            .tensor("DoubleStorage", "s", 3, 0, &[3], &[1])
            .tensor("LongStorage", "z", 3, 0, &[3], &[1])
            .int(1),
    );
    let body = q(
        body.s("packed").op(b"("),
        P::new().global("torch", "per_tensor_affine").float(1.0).int(0),
    )
    .op(b"Nt")
    .s("dtype")
    .global("torch", "qint8");
    let sd = run(&P::dict(body), &storages).unwrap();
    let int_repr = Tensor {
        shape: vec![2, 3],
        data: TensorData::I8(vec![1, 2, 3, -1, -2, -128]),
    };
    assert_eq!(
        sd["pt"],
        PthValue::Quantized(QTensor {
            int_repr: int_repr.clone(),
            scheme: QScheme::PerTensor {
                scale: 0.25,
                zero_point: -3
            }
        })
    );
    assert_eq!(
        sd["pc"],
        PthValue::Quantized(QTensor {
            int_repr: int_repr.clone(),
            scheme: QScheme::PerChannel {
                axis: 1,
                scales: vec![0.5, 0.25, 0.125],
                zero_points: vec![0, 1, -1]
            }
        })
    );
    assert!(matches!(&sd["packed"], PthValue::Packed { bias: None, weight } if weight.int_repr == int_repr));
    assert_eq!(sd["dtype"], PthValue::DType("torch.qint8".into()));

    // Bad quantization parameters: axis out of range, scales that do not fit, zero scale.
    for params in [
        P::new()
            .global("torch", "per_channel_affine")
            .tensor("DoubleStorage", "s", 3, 0, &[3], &[1])
            .tensor("LongStorage", "z", 3, 0, &[3], &[1])
            .int(2),
        P::new()
            .global("torch", "per_channel_affine")
            .tensor("DoubleStorage", "s", 3, 0, &[2], &[1])
            .tensor("LongStorage", "z", 3, 0, &[2], &[1])
            .int(1),
        P::new().global("torch", "per_tensor_affine").float(0.0).int(0),
        P::new().global("torch", "per_tensor_symmetric").float(1.0).int(0),
    ] {
        let (key, msg) = run(&P::dict(q(P::new().s("bad"), params)), &storages).unwrap_err();
        assert_eq!(key.as_deref(), Some("bad"), "{msg}");
    }
}

#[test]
fn dtypes_convert_as_documented() {
    let raw = |stype, bytes: Vec<u8>| Raw {
        stype,
        shape: vec![bytes.len() / SType::size(stype)],
        bytes,
    };
    let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7c00, 0x3555, 0x8000]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let t = raw(SType::F16, halves).to_tensor();
    let v = t.as_f32().unwrap();
    assert_eq!(&v[..4], [1.0, -2.0, 2f32.powi(-24), f32::INFINITY]);
    assert_eq!(v[4], 0.333_251_95);
    assert!(v[5] == 0.0 && v[5].is_sign_negative());
    assert_eq!(raw(SType::BF16, vec![0x80, 0x3f]).to_tensor().as_f32().unwrap(), [1.0]);
    assert_eq!(
        raw(SType::F64, 0.1f64.to_le_bytes().to_vec())
            .to_tensor()
            .as_f32()
            .unwrap(),
        [0.1f32]
    );
    assert_eq!(
        raw(SType::Bool, vec![0, 1, 2]).to_tensor().data,
        TensorData::U8(vec![0, 1, 1])
    );
    assert_eq!(
        raw(SType::I16, (-300i16).to_le_bytes().to_vec()).to_tensor().data,
        TensorData::I32(vec![-300])
    );
}

#[test]
fn big_endian_storages_are_swapped() {
    let body = P::new().s("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let sd = run_order(&P::dict(body), &[("0", be)], true).unwrap();
    assert_eq!(f32s(&sd["w"]).1, [1.5, -2.0]);
}

/// A zip archive as torch.save writes it (stored members), with extra members added.
fn archive(prefix: &str, pkl: &[u8], members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file(format!("{prefix}/data.pkl"), opts).unwrap();
    w.write_all(pkl).unwrap();
    for (name, data) in members {
        w.start_file(format!("{prefix}/{name}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn archives_with_any_prefix_and_byte_order() {
    let pkl = P::dict(P::new().s("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]));
    let le = f32_bytes(&[1.5, -2.0]);
    let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    for (prefix, order, data) in [
        ("archive", Some(&b"little"[..]), &le),
        ("my model (v2)", None, &le),
        ("x", Some(&b"big"[..]), &be),
    ] {
        let mut members: Vec<(&str, &[u8])> = vec![("data/0", data), ("version", b"3\n")];
        if let Some(o) = order {
            members.push(("byteorder", o));
        }
        let sd = read_pth_bytes(&archive(prefix, &pkl, &members)).unwrap();
        assert_eq!(f32s(&sd["w"]).1, [1.5, -2.0], "{prefix}");
    }
    let bad = archive("x", &pkl, &[("data/0", &le), ("byteorder", b"middle")]);
    assert!(read_pth_bytes(&bad).unwrap_err().to_string().contains("`middle`"));
    // A storage record of the wrong size is reported with the key.
    let short = archive("x", &pkl, &[("data/0", &le[..7])]);
    let err = read_pth_bytes(&short).unwrap_err().to_string();
    assert!(
        err.contains("`w`") && err.contains("7 bytes where its tensor needs 8"),
        "{err}"
    );
}

#[test]
fn other_formats_are_refused_with_what_to_do() {
    let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    assert_eq!(sniff(&legacy), CheckpointFormat::LegacyPth);
    let e = read_pth_bytes(&legacy).unwrap_err();
    assert!(matches!(e, PthError::Legacy { .. }));
    assert!(e.to_string().contains("torch.save(torch.load("), "{e}");

    let mut st = 2u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    assert_eq!(sniff(&st), CheckpointFormat::Safetensors);
    assert!(read_pth_bytes(&st).unwrap_err().to_string().contains("safetensors"));

    assert_eq!(sniff(b"hello"), CheckpointFormat::Unknown);
    assert!(read_pth_bytes(b"hello").unwrap_err().to_string().contains("zip"));

    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("m/data.pkl", opts).unwrap();
    w.write_all(b"\x80\x02c__torch__\nNet\n)\x81.").unwrap();
    w.start_file("m/constants.pkl", opts).unwrap();
    w.write_all(b"\x80\x02).").unwrap();
    let ts = w.finish().unwrap().into_inner();
    assert!(is_pth(&ts));
    assert!(read_pth_bytes(&ts).unwrap_err().to_string().contains("TorchScript"));
}

/// The pickle of a real PyTorch file, mutated: errors are fine, panics and hangs are not.
#[test]
fn mutated_real_pickles_never_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/fashion_cnn.int8.pth");
    let bytes = std::fs::read(&path).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let pkl = read_member(&mut archive, "fashion_cnn.int8/data.pkl", None, bytes.len()).unwrap();
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..archive.len() {
        let f = archive.by_index(i).unwrap();
        if let Some(key) = f.name().strip_prefix("fashion_cnn.int8/data/") {
            let key = key.to_string();
            let mut v = vec![];
            f.take(1 << 20).read_to_end(&mut v).unwrap();
            storages.insert(key, v);
        }
    }
    let reference = {
        let mut load = |k: &str, _: usize| storages.get(k).cloned().map(Rc::new).ok_or_else(|| k.to_string());
        to_state_dict(Machine::new(&pkl, false, 1 << 26, &mut load).run().unwrap()).unwrap()
    };
    assert_eq!(reference.len(), 18);
    let mut rng = qc_runtime::SplitMix64::new(0x9e37);
    let mut errors = 0;
    for _ in 0..3000 {
        let mut m = pkl.clone();
        for _ in 0..1 + rng.next_u64() % 3 {
            let at = (rng.next_u64() % m.len() as u64) as usize;
            match rng.next_u64() % 4 {
                0 => m[at] = rng.next_u64() as u8,
                1 => m[at] ^= 1 << (rng.next_u64() % 8),
                2 => m.truncate(at),
                _ => {
                    let b = m[at];
                    m.insert(at, b);
                }
            }
            if m.is_empty() {
                break;
            }
        }
        let mut load = |k: &str, n: usize| match storages.get(k) {
            Some(v) if v.len() == n => Ok(Rc::new(v.clone())),
            _ => Err(format!("no storage `{k}` of {n} bytes")),
        };
        if let Ok(v) = Machine::new(&m, false, 1 << 26, &mut load).run() {
            if to_state_dict(v).is_err() {
                errors += 1;
            }
        } else {
            errors += 1;
        }
    }
    assert!(errors > 1000, "{errors}");
}
