//! Glue of the `cuda` feature: the PTX modules compiled by `build.rs` from
//! `cuda/*.cu`, loading their functions on a candle `CudaDevice`, launch
//! shapes and views of candle storages. Each op's `cuda_fwd` lives beside its
//! CPU reference (`optim`, `loss`, `gru`, `rank`).
//!
//! Launching a kernel is an FFI call (`unsafe` in cudarc): this module and the
//! `cuda_fwd` functions are the only places that do it, each with the
//! argument list of the kernel it calls written next to the `.cu` signature.
#![allow(unsafe_code)]

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{bail, CudaStorage, Layout, Result};

/// A PTX module of `cuda/`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Module {
    Optim,
    Loss,
    Gru,
    Rank,
}

impl Module {
    fn name(self) -> &'static str {
        match self {
            Module::Optim => "seqrec-optim",
            Module::Loss => "seqrec-loss",
            Module::Gru => "seqrec-gru",
            Module::Rank => "seqrec-rank",
        }
    }

    fn ptx(self) -> &'static str {
        match self {
            Module::Optim => include_str!(concat!(env!("OUT_DIR"), "/optim.ptx")),
            Module::Loss => include_str!(concat!(env!("OUT_DIR"), "/loss.ptx")),
            Module::Gru => include_str!(concat!(env!("OUT_DIR"), "/gru.ptx")),
            Module::Rank => include_str!(concat!(env!("OUT_DIR"), "/rank.ptx")),
        }
    }
}

/// The kernel `name` of `module`, loaded once per device; launch it with
/// `dev.cuda_stream().launch_builder(&f)` and [`launch`].
pub(crate) fn func(dev: &CudaDevice, module: Module, name: &str) -> Result<CudaFunction> {
    Ok(dev.get_or_load_custom_func(name, module.name(), module.ptx())?.into_cuda_function())
}

/// Threads per block of the element-wise kernels.
pub(crate) const BLOCK: u32 = 256;

/// A grid-stride launch over `n` elements (the kernels loop, so the grid is capped).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// The f32 elements of a contiguous tensor's storage.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{what}: expected a contiguous tensor") };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// The f32 elements of a contiguous tensor's storage, writable.
pub(crate) fn view_mut<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<CudaViewMut<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{what}: expected a contiguous tensor") };
    Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b))
}

/// Copies host u32 values to the device.
pub(crate) fn upload_u32(dev: &CudaDevice, v: &[u32]) -> Result<CudaSlice<u32>> {
    dev.clone_htod(v)
}

/// Wraps a device buffer as a candle storage.
pub(crate) fn storage(slice: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// Launches a built kernel call; the caller has pushed every argument of the
/// kernel's signature, in order and of the kernel's types.
pub(crate) fn launch(
    mut args: candle_core::cuda_backend::cudarc::driver::LaunchArgs<'_>,
    cfg: LaunchConfig,
) -> Result<()> {
    use candle_core::cuda_backend::WrapErr;
    // SAFETY: every caller pushes exactly the arguments of the kernel it
    // loaded (checked against the `.cu` signatures next to each call), with
    // buffers at least as long as the element counts it passes.
    unsafe { args.launch(cfg) }.w()?;
    Ok(())
}
