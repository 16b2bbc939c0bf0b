//! Matrix products from bf16 operands with f32 accumulation: the linear layers' products under
//! [`crate::autocast`] on the CPU backend, as `torch.autocast("cpu", dtype=torch.bfloat16)`
//! computes PyTorch's.
//!
//! The `gemm` crate has no bf16 kernel (its f16 path widens the operands to f32 while packing
//! and multiplies at f32 speed), so this one is ours, laid out as BLIS and `gemm` are: both
//! operands rounded to bf16 (to nearest, ties to even) and packed once per product, then micro
//! tiles of [`MR`] × [`NR`] outputs accumulated in registers over blocks of [`KC`] of the inner
//! dimension, tasks of [`MC`] × [`NC`] outputs spread over the rayon pool. Operands are packed
//! in pairs along the inner dimension, two bf16 in one 32-bit word, the layout of AVX512-BF16's
//! `vdpbf16ps`: one instruction adds two bf16 products into each of sixteen f32 lanes, twice
//! the multiply-adds of an f32 FMA. CPUs with AMX (whose `vdpbf16ps` ran slower than their f32
//! FMA) multiply the same packed pairs on their tiles ([`amx`]: 32 × 32 micro tiles, each
//! block's pairs padded to whole tile rows), once the operating system grants the tile state
//! and the kernel passes a self-check in the process ([`Kernel::detect`]). CPUs without
//! AVX512-BF16, and those with AMX that cannot use it, multiply the operands rounded to bf16
//! and kept as f32 with the `gemm` crate's f32 kernels ([`Kernel::RoundedF32`]): the same
//! products (exact in f32) summed in another order, at about f32's speed. A portable kernel
//! over the packed words, in `vdpbf16ps`'s order (the same result for normal numbers:
//! AVX512-BF16 flushes subnormals to zero), is the tests' reference for the native one.

use rayon::prelude::*;

use super::product::{Operand, Start, f32_product};
use super::tensors::Shared;
use crate::cpu::{self, Bf16Support};

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod packing;

use packing::{MR, NR, Order, Source, bf16_bits, pack_panel};

/// Inner-dimension block (even): a packed [`NR`]-column panel of it is 24 KiB and stays in L1
/// while the task's row panels stream past it.
const KC: usize = 384;
/// Most rows per task (a multiple of [`MR`]): its packed rows of one block are 72 KiB, in L2.
const MC: usize = 96;
/// Most columns per task (a multiple of [`NR`]).
const NC: usize = 512;
/// Multiply-adds below which a product runs on one thread.
const PARALLEL_WORK: usize = 128 * 128 * 128;

/// `dst = start + lhs·rhs` for an `[m, k]` by `[k, n]` product into a row-major `[m, n]`
/// destination, the operands rounded to bf16 and the products summed in f32; on the rayon pool
/// when it is large enough.
///
/// # Safety
/// `dst` must hold m × n elements (read only when `start` is [`Start::Dst`]), and the operands
/// must be readable over their `[m, k]` and `[k, n]` extents.
pub(super) unsafe fn product(
    dst: *mut f32,
    dims: (usize, usize, usize),
    start: Start,
    lhs: Operand,
    rhs: Rhs,
) {
    // SAFETY: the caller's promise.
    unsafe { product_with(Kernel::current(), dst, dims, start, lhs, rhs) }
}

/// [`product`] by `kernel`.
///
/// # Safety
/// As [`product`]'s; `kernel` one this CPU runs, and a packed `rhs` packed for it.
unsafe fn product_with(
    kernel: Kernel,
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    start: Start,
    lhs: Operand,
    rhs: Rhs,
) {
    if m == 0 || n == 0 {
        return;
    }
    if let Start::Bias(bias) = start {
        // The micro tiles read the bias by these sizes.
        assert_eq!(bias.len(), n, "bf16 product: bias length");
    }
    let dst = Shared(dst);
    if k == 0 {
        match start {
            Start::Dst => {}
            // SAFETY (both): the caller's promise on `dst`.
            Start::Zero => unsafe { std::ptr::write_bytes(dst.0, 0, m * n) },
            Start::Bias(bias) => unsafe { fill_rows(dst, (m, n), bias, false) },
        }
        return;
    }
    let parallel = m.saturating_mul(n).saturating_mul(k) >= PARALLEL_WORK;
    if let Rhs::Packed(packed) = rhs {
        assert_eq!(
            (packed.k, packed.n),
            (k, n),
            "bf16 product: packed operand's shape"
        );
    }
    let dims = (m, n, k);
    // SAFETY: the caller's promise.
    let product = move || unsafe {
        if kernel == Kernel::RoundedF32 {
            rounded_product(dst, dims, start, lhs, rhs, parallel)
        } else {
            packed_product(kernel, dst, dims, start, lhs, rhs, parallel)
        }
    };
    // Packing and products inside one pool job: called from outside the pool (the model's
    // thread), each parallel loop would otherwise wake a worker and put the caller to sleep,
    // three times per product, which on small products cost more than the bf16 kernel saved.
    if parallel {
        rayon::scope(|_| product());
    } else {
        product();
    }
}

