//! The micro kernel on AMX's tiles (Intel Xeon from Sapphire Rapids on): `tdpbf16ps` adds, to
//! each of a tile's 16 × 16 f32 sums, the 32 products of a row of bf16 pairs of the left tile
//! with a column of bf16 pairs of the right one: 8,192 multiply-adds per instruction, where an
//! AVX-512 FMA does 16. Eight tile registers: four hold a 32 × 32 block of sums, two the left
//! operand's 32 rows and two the right operand's 32 columns, for 16 pairs of the inner
//! dimension at a time.
//!
//! The operands are the packing's ([`super::pack`]): the left one in [`super::Order::Tiles`]
//! with panels of [`MR`] rows (a tile's 16 rows are 16 of its lanes, each 16 words of pairs,
//! one tile after the other), the right one in [`super::Order::Pairs`] with panels of
//! [`NR`] columns (a tile's rows are 16 pairs, each 16 columns' words: AMX's "VNNI" layout of
//! the right operand), both with each block's pairs padded with zeros to a multiple of
//! [`PAIRS`].
//!
//! In inline assembly, because Rust's AMX intrinsics are unstable. The tile registers are
//! outside what the compiler allocates, so they hold the sums from one `asm!` block to the
//! next; each task loads the tile configuration ([`Tiles::configure`]) before its first micro
//! tile and releases the tiles after its last. The operating system must have granted the
//! tile state (`crate::cpu::amx_permission`).

use std::arch::asm;

use super::packing::NR;
use crate::fused::flex::product::Start;

/// Rows of a micro tile: two tiles of 16.
pub(super) const MR: usize = 32;

/// Pairs of the inner dimension per tile product: a tile row holds 16 words of two bf16.
pub(super) const PAIRS: usize = 16;

/// Bytes in a tile row.
const ROW_BYTES: usize = 64;

/// The tiles configured for [`micro`] on this thread, released when dropped.
pub(super) struct Tiles(());

