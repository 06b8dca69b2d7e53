//! Times GRU4Rec training steps on random batches: an A/B tool for changes to
//! the step, steadier than a whole `seqrec bench gru4rec` epoch on a shared
//! VM (it reports the fastest, lower-quartile and median block of 100 steps).
//!
//! ```text
//! GLIBC_TUNABLES=glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=2147483647 \
//!   cargo run --release -p seqrec-models --example gru4rec_step -- [ITEMS] [a|b] [ab]
//! ```
//!
//! With `ab` it alternates blocks with the GRU weights' updates deferred to
//! the next step (the default, `Gru4Rec::set_deferred_updates`) and applied
//! at once, and reports the ratio of each pair of neighbouring blocks: an
//! A/B inside one process, which cancels the VM's slow drifts that separate
//! runs suffer (±10% within minutes). It then also prints each phase's mean
//! time per step in either mode (the phase timer, `seqrec_kernels::probe`),
//! measured in the same alternating blocks; for another A/B, a temporary
//! switch toggled where the example toggles the held-over updates.
//!
//! Settings as `seqrec bench gru4rec`: (a) 100 units, batch 32, one-hot
//! input; (b) 480 units, batch 48, constrained embedding; both cross-entropy
//! with 2,048 shared samples. Inputs and targets are drawn with popularity
//! ∝ 1/rank, samples with its square root (`sample_alpha` 0.5). The
//! allocator settings are those the `seqrec` binary makes with `mallopt`
//! (without them freed tensors go back to the kernel and fault in again).
//! Like the trainer, it fixes the thread counts first
//! (`gru4rec::pin_thread_count`); before the fourteenth session it did not,
//! and candle's own thread pool competed with rayon's for the two cores,
//! which made its steps ≈ 15% slower than the trainer's.

use std::time::Instant;

use candle_core::Device;
use seqrec_data::rng::Rng;
use seqrec_models::gru4rec::{FinalAct, Gru4Rec, Gru4RecShape, StepConfig, TrainBatch};
use seqrec_models::loss::Loss;
use seqrec_models::optim::{Optimizer, OptimizerKind};

const SAMPLES: usize = 2048;
const BLOCKS: usize = 25;
const STEPS: usize = 100;

fn main() -> Result<(), String> {
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        eprintln!("note: GLIBC_TUNABLES is not set; see the example's header for the allocator settings of `seqrec`");
    }
    let mut args = std::env::args().skip(1);
    let n_ids = match args.next() {
        None => 8000,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 2 => n,
            _ => return Err(format!("ITEMS: found `{s}`, expected a number of items >= 2")),
        },
    };
    let setting = args.next().unwrap_or_else(|| "b".into());
    let ab = match args.next().as_deref() {
        None => false,
        Some("ab") => true,
        Some(other) => return Err(format!("third argument: found `{other}`, expected `ab` or nothing")),
    };
    // As the trainer: candle's own thread pool off, rayon's thread count fixed.
    seqrec_models::gru4rec::pin_thread_count();
    let pool = rayon::ThreadPoolBuilder::new().build().map_err(|e| e.to_string())?;
    pool.install(|| run(n_ids, &setting, ab))
}

/// Cumulative weights of ids `1..n_ids` for popularity ∝ rank^-`exponent`.
fn cumulative(n_ids: usize, exponent: f64) -> Vec<f64> {
    let mut sum = 0.0;
    (1..n_ids)
        .map(|i| {
            sum += (i as f64).powf(-exponent);
            sum
        })
        .collect()
}

fn draw(rng: &mut Rng, cum: &[f64]) -> u32 {
    let u = rng.uniform() * cum[cum.len() - 1];
    (cum.partition_point(|&x| x < u) + 1).min(cum.len()) as u32
}

