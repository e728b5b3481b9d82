//! Tests of the op set: builder, attributes round trip, parameters, shapes.

use super::*;

fn ty(dims: &[usize]) -> TensorType {
    TensorType::new(
        DType::F32,
        std::iter::once(Dim::Symbol("N".into()))
            .chain(dims.iter().map(|&d| Dim::Fixed(d)))
            .collect(),
    )
}

fn build(name: &str, attrs: &[(&str, Attr)]) -> Op {
    let attrs: Vec<(String, Attr)> = attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Op::build(name, &attrs).unwrap().unwrap()
}

#[test]
fn window_sizes_follow_pytorch() {
    // nn.MaxPool2d(3, 2) on 112 -> 55; ceil_mode -> 56; resnet's stem pool (3, 2, pad 1) -> 56.
    assert_eq!(window_out(112, 3, 2, 0, 1, false, "p"), Ok(55));
    assert_eq!(window_out(112, 3, 2, 0, 1, true, "p"), Ok(56));
    assert_eq!(window_out(112, 3, 2, 1, 1, false, "p"), Ok(56));
    // ceil_mode never starts a window in the right padding: 5, k2, s2, pad 1 -> 3 (not 4).
    assert_eq!(window_out(5, 2, 2, 1, 1, true, "p"), Ok(3));
    // dilation 2, k3 spans 5.
    assert_eq!(window_out(7, 3, 1, 0, 2, false, "p"), Ok(3));
    assert!(window_out(2, 3, 1, 0, 1, false, "p").is_err());
}

#[test]
fn conv_shapes_and_params() {
    let dw = build(
        "conv2d",
        &[
            ("out", Attr::Int(32)),
            ("kernel", Attr::Int(3)),
            ("groups", Attr::Int(32)),
            ("pad", Attr::Int(1)),
        ],
    );
    assert_eq!(dw.infer(&[&ty(&[32, 112, 112])]).unwrap(), ty(&[32, 112, 112]));
    assert_eq!(dw.params(Some(32))[0].2, vec![32, 1, 3, 3]);
    assert!(dw.infer(&[&ty(&[30, 8, 8])]).unwrap_err().contains("groups"));
    let c1 = build(
        "conv1d",
        &[
            ("out_channels", Attr::Int(32)),
            ("kernel_size", Attr::Int(80)),
            ("stride", Attr::Int(16)),
        ],
    );
    assert_eq!(c1.infer(&[&ty(&[1, 8000])]).unwrap(), ty(&[32, 496]));
}

#[test]
fn attributes_are_checked() {
    let errs = Op::build(
        "conv2d",
        &[("out".into(), Attr::Int(8)), ("kernal".into(), Attr::Int(3))],
    )
    .unwrap()
    .unwrap_err();
    assert!(errs.iter().any(|e| e.message.contains("needs `kernel`")));
    assert!(errs
        .iter()
        .any(|e| e.key.as_deref() == Some("kernal") && e.help.contains("did you mean `kernel`")));
    assert!(Op::build("frobnicate", &[]).is_none());
    let errs = Op::build("linear", &[("out".into(), Attr::Float(2.5))])
        .unwrap()
        .unwrap_err();
    assert!(errs[0].message.contains("must be an integer"));
}

#[test]
fn attrs_rebuild_the_same_op() {
    for op in [
        build(
            "conv2d",
            &[
                ("out", Attr::Int(8)),
                ("kernel", Attr::Ints(vec![1, 7])),
                ("pad", Attr::Ints(vec![0, 3])),
            ],
        ),
        build(
            "avg_pool2d",
            &[
                ("kernel", Attr::Int(3)),
                ("stride", Attr::Int(1)),
                ("pad", Attr::Int(1)),
            ],
        ),
        build("hardtanh", &[("min", Attr::Float(-0.5))]),
        build("batch_norm", &[("eps", Attr::Float(1e-3))]),
        build("flatten", &[]),
        build("adaptive_avg_pool1d", &[("output", Attr::Int(4))]),
    ] {
        let attrs: Vec<(String, Attr)> = op.attrs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(Op::build(op.name(), &attrs).unwrap().unwrap(), op);
    }
}

