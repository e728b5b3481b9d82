//! Unit tests of the importer's pure parts: module paths from node names and metadata, keys,
//! comment wrapping, weight decoding.

use super::graph::key_module;
use super::names::scope_of;
use super::recipe::comment;
use super::weights::{payload, transpose2, Payload};
use crate::proto::{tensor_proto::DataType, NodeProto, StringStringEntryProto, TensorProto};
use qc_runtime::tensor::Tensor;

fn node(name: &str) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[test]
fn torchscript_node_names_give_module_paths() {
    let cases = [
        ("/conv1/Conv", "conv1"),
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        (
            "/layer2/layer2.0/downsample/downsample.1/BatchNormalization",
            "layer2.0.downsample.1",
        ),
        ("/features/features.1/conv/conv.0/conv.0.2/Clip", "features.1.conv.0.2"),
        ("/layer1/layer1.0/Add", "layer1.0"),
        ("/Flatten", ""),
    ];
    for (name, path) in cases {
        assert_eq!(scope_of(&node(name)).0.as_deref(), Some(path), "{name}");
    }
    assert_eq!(scope_of(&node("Identity_3")).0, None);
}

#[test]
fn dynamo_name_scopes_give_module_paths_and_classes() {
    let mut n = node("node_Conv_170");
    n.metadata_props = vec![
        StringStringEntryProto {
            key: Some("pkg.torch.onnx.name_scopes".into()),
            value: Some("['', 'layer2', 'layer2.0', 'layer2.0.bn2', '_native_batch_norm_legit_no_training_6']".into()),
        },
        StringStringEntryProto {
            key: Some("pkg.torch.onnx.class_hierarchy".into()),
            value: Some("['M', 'torch.nn.modules.container.Sequential', 'torchvision.models.resnet.BasicBlock', 'torch.nn.modules.batchnorm.BatchNorm2d', 'aten._native_batch_norm_legit_no_training.default']".into()),
        },
    ];
    let (scope, classes) = scope_of(&n);
    assert_eq!(scope.as_deref(), Some("layer2.0.bn2"));
    assert_eq!(
        classes[1],
        ("layer2.0".into(), "torchvision.models.resnet.BasicBlock".into())
    );
    assert_eq!(classes.len(), 3);
}

#[test]
fn state_dict_keys_name_modules_and_exporter_names_do_not() {
    assert_eq!(
        key_module("layer1.0.conv1.weight", "weight").as_deref(),
        Some("layer1.0.conv1")
    );
    assert_eq!(key_module("bn1.running_var", "running_var").as_deref(), Some("bn1"));
    assert_eq!(key_module("onnx::Conv_193", "weight"), None);
    assert_eq!(key_module("val_12", "bias"), None);
    assert_eq!(key_module("fc.weight", "bias"), None);
}

#[test]
fn comments_wrap_at_100_characters() {
    let text = comment(&"word ".repeat(60));
    assert!(text.lines().all(|l| l.len() <= 100 && l.starts_with("// ")), "{text}");
    assert_eq!(text.split_whitespace().filter(|w| *w == "word").count(), 60);
}

#[test]
fn tensors_decode_from_raw_data_typed_fields_and_missing_external_data() {
    let raw = TensorProto {
        name: Some("w".into()),
        dims: vec![2, 3],
        data_type: Some(DataType::Float as i32),
        raw_data: Some(
            [1f32, 2., 3., 4., 5., 6.]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        ..Default::default()
    };
    let Payload::Values(t) = payload(&raw, None).unwrap() else {
        panic!()
    };
    assert_eq!(t, Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]));
    assert_eq!(
        transpose2(&t).unwrap(),
        Tensor::f32(vec![3, 2], vec![1., 4., 2., 5., 3., 6.])
    );
    let typed = TensorProto {
        dims: vec![2],
        data_type: Some(DataType::Float as i32),
        float_data: vec![0.5, 6.0],
        ..Default::default()
    };
    assert!(matches!(payload(&typed, None).unwrap(), Payload::Values(_)));
    let short = TensorProto {
        dims: vec![3],
        ..typed.clone()
    };
    assert!(payload(&short, None).is_err());
    let external = TensorProto {
        dims: vec![4],
        data_type: Some(DataType::Float as i32),
        data_location: Some(crate::proto::tensor_proto::DataLocation::External as i32),
        external_data: vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("gone.onnx.data".into()),
        }],
        ..Default::default()
    };
    // Never outside the model's folder.
    for bad in ["/etc/hostname", "../x.data", ""] {
        let mut t = external.clone();
        t.external_data[0].value = Some(bad.into());
        let got = payload(&t, Some(std::path::Path::new("/tmp")));
        assert!(
            matches!(&got, Ok(Payload::Missing { location }) if location.contains("not a relative path")),
            "{bad}: {got:?}"
        );
    }
    let dir = std::env::temp_dir().join("qc-import-unit-no-such-folder");
    assert_eq!(
        payload(&external, Some(&dir)).unwrap(),
        Payload::Missing {
            location: "gone.onnx.data".into()
        }
    );
}
