//! A compiled model ready to run: a validated [`Program`] in an [`Executor`] with its metadata,
//! loaded from a `.qmodel` file ([`Model::load`]) or built from a program ([`Model::from_program`]).

use std::path::Path;

use crate::artifact::{Artifact, LoadError, Meta, WriteError};
use crate::exec::Executor;
use crate::normalize::Normalize;
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
    /// The normalization of each input that declares one, by name; [`Model::run`] applies it.
    pub input_normalize: std::collections::BTreeMap<String, Normalize>,
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
            input_normalize: meta.input_normalize.clone(),
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
    /// the model normalizes first where an input declares it (`input_normalize`).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        if self.meta.input_normalize.is_empty() {
            return self.exec.run(inputs);
        }
        self.exec.run(&self.normalize(inputs)?)
    }

    /// Which kernels each step runs on ([`Executor::step_kernels`]).
    pub fn step_kernels(&self) -> Vec<Option<String>> {
        self.exec.step_kernels()
    }

    /// [`Model::run`] with the time of each step (`qc run --profile`).
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<std::time::Duration>), RunError> {
        if self.meta.input_normalize.is_empty() {
            return self.exec.run_profiled(inputs);
        }
        self.exec.run_profiled(&self.normalize(inputs)?)
    }

    /// The inputs as [`Model::run`] feeds them to the program: each normalized as its input
    /// declares ([`Normalize::apply`]), for running the program on another backend. An input
    /// whose shape does not fit a per-channel normalization (or that is not `f32`) is refused
    /// as the executor refuses it.
    pub fn normalize(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let Some(spec) = self.meta.inputs.get(i) else {
                    return Ok(t.clone());
                };
                let Some(n) = self.meta.input_normalize.get(&spec.name) else {
                    return Ok(t.clone());
                };
                n.applied(t).map_err(|e| match e {
                    crate::normalize::NormalizeError::DType { dtype } => RunError::InputDType {
                        name: spec.name.clone(),
                        expected: spec.dtype,
                        found: dtype,
                    },
                    crate::normalize::NormalizeError::Channels { shape, .. } => RunError::InputShape {
                        name: spec.name.clone(),
                        expected: crate::program::shape_string(&spec.shape),
                        found: shape,
                    },
                })
            })
            .collect()
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