/// [`product`] by a kernel over packed pairs: both operands packed (the right one unless
/// packed before), then the micro tiles in tasks over the rayon pool if `parallel`.
///
/// # Safety
/// As [`product_with`]'s, `k` > 0.
unsafe fn packed_product(
    kernel: Kernel,
    dst: Shared,
    (m, n, k): (usize, usize, usize),
    start: Start,
    lhs: Operand,
    rhs: Rhs,
    parallel: bool,
) {
    let pairs = kernel.packed_pairs(k);
    let rhs_words = match rhs {
        Rhs::Unpacked(_) => n.div_ceil(NR) * NR * pairs,
        Rhs::Packed(_) => 0,
    };
    let rows = kernel.rows();
    let lengths = [m.div_ceil(rows) * rows * pairs, rhs_words];
    with_buffers(lengths, |a, b| {
        let a_source = Source::rows(lhs, m, k);
        // SAFETY: the caller's promise on the operands; the buffers' lengths as `pack` needs.
        let a = unsafe {
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Amx => pack::<{ amx::MR }>(kernel, a_source, a, parallel, Order::Tiles),
                _ => pack::<MR>(kernel, a_source, a, parallel, Order::for_rows(lhs)),
            }
        };
        let b = match rhs {
            // SAFETY: as above.
            Rhs::Unpacked(rhs) => unsafe {
                pack::<NR>(
                    kernel,
                    Source::columns(rhs, k, n),
                    b,
                    parallel,
                    Order::Pairs,
                )
            },
            Rhs::Packed(packed) => Packed {
                words: packed.words(kernel),
                padded: n.div_ceil(NR) * NR,
                order: Order::Pairs,
            },
        };
        let extent = (task_extent(m, MC, rows), task_extent(n, NC, NR));
        let row_tasks = m.div_ceil(extent.0);
        let tasks = row_tasks * n.div_ceil(extent.1);
        let task = |t: usize| {
            let first = (t % row_tasks * extent.0, t / row_tasks * extent.1);
            // SAFETY: the tasks' tiles are disjoint parts of `dst`, which holds m × n elements.
            unsafe { tile(kernel, (&a, &b), dst, (m, n, k), first, extent, start) }
        };
        if parallel {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    })
}

/// Every row of the `[m, n]` destination set to `bias`; on the rayon pool if `parallel`.
///
/// # Safety
/// `dst` must hold m × n elements, and `bias` `n`.
unsafe fn fill_rows(dst: Shared, (m, n): (usize, usize), bias: &[f32], parallel: bool) {
    // SAFETY: row `row` < m of the destination, the caller's promise.
    let fill = |row: usize| unsafe {
        std::ptr::copy_nonoverlapping(bias.as_ptr(), dst.offset(row * n), n)
    };
    if parallel {
        (0..m).into_par_iter().for_each(fill);
    } else {
        (0..m).for_each(fill);
    }
}

/// The right operand of [`product`]: read and packed by the product, or packed before.
#[derive(Clone, Copy)]
pub(super) enum Rhs<'a> {
    Unpacked(Operand),
    Packed(&'a PackedRhs),
}

/// A `[k, n]` right operand rounded and packed once, as [`product`] packs it, for products
/// that reuse it (a weight across an evaluation's batches).
pub(super) struct PackedRhs {
    prepared: Prepared,
    k: usize,
    n: usize,
    /// The kernel it was packed for (the layouts differ in their padding).
    kernel: Kernel,
}

/// A right operand as a kernel reads it.
enum Prepared {
    /// Packed in pairs (the bf16 kernels).
    Words(Lines),
    /// Rounded and kept as f32 (its bits), row-major ([`Kernel::RoundedF32`]).
    Rounded(Vec<u32>),
}

impl PackedRhs {
    /// `rhs` (`[k, n]`) packed, on the rayon pool.
    ///
    /// # Safety
    /// `rhs` must be readable over its `[k, n]` extent.
    pub(super) unsafe fn new(rhs: Operand, k: usize, n: usize) -> Self {
        // SAFETY: the caller's promise.
        unsafe { Self::new_for(Kernel::current(), rhs, k, n) }
    }

    /// [`PackedRhs::new`] for `kernel`.
    ///
    /// # Safety
    /// As [`PackedRhs::new`]'s.
    unsafe fn new_for(kernel: Kernel, rhs: Operand, k: usize, n: usize) -> Self {
        let prepared = if kernel == Kernel::RoundedF32 {
            let mut bits = vec![0; k * n];
            // SAFETY: the caller's promise.
            unsafe { rounded_rows(rhs, k, n, true, &mut bits) };
            Prepared::Rounded(bits)
        } else {
            let mut words = Lines::default();
            // SAFETY: the caller's promise; `words` as `pack` needs.
            unsafe {
                pack::<NR>(
                    kernel,
                    Source::columns(rhs, k, n),
                    words.words(n.div_ceil(NR) * NR * kernel.packed_pairs(k)),
                    true,
                    Order::Pairs,
                )
            };
            Prepared::Words(words)
        };
        PackedRhs {
            prepared,
            k,
            n,
            kernel,
        }
    }

    /// The packed words, for `kernel`.
    fn words(&self, kernel: Kernel) -> &[u32] {
        match &self.prepared {
            Prepared::Words(words) if self.kernel == kernel => words.as_words(),
            _ => panic!(
                "bf16 product: an operand packed for {:?}, not {kernel:?}",
                self.kernel
            ),
        }
    }
}

/// [`product`] as f32 products of the operands rounded to bf16 (kept as f32), by the `gemm`
/// crate's f32 kernels: the products of two bf16 are exact in f32, so this differs from the
/// bf16 kernels only in the order of the sums.
///
/// # Safety
/// As [`product`]'s.
unsafe fn rounded_product(
    dst: Shared,
    (m, n, k): (usize, usize, usize),
    start: Start,
    lhs: Operand,
    rhs: Rhs,
    parallel: bool,
) {
    let rhs_length = match rhs {
        Rhs::Unpacked(_) => k * n,
        Rhs::Packed(_) => 0,
    };
    // The rounded copies in the thread's packing buffers, as f32 bits.
    with_buffers([m * k, rhs_length], |lhs_bits, rhs_bits| {
        // SAFETY (all): the caller's promise on the operands and `dst`.
        let lhs = unsafe { rounded(lhs, m, k, parallel, lhs_bits) };
        let rhs = match rhs {
            Rhs::Unpacked(rhs) => unsafe { rounded(rhs, k, n, parallel, rhs_bits) },
            Rhs::Packed(packed) => match &packed.prepared {
                Prepared::Rounded(bits) => bits_operand(bits, n),
                Prepared::Words(_) => panic!("bf16 product: an operand packed for another kernel"),
            },
        };
        let accumulate = match start {
            Start::Zero => false,
            Start::Dst => true,
            Start::Bias(bias) => {
                unsafe { fill_rows(dst, (m, n), bias, parallel) };
                true
            }
        };
        unsafe { f32_product(dst.0, n, (m, n, k), accumulate, lhs, rhs, 1.0, parallel) };
    });
}

