//! Skewed routing for the dMoE reference tests.

use dropless::config::MoeWeights;
use ndarray::Array2;

/// Makes expert 0 every token's first choice (so other experts may get no
/// tokens): column 0 of `x` is 1 and the router's column 0 favours expert 0
/// with logit `strength` against `-strength` for the others.
pub fn skew_to_expert0(weights: &mut MoeWeights<f32>, x: &mut Array2<f32>, strength: f32) {
    x.column_mut(0).fill(1.0);
    weights.router.column_mut(0).fill(-strength);
    weights.router[[0, 0]] = strength;
}
