//! What this CPU offers the bf16 products of [`crate::autocast`], read once per process:
//! AVX512-BF16, AMX's tiles and the operating system's permission to use them, and
//! [`Bf16Support`], the name of the path the products take. A leaf: the CPU backend's kernels
//! choose from what is here (`fused::flex::bf16_gemm`), nothing here calls them.

/// How this CPU runs the products of [`crate::autocast::bf16`] on the CPU backend, and so
/// whether mixed precision is faster here than f32 (docs/BENCHMARKS.md measures both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Support {
    /// AMX's tile products (`tdpbf16ps`, Intel Xeon from Sapphire Rapids on): 16 × 16 f32
    /// sums of 32 bf16 products per instruction, many times an f32 FMA's multiply-adds; the
    /// kernel passed its self-check in this process.
    Amx,
    /// AVX512-BF16's `vdpbf16ps` (AMD Zen 4 on, Intel Cooper Lake): twice an f32 FMA's
    /// multiply-adds per instruction; faster than f32 (roberta-base inference at 1.4-1.5x on
    /// an AMD EPYC Zen 5).
    Native,
    /// A CPU with AMX whose tiles this process cannot use (the reason: the operating system
    /// refused the tile state, or the AMX kernel's self-check failed). The products are then
    /// f32 products of the bf16-rounded operands, at about f32's speed: on the Intel Xeon
    /// measured, AVX512-BF16's `vdpbf16ps` ran at 0.46-0.76x our own f32 speed.
    AmxUnusable(&'static str),
    /// No AVX512-BF16: f32 products of the bf16-rounded operands, at about f32's speed.
    NoAvx512Bf16,
}

impl Bf16Support {
    /// Whether [`crate::autocast::bf16`] is faster than f32 here; elsewhere it runs at about
    /// f32's speed, which a user asking for it is told.
    pub fn faster_than_f32(self) -> bool {
        matches!(self, Self::Amx | Self::Native)
    }

    /// One line on what `bf16` does on this CPU, for logs and notes.
    pub fn describe(self) -> String {
        match self {
            Self::Amx => "bf16 mixed precision: the linear layers' products from bf16 operands \
                          on AMX tiles"
                .into(),
            Self::Native => "bf16 mixed precision: the linear layers' products from bf16 \
                             operands (AVX512-BF16)"
                .into(),
            Self::AmxUnusable(reason) => format!(
                "bf16 mixed precision on a CPU with AMX whose tiles are not used ({reason}): \
                 the products are f32 products of the bf16-rounded operands, at about f32's \
                 speed"
            ),
            Self::NoAvx512Bf16 => "bf16 mixed precision on a CPU without AVX512-BF16: f32 \
                                   products of the bf16-rounded operands, at about f32's speed"
                .into(),
        }
    }
}

/// Whether this CPU has AVX512-BF16 with AVX512-F and -BW (the bf16 kernels' packing uses
/// AVX512-BW's permutes).
pub(crate) fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AMX's tiles and their bf16 products (CPUID leaf 7: EDX bit 24
/// AMX-TILE, bit 22 AMX-BF16; Intel Xeon from Sapphire Rapids on). Read from CPUID because
/// `is_x86_feature_detected!("amx-bf16")` is not stable Rust; read once, as every product asks
/// and under a hypervisor CPUID leaves the guest.
// Asked only by the x86-64 kernels (and the A/B switch of the benchmarks).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMX.get_or_init(|| {
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            edx >> 22 & 1 == 1 && edx >> 24 & 1 == 1
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Asks the operating system once per process for AMX's tile state (on Linux
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux enables the 8 KiB of tile
/// registers per thread only for processes that ask, and kills with SIGILL a thread that
/// touches them without; Linux 5.16 on). The permission covers every thread of the process, those started
/// later included. `Err` says why not, for [`Bf16Support::AmxUnusable`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn amx_permission() -> Result<(), &'static str> {
    static GRANTED: std::sync::OnceLock<Result<(), &'static str>> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(request_tile_state)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> Result<(), &'static str> {
    /// From Linux's `arch/x86/include/uapi/asm/prctl.h`.
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    /// The tile data's state component (XSAVE feature 18).
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;
    if !amx_bf16() {
        return Err("no AMX on this CPU");
    }
    // SAFETY: a system call that changes only this process's permissions.
    let result = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        // Once per process: the one reason told, kept for the process's life.
        let error = std::io::Error::last_os_error();
        Err(
            format!("Linux refused the AMX tile state: arch_prctl(ARCH_REQ_XCOMP_PERM): {error}")
                .leak(),
        )
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn request_tile_state() -> Result<(), &'static str> {
    Err("AMX's tile state is requested on Linux only")
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    use super::*;

    /// The AMX bits read from CPUID are the kernel's own `amx_bf16` and `amx_tile` flags,
    /// where Linux lists the flags of the CPU this test runs on (under qemu-user's emulation
    /// it lists the host's), and Linux grants the tile state where they are set.
    #[test]
    fn amx_is_what_the_kernel_reports() {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            eprintln!("skipped: no /proc/cpuinfo");
            return;
        };
        let flags = cpuinfo
            .lines()
            .find(|line| line.starts_with("flags"))
            .unwrap_or("");
        let listed = |flag: &str| flags.split_whitespace().any(|listed| listed == flag);
        if listed("avx2") != std::is_x86_feature_detected!("avx2")
            || listed("avx512f") != std::is_x86_feature_detected!("avx512f")
        {
            eprintln!("skipped: /proc/cpuinfo is another CPU's (emulation)");
            return;
        }
        assert_eq!(amx_bf16(), listed("amx_bf16") && listed("amx_tile"));
        if !amx_bf16() {
            assert!(amx_permission().is_err());
        } else if let Err(reason) = amx_permission() {
            eprintln!("AMX present, its tile state refused here: {reason}");
        }
    }
}