/// The row-major `[_, width]` matrix of the f32 values whose bits `bits` holds (an f32 and its
/// bits are the same four bytes).
fn bits_operand(bits: &[u32], width: usize) -> Operand {
    Operand {
        start: bits.as_ptr().cast(),
        row_stride: width as isize,
        column_stride: 1,
    }
}

/// The `[rows, columns]` matrix `operand` rounded to bf16 and widened back to f32, as bits in
/// `out`, and the operand that reads it: row-major, or, for an operand contiguous along its
/// columns (a transposed view), its transpose row-major read back transposed, so that every
/// pass reads and writes in order.
///
/// # Safety
/// `operand` must be readable over its `[rows, columns]` extent.
unsafe fn rounded(
    operand: Operand,
    rows: usize,
    columns: usize,
    parallel: bool,
    out: &mut [u32],
) -> Operand {
    if operand.column_stride != 1 && operand.row_stride == 1 {
        // SAFETY: the caller's promise, read through the transpose.
        unsafe { rounded_rows(operand.transposed(), columns, rows, parallel, out) };
        bits_operand(out, rows).transposed()
    } else {
        // SAFETY: the caller's promise.
        unsafe { rounded_rows(operand, rows, columns, parallel, out) };
        bits_operand(out, columns)
    }
}

/// The `[rows, columns]` matrix `operand` rounded to bf16, widened back to f32, row-major into
/// `out` as f32 bits (`rows × columns` of them); row by row on the rayon pool if `parallel`.
///
/// # Safety
/// `operand` must be readable over its `[rows, columns]` extent.
unsafe fn rounded_rows(
    operand: Operand,
    rows: usize,
    columns: usize,
    parallel: bool,
    out: &mut [u32],
) {
    let source = Source::rows(operand, rows, columns);
    let fill = |(row, out): (usize, &mut [u32])| {
        if source.inner_stride == 1 {
            // SAFETY: the caller's promise: the row is `columns` contiguous elements.
            let values = unsafe { std::slice::from_raw_parts(source.at(row, 0), columns) };
            for (out, &x) in out.iter_mut().zip(values) {
                *out = (bf16_bits(x) as u32) << 16;
            }
        } else {
            for (column, out) in out.iter_mut().enumerate() {
                // SAFETY: the caller's promise.
                *out = (bf16_bits(unsafe { *source.at(row, column) }) as u32) << 16;
            }
        }
    };
    let out = &mut out[..rows * columns];
    if parallel {
        out.par_chunks_mut(columns.max(1))
            .enumerate()
            .for_each(fill);
    } else {
        out.chunks_mut(columns.max(1)).enumerate().for_each(fill);
    }
}

/// A packed operand: per [`KC`] block of the inner dimension, per panel of `W` lanes (rows of
/// the left operand, columns of the right one), the panel's words in [`Order`].
struct Packed<'a> {
    words: &'a [u32],
    /// Lanes rounded up to whole panels.
    padded: usize,
    order: Order,
}

impl Packed<'_> {
    /// The panel of `width` lanes holding `lane`, in the block starting at `first`, of `pairs`
    /// pairs.
    fn panel(&self, width: usize, first: usize, lane: usize, pairs: usize) -> &[u32] {
        &self.words[first / 2 * self.padded + lane / width * pairs * width..][..pairs * width]
    }
}

/// A cache line of words.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// A buffer of words that starts on a cache line, so that every packed panel and tile row
/// does: an AMX tile load reads each row whole, and a row that straddles two lines costs
/// about two (roberta-base bf16 inference: docs/perf-notes/journal.md, "AMX tiles").
#[derive(Default)]
struct Lines(Vec<Line>);

impl Lines {
    /// The first `len` words, the buffer grown (with zeros) to hold them.
    fn words(&mut self, len: usize) -> &mut [u32] {
        let lines = len.div_ceil(16);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 16]));
        }
        // SAFETY: `lines` lines of 16 words each hold `len` words, and a line is its words.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), len) }
    }

    /// Every word.
    fn as_words(&self) -> &[u32] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 16) }
    }
}

thread_local! {
    /// The packed operands of the thread's last product, kept so that a training step's
    /// hundreds of products do not allocate (and fault in) fresh buffers each.
    static BUFFERS: std::cell::RefCell<[Lines; 2]> = const {
        std::cell::RefCell::new([Lines(Vec::new()), Lines(Vec::new())])
    };
}

/// `f` with two word buffers of at least `lengths` (the thread's kept ones, or new ones if a
/// product on this thread is already using them); their contents are left over from before.
fn with_buffers<R>(lengths: [usize; 2], f: impl FnOnce(&mut [u32], &mut [u32]) -> R) -> R {
    BUFFERS.with(|buffers| {
        let mut fresh;
        let mut kept = buffers.try_borrow_mut();
        let [a, b] = match kept.as_deref_mut() {
            Ok(kept) => kept,
            Err(_) => {
                fresh = [Lines::default(), Lines::default()];
                &mut fresh
            }
        };
        f(a.words(lengths[0]), b.words(lengths[1]))
    })
}

