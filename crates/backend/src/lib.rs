//! What the model and its training loop share about the backend beside the model itself:
//! which backend a device is ([`is_flex`], [`is_libtorch`]: each crate chooses its own kernels
//! by it, the model its fused operations, the trainer its AdamW update), and the counter-based
//! seeds ([`mix_seed`]) that the CPU backend's dropout masks and the training steps draw from.
//! A leaf of the workspace: it knows Burn only.

use burn::tensor::Device;

/// Whether `device` (or the device under its autodiff wrapper) is the CPU backend's (flex);
/// false in builds without it.
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    return matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn_dispatch::DispatchDevice::Flex(_)
    );
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` (or the device under its autodiff wrapper) is a libtorch one (CPU or
/// CUDA); false in builds without libtorch.
pub fn is_libtorch(device: &Device) -> bool {
    #[cfg(feature = "tch")]
    return matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn_dispatch::DispatchDevice::LibTorch(_)
    );
    #[cfg(not(feature = "tch"))]
    {
        let _ = device;
        false
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU backend's device is flex with and without its autodiff wrapper; no device is
    /// libtorch in a build without it.
    #[test]
    #[cfg(feature = "flex")]
    fn tells_the_cpu_backend_apart() {
        let device = Device::flex();
        assert!(is_flex(&device));
        assert!(is_flex(&device.clone().autodiff()));
        #[cfg(not(feature = "tch"))]
        assert!(!is_libtorch(&device));
    }

    /// Neighbouring seeds and indices give unrelated values (no two alike among 64 × 64, about
    /// half their bits different), and the same pair the same value.
    #[test]
    fn mixes_seeds_and_indices() {
        let values: Vec<u64> = (0..64u64)
            .flat_map(|seed| (0..64u64).map(move |index| mix_seed(seed, index)))
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), values.len());
        let flipped = (mix_seed(7, 0) ^ mix_seed(7, 1)).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped} bits differ");
        assert_eq!(mix_seed(7, 1), mix_seed(7, 1));
        // SplitMix64's finaliser of 0 is 0: the one fixed point the hash has.
        assert_eq!(mix_seed(0, 0), 0);
    }
}
