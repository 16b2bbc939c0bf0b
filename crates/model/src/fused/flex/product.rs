//! What the CPU backend's matrix products share: the operands they read ([`Operand`]), what a
//! destination starts as ([`Start`]), and the f32 product ([`f32_product`], the `gemm` crate's,
//! as flex's own); the bf16 products are [`super::bf16_gemm`]'s.

/// A matrix operand of the products (the linear layer's, attention's): its first element and
/// the strides between rows and between columns.
#[derive(Clone, Copy)]
pub(super) struct Operand {
    pub(super) start: *const f32,
    pub(super) row_stride: isize,
    pub(super) column_stride: isize,
}

// SAFETY: an operand is only read, and only while the tensor it points into is borrowed by the
// product's caller.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// The row-major `[rows, width]` matrix that starts `values`.
    pub(super) fn row_major(values: &[f32], width: usize) -> Operand {
        Operand {
            start: values.as_ptr(),
            row_stride: width as isize,
            column_stride: 1,
        }
    }

    /// The transposed matrix, read through swapped strides.
    pub(super) fn transposed(self) -> Operand {
        Operand {
            start: self.start,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
        }
    }
}

/// What the destination of a product starts as, the products added to it.
#[derive(Clone, Copy)]
pub(super) enum Start<'a> {
    /// Zero: the destination is only written.
    Zero,
    /// Its own values: the products are added to what it holds.
    Dst,
    /// The `n` values of a bias in every row (a linear layer's), added as the first block's
    /// sums are stored: the destination is only written, with no separate pass to fill it.
    Bias(&'a [f32]),
}

/// `dst = (dst if accumulate) + scale·lhs·rhs` for an `[m, k]` by `[k, n]` product into an
/// `[m, n]` destination whose rows are `dst_row_stride` apart, with the `gemm` crate (flex's
/// own), on the rayon pool if `parallel`.
///
/// # Safety
/// `dst` must be writable over its `[m, n]` extent (and readable when `accumulate`: gemm reads
/// it only then), and the operands readable over theirs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn f32_product(
    dst: *mut f32,
    dst_row_stride: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    scale: f32,
    parallel: bool,
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.start,
            lhs.column_stride,
            lhs.row_stride,
            rhs.start,
            rhs.column_stride,
            rhs.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