#[test]
fn ir_only_ops_and_attributes_round_trip() {
    let spec = QSpec {
        bits: 8,
        signed: false,
        symmetric: false,
        power_of_two: false,
        per_channel: false,
        observer: Observer::Histogram { bins: 2048 },
    };
    let wq = WeightQuant {
        spec: QSpec {
            signed: true,
            symmetric: true,
            per_channel: true,
            observer: Observer::MovingAverageMinMax { momentum: 0.01 },
            ..spec.clone()
        },
        fake: true,
        requantize: qc_dsl::sections::Requantize::Float,
    };
    let conv = Conv {
        rank: 2,
        out_channels: 8,
        kernel: vec![3, 3],
        stride: vec![1, 1],
        pad: vec![1, 1],
        dilation: vec![1, 1],
        groups: 1,
        bias: false,
        act: Some(Act::Clamp { min: 0.0, max: 6.0 }),
        bn: Some(BatchNorm {
            eps: 1e-3,
            momentum: 0.1,
        }),
        weight_quant: Some(wq.clone()),
    };
    let ops = [
        Op::Conv(conv.clone()),
        Op::QConv(Conv {
            bn: None,
            ..conv.clone()
        }),
        Op::QLinear(Linear {
            out_features: 4,
            bias: true,
            act: Some(Act::Relu),
            bn: None,
            weight_quant: None,
        }),
        Op::Add { act: Some(Act::Relu6) },
        Op::QAdd { act: None },
        Op::QConcat { dim: 1 },
        Op::Observe(spec.clone()),
        Op::FakeQuant {
            spec: QSpec {
                observer: Observer::Percentile { p: 99.9 },
                ..spec
            },
            learnable: true,
        },
        Op::Quantize { dtype: DType::I8 },
        Op::Dequantize,
        Op::QCurve(Curve::HardSwish),
        Op::QCurve(Curve::HardSigmoid),
        Op::QCurve(Curve::Sigmoid),
        Op::QMul,
    ];
    for op in ops {
        let attrs: Vec<(String, Attr)> = op.attrs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(Op::build_ir(op.name(), &attrs).unwrap().unwrap(), op, "{}", op.name());
    }
    // A kept BN and a per-channel weight fake-quant bring PyTorch's QAT keys.
    let roles: Vec<&str> = Op::Conv(conv).param_names();
    assert!(roles.contains(&"bn.running_var") && roles.contains(&"weight_fake_quant.scale"));
    // Recipes cannot reach IR-only ops or attributes.
    assert!(Op::build("observe", &[]).is_none());
    let errs = Op::build(
        "conv2d",
        &[
            ("out".into(), Attr::Int(8)),
            ("kernel".into(), Attr::Int(3)),
            ("bn_eps".into(), Attr::Float(1e-5)),
        ],
    )
    .unwrap()
    .unwrap_err();
    assert!(errs[0].message.contains("no argument `bn_eps`"), "{errs:?}");
}

#[test]
fn concat_and_flatten_shapes() {
    let cat = build("concat", &[]);
    assert_eq!(
        cat.infer(&[&ty(&[64, 35, 35]), &ty(&[32, 35, 35])]).unwrap(),
        ty(&[96, 35, 35])
    );
    assert!(cat.infer(&[&ty(&[64, 35, 35]), &ty(&[32, 17, 17])]).is_err());
    assert_eq!(build("flatten", &[]).infer(&[&ty(&[32, 7, 7])]).unwrap(), ty(&[1568]));
}

#[test]
fn squeeze_excite_ops_build_shape_and_own_nothing() {
    for (name, op) in [
        ("hardswish", Op::Curve(Curve::HardSwish)),
        ("hardsigmoid", Op::Curve(Curve::HardSigmoid)),
        ("sigmoid", Op::Curve(Curve::Sigmoid)),
        ("mul", Op::Mul),
    ] {
        assert_eq!(build(name, &[]), op);
        assert_eq!(op.name(), name);
        assert!(op.params(Some(16)).is_empty(), "{name} has no parameters");
        assert!(op.attrs().is_empty());
        assert!(!op.shares_input_quant(), "{name} observes its own output");
        let q = match op {
            Op::Mul => Op::QMul,
            Op::Curve(c) => Op::QCurve(c),
            _ => unreachable!(),
        };
        assert_eq!(q.param_names(), vec!["scale", "zero_point"]);
        // The quantized forms are IR-only.
        assert!(Op::build(q.name(), &[]).is_none(), "{}", q.name());
    }
    assert_eq!(Op::arity_of("mul"), Some(Arity::Exactly(2)));
    assert_eq!(Op::arity_of("hardswish"), Some(Arity::Exactly(1)));
    let unary = build("hardswish", &[]);
    assert_eq!(unary.infer(&[&ty(&[16, 56, 56])]).unwrap(), ty(&[16, 56, 56]));
    // mul broadcasts as PyTorch does: SE's [N, C, H, W] * [N, C, 1, 1], either order, and the
    // same shape; a missing leading dim is 1.
    let mul = build("mul", &[]);
    let x = ty(&[96, 14, 14]);
    let gate = ty(&[96, 1, 1]);
    assert_eq!(mul.infer(&[&x, &gate]).unwrap(), x);
    assert_eq!(mul.infer(&[&gate, &x]).unwrap(), x);
    assert_eq!(mul.infer(&[&x, &x]).unwrap(), x);
    let chw = TensorType::new(DType::F32, vec![Dim::Fixed(96), Dim::Fixed(1), Dim::Fixed(1)]);
    assert_eq!(mul.infer(&[&x, &chw]).unwrap(), x);
    // Mismatched dims and dtypes are refused with both types named.
    let e = mul.infer(&[&x, &ty(&[48, 1, 1])]).unwrap_err();
    assert_eq!(
        e,
        "mul cannot broadcast f32[N, 96, 14, 14] with f32[N, 48, 1, 1]: aligned at the right, each pair of dims must be equal or one of them 1"
    );
    let other_batch = TensorType::new(
        DType::F32,
        vec![Dim::Symbol("M".into()), Dim::Fixed(96), Dim::Fixed(1), Dim::Fixed(1)],
    );
    assert!(mul.infer(&[&x, &other_batch]).is_err());
    let ints = TensorType::new(DType::U8, x.dims.clone());
    assert!(mul.infer(&[&x, &ints]).unwrap_err().contains("one dtype"));
}
