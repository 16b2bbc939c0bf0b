//! The WebGPU backends (wgpu, vulkan): the fused operations' default bodies, composed from
//! Burn's operations; their fusion backend merges the element-wise ones into few kernels.

use super::ops::{FusedKernels, FusedOps};

impl FusedKernels for burn_cubecl::CubeBackend {}
impl FusedOps for burn_cubecl::CubeBackend {}
impl<B: burn::backend::fusion::FusionBackend> FusedKernels for burn::backend::fusion::Fusion<B> {}