/// `source` packed into `words` (lanes in panels of `W`, in `order`; see [`Packed`]), every
/// word written.
///
/// # Safety
/// `source` must be readable over its lanes × inner extent; `words` must hold
/// `padded lanes × kernel.packed_pairs(inner)` words.
unsafe fn pack<const W: usize>(
    kernel: Kernel,
    source: Source,
    words: &mut [u32],
    parallel: bool,
    order: Order,
) -> Packed<'_> {
    let padded = source.lanes.div_ceil(W) * W;
    for first in (0..source.inner).step_by(KC) {
        let pairs = kernel.block_pairs(first, source.inner);
        let block = &mut words[first / 2 * padded..][..pairs * padded];
        let fill = |(panel, out): (usize, &mut [u32])| {
            let lane = panel * W;
            match kernel {
                // SAFETY: detected on this CPU; the caller's promise on `source`.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Bf16 | Kernel::Amx => unsafe {
                    avx512::pack_panel::<W>(source, lane, first, out, order)
                },
                // SAFETY: the caller's promise on `source`.
                Kernel::Portable | Kernel::RoundedF32 => unsafe {
                    pack_panel::<W>(source, lane, first, out, order)
                },
            }
        };
        if parallel {
            block.par_chunks_mut(pairs * W).enumerate().for_each(fill);
        } else {
            block.chunks_mut(pairs * W).enumerate().for_each(fill);
        }
    }
    Packed {
        words,
        padded,
        order,
    }
}

/// How the products multiply on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// `vdpbf16ps` (AVX512-BF16), packing with AVX512-BW's permutes.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// AMX's `tdpbf16ps` on 32 × 32 micro tiles ([`amx`]), packing as [`Kernel::Avx512Bf16`]
    /// does (AMX CPUs have AVX512-BF16), the left operand always in lane order and each
    /// block's pairs padded to whole tile rows.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// Plain Rust over the packed words, in `vdpbf16ps`'s order, vectorised by the compiler
    /// where it can: the native kernel's bits at about a third of f32's speed
    /// (docs/perf-notes/journal.md), so used only as the tests' reference for the native kernel and
    /// by `bench model-worker --bf16-products portable`.
    Portable,
    /// The operands rounded to bf16 and kept as f32, multiplied by the `gemm` crate's f32
    /// kernels ([`rounded_product`]): the same products, summed in another order, at about
    /// f32's speed. For CPUs without AVX512-BF16, and for those with AMX that cannot use it,
    /// whose `vdpbf16ps` ran slower than their f32 FMA on the Intel Xeon measured
    /// (docs/perf-notes/journal.md).
    RoundedF32,
}

impl Kernel {
    /// The kernel the products use: this CPU's ([`Kernel::detect`]), or the one a benchmark
    /// chose for this thread ([`crate::kernels::with`], which refuses a kernel this CPU cannot
    /// run).
    fn current() -> Self {
        use crate::kernels::Bf16Products;
        match crate::kernels::current().bf16_products {
            None => Self::detect().0,
            Some(Bf16Products::Portable) => Kernel::Portable,
            Some(Bf16Products::RoundedF32) => Kernel::RoundedF32,
            #[cfg(target_arch = "x86_64")]
            Some(Bf16Products::Native) => Kernel::Avx512Bf16,
            #[cfg(target_arch = "x86_64")]
            Some(Bf16Products::Amx) => Kernel::Amx,
            #[cfg(not(target_arch = "x86_64"))]
            Some(Bf16Products::Native | Bf16Products::Amx) => Self::detect().0,
        }
    }

    /// This CPU's kernel, and what it means for mixed precision here, chosen once per
    /// process: AMX's where the CPU has it, the operating system grants its tile state and
    /// the kernel passes [`amx_self_check`]; else AVX512-BF16's where the CPU has it and no
    /// AMX; else the rounded f32 products.
    fn detect() -> (Self, Bf16Support) {
        static DETECTED: std::sync::OnceLock<(Kernel, Bf16Support)> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            if !cpu::avx512_bf16() {
                return (Kernel::RoundedF32, Bf16Support::NoAvx512Bf16);
            }
            #[cfg(target_arch = "x86_64")]
            {
                if !cpu::amx_bf16() {
                    return (Kernel::Avx512Bf16, Bf16Support::Native);
                }
                match cpu::amx_permission().and_then(|()| amx_self_check()) {
                    Ok(()) => (Kernel::Amx, Bf16Support::Amx),
                    Err(reason) => (Kernel::RoundedF32, Bf16Support::AmxUnusable(reason)),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            (Kernel::RoundedF32, Bf16Support::NoAvx512Bf16)
        })
    }

    /// Lanes of the left operand's panels, the rows of a micro tile.
    fn rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => amx::MR,
            _ => MR,
        }
    }

    /// The packed pairs of the inner-dimension block starting at `first` of `inner`: AMX's
    /// padded with zeros to whole tile rows. (Whole blocks, [`KC`]` / 2` pairs, are whole tile
    /// rows already, so a block's words start where the unpadded layout has them.)
    fn block_pairs(self, first: usize, inner: usize) -> usize {
        self.padded_pairs((inner - first).min(KC).div_ceil(2))
    }

    /// The packed pairs of an inner dimension of `inner`, all its blocks together.
    fn packed_pairs(self, inner: usize) -> usize {
        self.padded_pairs(inner.div_ceil(2))
    }

    /// `pairs` rounded up to whole tile rows for AMX.
    fn padded_pairs(self, pairs: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => pairs.next_multiple_of(amx::PAIRS),
            _ => pairs,
        }
    }
}

