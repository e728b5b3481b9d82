//! Checks the `quantize`, `qat` and `train` sections and turns them into typed settings.

use crate::ast::Recipe;
use crate::diag::Diagnostics;

/// The checked sections of a recipe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sections {}

pub fn check(_recipe: &Recipe, _diags: &mut Diagnostics) -> Sections {
    Sections {}
}