impl Tiles {
    /// Configures this thread's tiles: palette 1, all eight of 16 rows of 64 bytes.
    ///
    /// # Safety
    /// The CPU must have AMX-TILE, and the operating system must have granted this process
    /// the tile state.
    pub(super) unsafe fn configure() -> Tiles {
        /// `ldtilecfg`'s 64-byte operand: the palette in byte 0, each tile's bytes per row as
        /// a u16 from byte 16, its rows as a u8 from byte 48.
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for tile in 0..8 {
            config.0[16 + 2 * tile] = ROW_BYTES as u8;
            config.0[48 + tile] = 16;
        }
        // SAFETY: the caller's promise; the operand is 64 readable bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`. Released, the thread's tile state
        // returns to its initial one, which context switches need not save.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One micro tile over the whole inner dimension: `out[i][j] = start[i][j] + Σ a·b` over
/// every block's pairs, for the `height` × `width` outputs of the tile at `out` (rows `stride`
/// apart). `blocks` gives per block of the inner dimension its left panel (in tile order), its
/// right panel (in pair order) and its pairs (a multiple of [`PAIRS`]). The sums stay in the
/// tiles from the first block to the last: loaded and stored once, not once per block.
///
/// A whole tile (`MR` × `NR`) starts in the tiles as loaded from `out`, from the bias (each
/// row loaded from the same 64 bytes: a stride of 0), or zero, and is stored to `out`; a tile
/// at the matrix's edge goes through a buffer.
///
/// # Safety
/// The tiles must be configured ([`Tiles`]); each block's panels must hold its pairs ×
/// [`MR`] and × [`NR`] words, `out` the tile, and a bias `width` values.
#[inline]
pub(super) unsafe fn micro<'a>(
    blocks: impl Iterator<Item = (&'a [u32], &'a [u32], usize)>,
    out: *mut f32,
    stride: usize,
    (height, width): (usize, usize),
    start: Start,
) {
    debug_assert!(!matches!(start, Start::Bias(bias) if bias.len() < width));
    /// The sums of a tile at the matrix's edge, 64-byte aligned as the tile rows are.
    #[repr(C, align(64))]
    struct Buffer([f32; MR * NR]);
    let whole = height == MR && width == NR;
    // Not `then_some`: that would zero the 4 KiB for whole tiles too.
    let mut buffer = if whole {
        None
    } else {
        Some(Buffer([0.0; MR * NR]))
    };
    // Where the sums are loaded from and stored to, and the bytes between their rows.
    let (sums, sums_stride) = match &mut buffer {
        None => (out, stride * 4),
        Some(buffer) => {
            for (i, row) in buffer.0.chunks_exact_mut(NR).enumerate().take(height) {
                match start {
                    Start::Zero => {}
                    // SAFETY: row `i` < `height` of the tile holds `width` values.
                    Start::Dst => unsafe {
                        std::ptr::copy_nonoverlapping(out.add(i * stride), row.as_mut_ptr(), width)
                    },
                    Start::Bias(bias) => row[..width].copy_from_slice(&bias[..width]),
                }
            }
            (buffer.0.as_mut_ptr(), NR * 4)
        }
    };
    // The four tiles of sums: rows 0-15 and 16-31, columns 0-15 and 16-31.
    let quarter =
        |row: usize, column: usize| sums.wrapping_byte_add(row * 16 * sums_stride + column * 64);
    let quarters = [quarter(0, 0), quarter(0, 1), quarter(1, 0), quarter(1, 1)];
    // Where the four tiles start from, and the bytes between their rows: nowhere (zero), the
    // bias (every row from the same 64 bytes: a stride of 0), or the sums' place.
    let from: Option<([*const f32; 4], usize)> = match (whole, start) {
        (true, Start::Zero) => None,
        (true, Start::Bias(bias)) => {
            let (low, high) = (bias.as_ptr(), bias.as_ptr().wrapping_add(16));
            Some(([low, high, low, high], 0))
        }
        _ => Some((quarters.map(|q| q.cast_const()), sums_stride)),
    };
    // SAFETY (all the `asm!` below): the tiles are configured, the caller's promise; each
    // load and store touches 16 rows of 64 bytes at the addresses and strides given, which
    // lie inside `out` (a whole tile), the buffer, the bias (its first `NR` = `width`
    // values, read by every row) or the panels (the caller's promise on their lengths).
    unsafe {
        match from {
            None => asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            ),
            Some(([c00, c01, c10, c11], stride)) => asm!(
                "tileloadd tmm0, [{c00} + {stride}*1]",
                "tileloadd tmm1, [{c01} + {stride}*1]",
                "tileloadd tmm2, [{c10} + {stride}*1]",
                "tileloadd tmm3, [{c11} + {stride}*1]",
                c00 = in(reg) c00,
                c01 = in(reg) c01,
                c10 = in(reg) c10,
                c11 = in(reg) c11,
                stride = in(reg) stride,
                options(nostack, readonly)
            ),
        }
        for (a, b, pairs) in blocks {
            debug_assert!(pairs.is_multiple_of(PAIRS));
            debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
            let (a, b) = (a.as_ptr(), b.as_ptr());
            for p in (0..pairs).step_by(PAIRS) {
                asm!(
                    "tileloadd tmm4, [{a0} + {a_stride}*1]",
                    "tileloadd tmm6, [{b0} + {b_stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {b_stride}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {a_stride}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    // Rows 0-15 and 16-31 of the left panel's tiles of pairs `p`.. (16 words
                    // apart).
                    a0 = in(reg) a.add(p * MR),
                    a1 = in(reg) a.add(p * MR + 16 * 16),
                    // Pairs `p`.. of the right panel (`NR` words apart), columns 0-15 and 16-31.
                    b0 = in(reg) b.add(p * NR),
                    b1 = in(reg) b.add(p * NR + 16),
                    a_stride = in(reg) ROW_BYTES,
                    b_stride = in(reg) NR * 4,
                    options(nostack, readonly)
                );
            }
        }
        asm!(
            "tilestored [{c00} + {stride}*1], tmm0",
            "tilestored [{c01} + {stride}*1], tmm1",
            "tilestored [{c10} + {stride}*1], tmm2",
            "tilestored [{c11} + {stride}*1], tmm3",
            c00 = in(reg) quarters[0],
            c01 = in(reg) quarters[1],
            c10 = in(reg) quarters[2],
            c11 = in(reg) quarters[3],
            stride = in(reg) sums_stride,
            options(nostack)
        );
    }
    if let Some(buffer) = &buffer {
        for (i, row) in buffer.0.chunks_exact(NR).enumerate().take(height) {
            // SAFETY: row `i` < `height` of the tile holds `width` values.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * stride), width) };
        }
    }
}
