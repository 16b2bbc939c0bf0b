//! The counter-based seeds of the dropout masks (the CPU backend's, drawn element by element in
//! parallel) and of the training steps. A leaf: the kernels and the crate's API read it.

/// A well-mixed 64-bit hash of `(seed, index)`: SplitMix64's finaliser of
/// `seed ^ index · 0x9E3779B97F4A7C15`. Counter-based, so the random stream of element or step
/// `index` is drawn without the ones before it: dropout masks in parallel, and the seed of
/// training step `index` in a resumed run equal to an uninterrupted one's.
pub fn mix_seed(seed: u64, index: u64) -> u64 {
    let z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