// Whole blocks need no padding for AMX (see `Kernel::block_pairs`).
#[cfg(target_arch = "x86_64")]
const _: () = assert!((KC / 2).is_multiple_of(amx::PAIRS) && MC.is_multiple_of(amx::MR));

/// How far the AMX kernel's sums may be from the exact sums of the products of the rounded
/// operands: `k` · 2⁻²³ of the sum of their magnitudes (and of the start), the bound of f32
/// sums in any order, with a margin for AMX's unspecified order and rounding of its partial
/// sums. [`amx_self_check`] and the tests hold every kernel to it.
#[cfg(any(test, target_arch = "x86_64"))]
fn within_tolerance(got: f32, want: f64, magnitude: f64, k: usize) -> bool {
    (got as f64 - want).abs() <= k.max(1) as f64 * 1.2e-7 * magnitude
}

/// `start + lhs·rhs` in f64 from the bf16-rounded operands (row-major `[m, k]` and `[k, n]`,
/// `start` row-major `[m, n]`), and per element the sum of the magnitudes of its terms.
#[cfg(any(test, target_arch = "x86_64"))]
fn exact_product(
    lhs: &[f32],
    rhs: &[f32],
    start: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<(f64, f64)> {
    let rounded = |x: f32| f32::from_bits((bf16_bits(x) as u32) << 16) as f64;
    let mut out: Vec<(f64, f64)> = start.iter().map(|&x| (x as f64, x.abs() as f64)).collect();
    for i in 0..m {
        for p in 0..k {
            let a = rounded(lhs[i * k + p]);
            for j in 0..n {
                let term = a * rounded(rhs[p * n + j]);
                let (sum, magnitude) = &mut out[i * n + j];
                *sum += term;
                *magnitude += term.abs();
            }
        }
    }
    out
}

/// Deterministic values of varied magnitude and sign: the operands of [`amx_self_check`] and
/// the tests.
#[cfg(any(test, target_arch = "x86_64"))]
fn wave(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.37 + phase).sin() * 3.0) * (1.0 + (i % 7) as f32))
        .collect()
}

/// Checks the AMX kernel in this process before any product uses it: products whose shapes
/// cross its edges (a single element, partial tiles and tile rows, an inner dimension of more
/// than one block, a transposed left operand), from each start, against the exact products of
/// the rounded operands ([`within_tolerance`]). `Err` says what differed, for
/// [`Bf16Support::AmxUnusable`]; the products then run as [`Kernel::RoundedF32`].
#[cfg(target_arch = "x86_64")]
fn amx_self_check() -> Result<(), &'static str> {
    for (m, n, k) in [(1, 1, 1), (33, 40, 37), (64, 64, 800)] {
        let (lhs, rhs, initial, bias) = (
            wave(m * k, 0.1),
            wave(k * n, 0.7),
            wave(m * n, 2.0),
            wave(n, 3.0),
        );
        let lhs_t: Vec<f32> = (0..m * k).map(|i| lhs[(i % m) * k + i / m]).collect();
        let biased: Vec<f32> = (0..m * n).map(|i| bias[i % n]).collect();
        for (start, lhs_operand, from) in [
            (Start::Zero, Operand::row_major(&lhs, k), vec![0.0; m * n]),
            (
                Start::Dst,
                Operand::row_major(&lhs_t, m).transposed(),
                initial.clone(),
            ),
            (Start::Bias(&bias), Operand::row_major(&lhs, k), biased),
        ] {
            let mut got = initial.clone();
            // SAFETY: AMX is granted (the caller checked); the operands hold their extents.
            unsafe {
                product_with(
                    Kernel::Amx,
                    got.as_mut_ptr(),
                    (m, n, k),
                    start,
                    lhs_operand,
                    Rhs::Unpacked(Operand::row_major(&rhs, n)),
                )
            };
            let want = exact_product(&lhs, &rhs, &from, (m, n, k));
            if let Some(index) =
                (0..m * n).find(|&i| !within_tolerance(got[i], want[i].0, want[i].1, k))
            {
                return Err(format!(
                    "the AMX kernel's self-check failed: a {m}x{k} by {k}x{n} product gave {} \
                     at [{index}] where the exact one is {}",
                    got[index], want[index].0
                )
                .leak());
            }
        }
    }
    Ok(())
}

/// What the products of [`crate::autocast::bf16`] run on in this process
/// ([`Kernel::detect`]).
pub(in crate::fused) fn support() -> Bf16Support {
    Kernel::detect().1
}

/// How many of `len` rows (or columns) each task takes: at most `most`, a multiple of
/// `multiple` (which `most` is), and as even a split as those allow. 768 columns are two tasks
/// of 384, not 512 and 256: with tasks of two sizes, the thread that draws the last large one
/// finishes the product alone (one of two threads idle about a tenth of the time in roberta-base
/// bf16 inference: docs/perf-notes/journal.md).
fn task_extent(len: usize, most: usize, multiple: usize) -> usize {
    let tasks = len.div_ceil(most).max(1);
    len.div_ceil(tasks).next_multiple_of(multiple)
}