fn run(n_ids: usize, setting: &str, ab: bool) -> Result<(), String> {
    let (units, batch_size, constrained) = match setting {
        "a" => (100, 32, false),
        "b" => (480, 48, true),
        other => return Err(format!("setting: found `{other}`, expected a or b")),
    };
    let shape = Gru4RecShape {
        layers: vec![units],
        embedding: 0,
        constrained_embedding: constrained,
        dropout_p_embed: 0.0,
        dropout_p_hidden: 0.0,
        final_act: FinalAct::Linear,
        reset_after: false,
    };
    let mut model = Gru4Rec::new(shape, n_ids, 1, &Device::Cpu).map_err(|e| e.to_string())?;
    let mut opt = Optimizer::new(OptimizerKind::Adagrad, 0.05, 0.0).map_err(|e| e.to_string())?;
    let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size };
    let (events, samples) = (cumulative(n_ids, 1.0), cumulative(n_ids, 0.5));
    let mut rng = Rng::new(7);
    let mut state = model.zero_state(batch_size).map_err(|e| e.to_string())?;
    let _awake = seqrec_kernels::pool::KeepAwake::start();
    let mut block_ms = Vec::new();
    // Block times with the updates applied at once [0] and deferred [1].
    let mut by_mode = [Vec::new(), Vec::new()];
    let mut distinct = 0;
    // Per phase and mode: the sum over timed blocks of its mean µs per step.
    let mut phase_sums: std::collections::BTreeMap<(&'static str, bool), f64> = Default::default();
    for block in 0..if ab { 2 * BLOCKS } else { BLOCKS } {
        let deferred = !ab || block % 2 == 1;
        model.set_deferred_updates(deferred).map_err(|e| e.to_string())?;
        seqrec_kernels::probe::enable(true);
        let _ = seqrec_kernels::probe::take();
        let start = Instant::now();
        for _ in 0..STEPS {
            let inputs: Vec<u32> = (0..batch_size).map(|_| draw(&mut rng, &events)).collect();
            let targets: Vec<u32> = (0..batch_size).map(|_| draw(&mut rng, &events)).collect();
            let extra: Vec<u32> = (0..SAMPLES).map(|_| draw(&mut rng, &samples)).collect();
            if block == 0 {
                let mut ids: Vec<u32> = targets.iter().chain(&extra).copied().collect();
                ids.sort_unstable();
                ids.dedup();
                distinct += ids.len();
            }
            let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &extra, log_pop: None };
            model.train_step(batch, &mut state, &cfg, &mut opt, &mut rng).map_err(|e| e.to_string())?;
        }
        let phases = seqrec_kernels::probe::take();
        // the first block warms up (state tables, caches)
        if block > usize::from(ab) {
            for p in &phases.phases {
                *phase_sums.entry((p.name, deferred)).or_default() +=
                    p.wall_ns as f64 / 1e3 / phases.steps.max(1) as f64;
            }
            block_ms.push(start.elapsed().as_secs_f64() * 1e3);
            by_mode[usize::from(deferred)].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    seqrec_kernels::probe::enable(false);
    // Mean µs per step of each phase (per mode with `ab`): where an A/B's
    // difference comes from, measured in the same alternating blocks.
    let width = phase_sums.keys().map(|(name, _)| name.chars().count()).max().unwrap_or(0);
    let names: std::collections::BTreeSet<&str> = phase_sums.keys().map(|(name, _)| *name).collect();
    for name in names {
        let mean =
            |mode: bool| phase_sums.get(&(name, mode)).map(|s| s / by_mode[usize::from(mode)].len().max(1) as f64);
        match (ab, mean(false), mean(true)) {
            (true, Some(now), Some(later)) => println!("{name:width$}  at once {now:8.1} µs  held over {later:8.1} µs"),
            (_, _, Some(all)) => println!("{name:width$}  {all:8.1} µs"),
            (_, Some(now), None) => println!("{name:width$}  at once {now:8.1} µs"),
            (_, None, None) => {}
        }
    }
    if ab {
        let mut ratios: Vec<f64> = by_mode[0].iter().zip(&by_mode[1]).map(|(now, later)| later / now).collect();
        ratios.sort_by(f64::total_cmp);
        let q = |f: f64| ratios[((ratios.len() - 1) as f64 * f).round() as usize];
        println!(
            "deferred / at once, per pair of blocks ({} pairs): quartiles {:.3} {:.3} {:.3}",
            ratios.len(),
            q(0.25),
            q(0.5),
            q(0.75)
        );
    }
    block_ms.sort_by(f64::total_cmp);
    let per_step = |ms: f64| ms * 1e3 / STEPS as f64;
    println!(
        "setting {setting}, {n_ids} items: {:.0} distinct output columns of {}; µs per step: min {:.0}, p25 {:.0}, median {:.0}",
        distinct as f64 / STEPS as f64,
        batch_size + SAMPLES,
        per_step(block_ms[0]),
        per_step(block_ms[block_ms.len() / 4]),
        per_step(block_ms[block_ms.len() / 2]),
    );
    Ok(())
}
