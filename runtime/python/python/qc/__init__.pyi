"""Type stubs of qc's Python package (the extension module qc._qc, re-exported as qc)."""

from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

StrPath = str | PathLike[str]
Stage = Literal["parsed", "float", "fused", "observed", "calibrated", "quantized", "lowered"]

class QcError(Exception):
    """A recipe, checkpoint, model file or input qc cannot use; the message is the `qc` command's
    text for it (file:line:col, the source line with a caret and a help line for recipes)."""

class Quantization(TypedDict):
    scale: float
    zero_point: int
    qmin: int
    qmax: int

class TensorInfo(TypedDict):
    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: Literal["torch", "channels_last"]
    quantization: Quantization | None

class Normalization(TypedDict):
    mean: list[float]
    std: list[float]

class Metadata(TypedDict):
    model: str
    stage: str
    qc_version: str
    recipe_hash: str
    calibrated_for_accuracy: bool
    normalize: dict[str, Normalization]

class Model:
    """A compiled model (`.qmodel`), loaded once, run any number of times from any thread."""

    def run(
        self, *inputs: npt.NDArray[Any], allow_non_finite: bool = False
    ) -> npt.NDArray[Any] | tuple[npt.NDArray[Any], ...]:
        """Runs the model on one array per input (any batch size); returns the output array, or
        a tuple of them when the model has several. The GIL is released while it runs."""
    @property
    def inputs(self) -> list[TensorInfo]: ...
    @property
    def outputs(self) -> list[TensorInfo]: ...
    @property
    def metadata(self) -> Metadata: ...
    @property
    def threads(self) -> int: ...
    @threads.setter
    def threads(self, threads: int) -> None: ...
    @property
    def path(self) -> Path: ...

def load(path: StrPath, threads: int | None = None) -> Model:
    """Loads a `.qmodel` for running in-process; `threads` per run (default: one per core)."""

class StageSummary(TypedDict, total=False):
    stage: str
    nodes: int
    params: int
    dump: Path | None
    output: Path
    steps: int
    calibration_note: str | None

def compile(
    recipe: StrPath,
    output: StrPath | None = None,
    dump_ir: StrPath | None = None,
    stop_after: Stage | None = None,
    qat: bool = False,
) -> list[StageSummary]:
    """Compiles a recipe as `qc compile` does; returns one dict per stage."""

class Key(TypedDict):
    key: str
    dtype: str
    shape: tuple[int, ...] | None
    origin: str

def keys(recipe: StrPath, stage: Stage = "float", qat: bool = False) -> list[Key]:
    """The parameters of a stage under PyTorch's names, with their provenance."""

class Fate(TypedDict):
    float_key: str | None
    into: list[str]
    reason: str

def fates(recipe: StrPath, stage: Stage = "quantized", qat: bool = False) -> list[Fate]:
    """What became of each key of stage `float` at `stage`, and what the later stages added."""

class Problem(TypedDict):
    kind: Literal["missing", "unexpected", "misshaped", "wrong_dtype", "prefix"]
    key: str
    expected: str | None
    found: str | None
    closest: str | None
    rename: tuple[str, str] | None
    reason: str | None
    message: str

def check_checkpoint(
    recipe: StrPath, checkpoint: StrPath, stage: Stage = "float", qat: bool = False
) -> list[Problem]:
    """How a checkpoint fits a stage's keys: one dict per problem, empty when it fits."""

__all__ = [
    "Model",
    "QcError",
    "__version__",
    "check_checkpoint",
    "compile",
    "fates",
    "keys",
    "load",
]
