//! A compiled model ready to run: a validated [`Program`] in an [`Executor`] with its metadata,
//! loaded from a `.qmodel` file ([`Model::load`]) or built from a program ([`Model::from_program`]).

use std::path::Path;

use crate::artifact::{Artifact, LoadError, Meta, WriteError};
use crate::exec::Executor;
use crate::program::{Layout, Program, ProgramError, RunError, ValueInfo};
use crate::tensor::{DType, Tensor};

/// One input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// In memory order; `None` for the batch dimension.
    pub shape: Vec<Option<usize>>,
    pub dtype: DType,
    pub layout: Layout,
}

impl TensorSpec {
    fn of(v: &ValueInfo) -> TensorSpec {
        TensorSpec {
            name: v.name.clone(),
            shape: v.shape.clone(),
            dtype: v.dtype,
            layout: v.layout,
        }
    }
}

/// What a model says about itself: the artifact's metadata and its inputs and outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelMeta {
    pub model: String,
    pub stage: String,
    pub calibrated_for_accuracy: bool,
    pub qc_version: String,
    pub recipe_hash: String,
    /// Applied by [`Model::run`] to every `f32` input.
    pub input_normalize: Option<crate::artifact::Normalize>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A model ready to run on the CPU.
#[derive(Clone, Debug)]
pub struct Model {
    stored: Meta,
    meta: ModelMeta,
    exec: Executor,
}

impl Model {
    /// Reads a `.qmodel` file: every check of [`Artifact::from_bytes`], then the program is
    /// prepared for running.
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        let a = Artifact::load(path)?;
        Ok(Model::from_program(a.program, a.meta)?)
    }

    /// Validates `program` and prepares it.
    pub fn from_program(program: Program, meta: Meta) -> Result<Model, ProgramError> {
        let exec = Executor::new(program)?;
        let p = exec.program();
        let specs = |ids: &[usize]| ids.iter().map(|&i| TensorSpec::of(&p.values[i])).collect();
        let model_meta = ModelMeta {
            model: meta.model.clone(),
            stage: meta.stage.clone(),
            calibrated_for_accuracy: meta.calibrated_for_accuracy,
            qc_version: meta.qc_version.clone(),
            recipe_hash: meta.recipe_hash.clone(),
            input_normalize: meta.input_normalize,
            inputs: specs(&p.inputs),
            outputs: specs(&p.outputs),
        };
        Ok(Model {
            stored: meta,
            meta: model_meta,
            exec,
        })
    }

    /// Runs on `inputs` (in the order of `meta().inputs`, any batch size): raw samples, which
    /// the model normalizes first when its metadata says so (`input_normalize`).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        match self.meta.input_normalize {
            None => self.exec.run(inputs),
            Some(n) => self.exec.run(&normalized(inputs, n)),
        }
    }

    /// [`Model::run`] with the time of each step (`qc run --profile`).
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<std::time::Duration>), RunError> {
        match self.meta.input_normalize {
            None => self.exec.run_profiled(inputs),
            Some(n) => self.exec.run_profiled(&normalized(inputs, n)),
        }
    }

    /// The inputs as [`Model::run`] feeds them to the program: normalized when the metadata
    /// says so (for running the program on another backend).
    pub fn normalize(&self, inputs: &[Tensor]) -> Vec<Tensor> {
        match self.meta.input_normalize {
            None => inputs.to_vec(),
            Some(n) => normalized(inputs, n),
        }
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn program(&self) -> &Program {
        self.exec.program()
    }

    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// Writes the model as a `.qmodel` file (atomically).
    pub fn save(&self, path: &Path) -> Result<(), WriteError> {
        Artifact::new(self.stored.clone(), self.exec.program().clone()).write(path)
    }
}

/// `(x - mean) / std` of every `f32` input (others as they are).
fn normalized(inputs: &[Tensor], n: crate::artifact::Normalize) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|t| match t.as_f32() {
            Some(v) => Tensor::f32(t.shape.clone(), v.iter().map(|&x| (x - n.mean) / n.std).collect()),
            None => t.clone(),
        })
        .collect()
}