/// The task whose outputs start at `(rows, columns)`: up to `extent` of them (rows, columns),
/// each block of the inner dimension in turn, every micro tile of the task per block.
///
/// # Safety
/// `dst` must hold m × n elements, and no other task may write this task's tile; `columns`
/// must be a multiple of [`NR`] and `rows` of the kernel's rows (where the packed panels
/// start).
unsafe fn tile(
    kernel: Kernel,
    (a, b): (&Packed, &Packed),
    dst: Shared,
    (m, n, k): (usize, usize, usize),
    (rows, columns): (usize, usize),
    extent: (usize, usize),
    start: Start,
) {
    let row_end = (rows + extent.0).min(m);
    let column_end = (columns + extent.1).min(n);
    let micro_rows = kernel.rows();
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Amx {
        // Each micro tile over the whole inner dimension, its sums held in the tiles: the
        // right panel of a column (all blocks) from L2, reused by the task's row panels.
        // SAFETY: the AMX kernel is used only where the CPU has it and the process may.
        let _tiles = unsafe { amx::Tiles::configure() };
        for column in (columns..column_end).step_by(NR) {
            let width = (column_end - column).min(NR);
            let start = match start {
                Start::Bias(bias) => Start::Bias(&bias[column..]),
                start => start,
            };
            for row in (rows..row_end).step_by(amx::MR) {
                let blocks = (0..k).step_by(KC).map(|first| {
                    let pairs = kernel.block_pairs(first, k);
                    (
                        a.panel(amx::MR, first, row, pairs),
                        b.panel(NR, first, column, pairs),
                        pairs,
                    )
                });
                let height = (row_end - row).min(amx::MR);
                // SAFETY: the tile `(row, column)` of `height` × `width` lies inside
                // `[m, n]`; the panels hold their blocks' pairs; the tiles are configured.
                unsafe {
                    amx::micro(
                        blocks,
                        dst.0.add(row * n + column),
                        n,
                        (height, width),
                        start,
                    )
                };
            }
        }
        return;
    }
    for (block, first) in (0..k).step_by(KC).enumerate() {
        let pairs = kernel.block_pairs(first, k);
        for column in (columns..column_end).step_by(NR) {
            let b_panel = b.panel(NR, first, column, pairs);
            let width = (column_end - column).min(NR);
            // The first block starts from `start`, the later ones add to what it stored.
            let start = match start {
                _ if block > 0 => Start::Dst,
                Start::Bias(bias) => Start::Bias(&bias[column..]),
                start => start,
            };
            for row in (rows..row_end).step_by(micro_rows) {
                let a_panel = a.panel(micro_rows, first, row, pairs);
                let height = (row_end - row).min(micro_rows);
                // SAFETY: the tile `(row, column)` of `height` × `width` lies inside `[m, n]`.
                let out = unsafe { dst.0.add(row * n + column) };
                // SAFETY: the panels hold `pairs` pairs; `out` as above.
                unsafe {
                    micro(
                        kernel, pairs, a_panel, a.order, b_panel, out, n, height, width, start,
                    )
                };
            }
        }
    }
}

/// One micro tile: `out[i][j] = start[i][j] + Σ_p a·b` over `pairs` pairs, for the
/// `height` × `width` outputs of the tile at `out` (rows `stride` apart), a bias read from its
/// first `width` values.
///
/// # Safety
/// `a` and `b` must hold `pairs` × [`MR`] and `pairs` × [`NR`] words, and `out` the tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro(
    kernel: Kernel,
    pairs: usize,
    a: &[u32],
    a_order: Order,
    b: &[u32],
    out: *mut f32,
    stride: usize,
    height: usize,
    width: usize,
    start: Start,
) {
    match (kernel, a_order) {
        // SAFETY (both): detected on this CPU; the caller's promise on the buffers.
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512Bf16, Order::Pairs) => unsafe {
            avx512::micro::<false>(pairs, a, b, out, stride, height, width, start)
        },
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512Bf16, Order::Lanes) => unsafe {
            avx512::micro::<true>(pairs, a, b, out, stride, height, width, start)
        },
        // (`Amx` runs its own micro tiles over every block, `tile`, and only it packs in tile
        // order.)
        #[cfg(target_arch = "x86_64")]
        (Kernel::Amx, _) | (Kernel::Avx512Bf16, Order::Tiles) => {
            unreachable!("AMX's micro tiles span the blocks")
        }
        // (`RoundedF32` never packs: `rounded_product`.)
        (Kernel::Portable | Kernel::RoundedF32, _) => {
            let sums = portable_micro(pairs, a, a_order, b);
            for (i, row) in sums.iter().enumerate().take(height) {
                for (j, &sum) in row.iter().enumerate().take(width) {
                    // SAFETY: `(i, j)` is inside the tile, the caller's promise.
                    unsafe {
                        let slot = out.add(i * stride + j);
                        *slot = match start {
                            Start::Zero => sum,
                            Start::Dst => *slot + sum,
                            Start::Bias(bias) => bias[j] + sum,
                        };
                    }
                }
            }
        }
    }
}

/// The widened value of the bf16 in the low (`shift` 0) or high (16) half of `word`.
#[inline(always)]
fn widen(word: u32, shift: u32) -> f32 {
    f32::from_bits((word >> shift) << 16)
}

