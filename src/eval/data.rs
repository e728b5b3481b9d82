//! The labeled samples `qc eval` scores on: `--data SOURCE`, or the `test_data:` of the recipe's
//! `train` (or `qat`) section, read by the training driver's reader.

use std::path::{Path, PathBuf};

use qc_compiler::training::{self, Labeled};
use qc_dsl::sections::{DataSource, Split};

/// The samples, with a line that says where they came from.
pub struct EvalData {
    pub samples: Labeled,
    pub described: String,
}

impl EvalData {
    pub fn len(&self) -> usize {
        self.samples.0.samples()
    }
}

/// Reads `--data SOURCE` (`fashion_mnist`, `fashion_mnist:train`, a folder of IDX files, a
/// `.npz` with the inputs and `labels`), or the recipe's `test_data:` without one; keeps the
/// first `limit` samples. On failure, the message and a help line.
pub fn read(
    loaded: &qc_dsl::Loaded,
    source: Option<&str>,
    input_name: &str,
    limit: Option<usize>,
) -> Result<EvalData, (String, String)> {
    let recipe_dir = loaded
        .sources
        .files()
        .first()
        .and_then(|f| f.path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let (source, dir, described) = match source {
        Some(text) => {
            let source = parse(text)?;
            (
                source,
                std::env::current_dir().unwrap_or_default(),
                format!("--data {text}"),
            )
        }
        None => {
            let test = loaded
                .sections
                .train
                .as_ref()
                .and_then(|t| t.test_data.clone())
                .or_else(|| loaded.sections.qat.as_ref().and_then(|q| q.training.test_data.clone()));
            let Some(test) = test else {
                return Err((
                    "the recipe names no test data (`test_data:` in its `train` section) and no `--data` was given".into(),
                    "name the labeled samples to score on: `--data fashion_mnist:test`, `--data DIR` (IDX files) or `--data test.npz` (the inputs and `labels`)".into(),
                ));
            };
            let place = qc_compiler::plan::place(&loaded.sources, test.span);
            (test.value, recipe_dir, format!("the recipe's test_data ({place})"))
        }
    };
    let (mut x, mut labels) = training::read_labeled(&source, &dir, input_name, "test_data")?;
    if let Some(n) = limit.filter(|&n| n < labels.len()) {
        x = first(&x, n);
        labels.truncate(n);
    }
    let what = match &source {
        DataSource::Idx { dir, split } => format!(
            "{} ({} split)",
            dir.as_deref().unwrap_or(qc_runtime_host::data::FASHION_MNIST_DIR),
            split.name()
        ),
        DataSource::Npz { path } => path.clone(),
        DataSource::Npy { path } => path.clone(),
        DataSource::Random => "random".into(),
    };
    Ok(EvalData {
        described: format!("{} samples of {what}, {described}", labels.len()),
        samples: (x, labels),
    })
}

/// `--data`'s forms as a data source.
fn parse(text: &str) -> Result<DataSource, (String, String)> {
    let help = "`--data` takes `fashion_mnist` (the test split), `fashion_mnist:train`, a folder of IDX files (`t10k-images-idx3-ubyte.gz` and labels) or a `.npz` holding the inputs and `labels`".to_string();
    match text {
        "fashion_mnist" | "fashion_mnist:test" => Ok(DataSource::Idx {
            dir: None,
            split: Split::Test,
        }),
        "fashion_mnist:train" => Ok(DataSource::Idx {
            dir: None,
            split: Split::Train,
        }),
        _ if text.ends_with(".npz") => Ok(DataSource::Npz { path: text.into() }),
        _ if PathBuf::from(text).is_dir() => Ok(DataSource::Idx {
            dir: Some(text.into()),
            split: Split::Test,
        }),
        _ => Err((
            format!("`--data {text}` is neither a data set, a folder nor a `.npz` file"),
            help,
        )),
    }
}

/// The first `n` samples of `a`.
pub fn first(a: &qc_runtime_host::data::Array, n: usize) -> qc_runtime_host::data::Array {
    use qc_runtime_host::data::{Array, ArrayData};
    let per: usize = a.sample_shape().iter().product();
    let mut shape = a.shape.clone();
    shape[0] = n;
    let data = match &a.data {
        ArrayData::U8(v) => ArrayData::U8(v[..n * per].to_vec()),
        ArrayData::F32(v) => ArrayData::F32(v[..n * per].to_vec()),
        ArrayData::F64(v) => ArrayData::F64(v[..n * per].to_vec()),
    };
    Array { shape, data }
}