/// The portable micro kernel: per lane the odd product then the even one, each added in f32,
/// as `vdpbf16ps` orders them (the products of two bf16 are exact in f32).
#[multiversion::multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn portable_micro(pairs: usize, a: &[u32], a_order: Order, b: &[u32]) -> [[f32; NR]; MR] {
    let mut sums = [[0.0f32; NR]; MR];
    for (p, b) in b.chunks_exact(NR).take(pairs).enumerate() {
        for (i, row) in sums.iter_mut().enumerate() {
            let left = a[a_order.index::<MR>(i, p, pairs)];
            let (low, high) = (widen(left, 0), widen(left, 16));
            for (sum, &right) in row.iter_mut().zip(b) {
                *sum += high * widen(right, 16);
                *sum += low * widen(right, 0);
            }
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    // The packing and kernel comparisons that build words by hand are x86-64 only.
    #[cfg(target_arch = "x86_64")]
    use super::packing::pair;
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: ties go to the even (1).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even (1 + 2^-6).
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0 + 1e-6), 0x3f81);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }

    /// Tasks split a dimension as evenly as their multiple allows, never above the most, in
    /// no more tasks than the most would take.
    #[test]
    fn tasks_split_a_dimension_evenly() {
        assert_eq!(task_extent(768, NC, NR), 384);
        assert_eq!(task_extent(3072, NC, NR), 512);
        assert_eq!(task_extent(2304, NC, NR), 480);
        assert_eq!(task_extent(1200, MC, MR), 96);
        assert_eq!(task_extent(100, MC, MR), 60);
        for len in 1..3000 {
            for (most, multiple) in [(MC, MR), (NC, NR)] {
                let extent = task_extent(len, most, multiple);
                assert!(
                    extent <= most && extent.is_multiple_of(multiple),
                    "{len}: {extent}"
                );
                assert_eq!(len.div_ceil(extent), len.div_ceil(most), "{len}: {extent}");
            }
        }
    }

    /// The kernels this CPU can run (AMX's where the CPU has it and Linux grants its tile
    /// state, whether or not it passed the self-check: these tests check it).
    fn kernels() -> Vec<Kernel> {
        // x86-64 adds its native kernels.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut kernels = vec![Kernel::Portable, Kernel::RoundedF32];
        #[cfg(target_arch = "x86_64")]
        if cpu::avx512_bf16() {
            kernels.push(Kernel::Avx512Bf16);
            match cpu::amx_permission() {
                Ok(()) => kernels.push(Kernel::Amx),
                Err(reason) => eprintln!("AMX kernel skipped: {reason}"),
            }
        } else {
            eprintln!("AVX512-BF16 and AMX kernels skipped: this CPU has no AVX512-BF16");
        }
        kernels
    }

    /// Every edge at once, for every kernel this CPU runs: rows and columns not whole tiles or
    /// tasks, an odd inner dimension longer than one block, whole AMX tiles, each start (zero,
    /// the destination, a bias), and transposed operands (the left one packed in both
    /// orders); the right operand packed by the product and packed beforehand.
    #[test]
    fn equals_the_product_of_the_rounded_operands() {
        for kernel in kernels() {
            products_of_the_rounded_operands(kernel);
        }
    }

    fn products_of_the_rounded_operands(kernel: Kernel) {
        let shapes = [
            (1, 1, 1),
            (13, 33, 7),
            (100, 530, 385),
            (250, 70, 800),
            (64, 96, 768),
        ];
        for (m, n, k) in shapes {
            let lhs = wave(m * k, 0.1);
            let rhs = wave(k * n, 0.7);
            // The right operand stored transposed (`[n, k]`), read through its strides.
            let rhs_t: Vec<f32> = (0..n * k).map(|i| rhs[(i % k) * n + i / k]).collect();
            let transposed = Operand::row_major(&rhs_t, k).transposed();
            // The left operand stored transposed too (`[k, m]`): packed in pair order.
            let lhs_t: Vec<f32> = (0..m * k).map(|i| lhs[(i % m) * k + i / m]).collect();
            let lhs_transposed = Operand::row_major(&lhs_t, m).transposed();
            let start = wave(m * n, 2.0);
            let bias = wave(n, 3.0);
            let row_major = Operand::row_major(&lhs, k);
            for (from, lhs_operand, rhs_operand) in [
                (Start::Zero, row_major, Operand::row_major(&rhs, n)),
                (Start::Dst, lhs_transposed, transposed),
                (Start::Bias(&bias), row_major, transposed),
                (
                    Start::Bias(&bias),
                    lhs_transposed,
                    Operand::row_major(&rhs, n),
                ),
            ] {
                // SAFETY: the operand holds its extent.
                let packed = unsafe { PackedRhs::new_for(kernel, rhs_operand, k, n) };
                let unpacked = Rhs::Unpacked(rhs_operand);
                let [got, got_packed] = [unpacked, Rhs::Packed(&packed)].map(|rhs| {
                    let mut got = start.clone();
                    // SAFETY: the buffers hold the extents given.
                    unsafe {
                        product_with(kernel, got.as_mut_ptr(), (m, n, k), from, lhs_operand, rhs)
                    };
                    got
                });
                // The operand packed beforehand gives the same bits.
                assert!(
                    got == got_packed,
                    "{kernel:?} {m}x{n}x{k}: packed before and during differ"
                );
                let initial: Vec<f32> = (0..m * n)
                    .map(|index| match from {
                        Start::Zero => 0.0,
                        Start::Dst => start[index],
                        Start::Bias(bias) => bias[index % n],
                    })
                    .collect();
                if let Start::Bias(_) = from {
                    // The same bits as the bias filled in first and the products added to it.
                    let mut filled = initial.clone();
                    // SAFETY: as above.
                    unsafe {
                        product_with(
                            kernel,
                            filled.as_mut_ptr(),
                            (m, n, k),
                            Start::Dst,
                            lhs_operand,
                            Rhs::Packed(&packed),
                        )
                    };
                    assert!(
                        got == filled,
                        "{kernel:?} {m}x{n}x{k}: bias start and filled bias differ"
                    );
                }
                let want = exact_product(&lhs, &rhs, &initial, (m, n, k));
                for (index, (&got, &(want, magnitude))) in got.iter().zip(&want).enumerate() {
                    assert!(
                        within_tolerance(got, want, magnitude, k),
                        "{kernel:?} {m}x{n}x{k}: [{index}] {got} against {want}"
                    );
                }
            }
        }
    }

    /// On a CPU with AMX whose tile state Linux grants, the kernel passes its self-check and
    /// is the one chosen.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_passes_its_self_check_where_granted() {
        if let Err(reason) = cpu::amx_permission() {
            eprintln!("skipped: {reason}");
            return;
        }
        assert_eq!(amx_self_check(), Ok(()));
        assert_eq!(Kernel::detect(), (Kernel::Amx, Bf16Support::Amx));
    }

    /// An operand of `lanes` × `inner` in `values` (which holds twice that) contiguous along
    /// the inner dimension, along the lanes (a transposed operand), and neither.
    // The packing tests are x86-64's (the native packing).
    #[cfg(target_arch = "x86_64")]
    fn layouts(values: &[f32], lanes: usize, inner: usize) -> [Source; 3] {
        [(inner, 1), (1, lanes), (2 * inner, 2)].map(|(lane_stride, inner_stride)| Source {
            start: values.as_ptr(),
            lane_stride: lane_stride as isize,
            inner_stride: inner_stride as isize,
            lanes,
            inner,
        })
    }

    /// AMX's packing: the left operand in tile order in panels of 32 rows, the right one in
    /// pair order in panels of [`NR`] columns, each block's pairs padded with zeros to whole
    /// tile rows, every word where an element-by-element packing puts it, for operands
    /// contiguous along the inner dimension, along the lanes (a transposed operand) and
    /// neither.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_amx_packing_pads_whole_tile_rows() {
        if !cpu::avx512_bf16() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let (lanes, inner) = (45, 2 * KC + 77);
        let values = wave(lanes * inner * 2, 0.9);
        for source in layouts(&values, lanes, inner) {
            fn check<const W: usize>(source: Source, order: Order) {
                let pairs = Kernel::Amx.packed_pairs(source.inner);
                assert_eq!(pairs, KC + 48, "two blocks and 39 pairs padded to 48");
                let padded = source.lanes.div_ceil(W) * W;
                let mut words = vec![u32::MAX; padded * pairs];
                // SAFETY: the source lies inside `values`; `words` has the packed length.
                unsafe { pack::<W>(Kernel::Amx, source, &mut words, false, order) };
                for first in (0..source.inner).step_by(KC) {
                    let block = Kernel::Amx.block_pairs(first, source.inner);
                    assert!(block.is_multiple_of(amx::PAIRS));
                    for lane in 0..padded {
                        for p in 0..block {
                            let index = first + 2 * p;
                            // SAFETY: `get` reads inside the source only.
                            let want = unsafe {
                                pair(source.get(lane, index), source.get(lane, index + 1))
                            };
                            let at = first / 2 * padded
                                + lane / W * block * W
                                + order.index::<W>(lane % W, p, block);
                            assert_eq!(words[at], want, "{order:?} lane {lane} pair {p}");
                        }
                    }
                }
            }
            check::<{ amx::MR }>(source, Order::Tiles);
            check::<NR>(source, Order::Pairs);
        }
    }

    /// The native packing gives the portable packing's words, for operands contiguous along
    /// the inner dimension (converted in lane order, transposed in registers in pair order),
    /// along the lanes (interleaved), and neither (element by element), in both orders, with
    /// lanes and pairs short of whole panels.
    // The native kernel is x86-64's (AVX512-BF16); elsewhere there is only the portable one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_native_packing_equals_the_portable_one() {
        if !cpu::avx512_bf16() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let (lanes, inner) = (45, 777);
        let values = wave(lanes * inner * 2, 0.9);
        for source in layouts(&values, lanes, inner) {
            let (lane_stride, inner_stride) = (source.lane_stride, source.inner_stride);
            fn both<const W: usize>(source: Source, order: Order) -> [Vec<u32>; 2] {
                let length = source.lanes.div_ceil(W) * W * source.inner.div_ceil(2);
                [Kernel::Avx512Bf16, Kernel::Portable].map(|kernel| {
                    let mut words = vec![u32::MAX; length];
                    // SAFETY: the source lies inside `values`; `words` has the packed length.
                    unsafe { pack::<W>(kernel, source, &mut words, false, order) };
                    words
                })
            }
            for order in [Order::Pairs, Order::Lanes] {
                let [native, portable] = both::<MR>(source, order);
                assert!(
                    native == portable,
                    "rows in {order:?}, strides {lane_stride}, {inner_stride}"
                );
            }
            let [native, portable] = both::<NR>(source, Order::Pairs);
            assert!(
                native == portable,
                "columns, strides {lane_stride}, {inner_stride}"
            );
        }
    }

    /// The native kernel adds the same exact products in the same order as the portable one,
    /// from each start (zero, the destination, a bias, one narrower than the tile).
    // The native kernel is x86-64's (AVX512-BF16); elsewhere there is only the portable one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_native_kernel_equals_the_portable_one() {
        if !cpu::avx512_bf16() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let (pairs, height, width) = (50, MR, NR);
        let a: Vec<u32> = wave(pairs * MR * 2, 0.3)
            .chunks(2)
            .map(|p| pair(p[0], p[1]))
            .collect();
        let b: Vec<u32> = wave(pairs * NR * 2, 1.3)
            .chunks(2)
            .map(|p| pair(p[0], p[1]))
            .collect();
        let (start, bias) = (wave(MR * NR, 2.3), wave(NR, 3.3));
        for order in [Order::Pairs, Order::Lanes] {
            for (from, width) in [
                (Start::Zero, width),
                (Start::Dst, width),
                (Start::Bias(&bias), width),
                (Start::Bias(&bias[..NR - 5]), width - 5),
            ] {
                let [native, portable] = [Kernel::Avx512Bf16, Kernel::Portable].map(|kernel| {
                    let mut out = start.clone();
                    // SAFETY: the buffers hold `pairs` pairs and one tile.
                    unsafe {
                        micro(
                            kernel,
                            pairs,
                            &a,
                            order,
                            &b,
                            out.as_mut_ptr(),
                            NR,
                            height,
                            width,
                            from,
                        )
                    };
                    out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                });
                assert_eq!(native, portable, "{order:?}, width {width}");
            }
        }
    }
}
