//! `seqrec`: data | train | evaluate | recommend | bench.
//!
//! This binary owns the process concerns (arguments, logging, exit codes,
//! `anyhow` errors with context); the libraries do the work.

mod bench;
mod data;
mod resources;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Neural sequential recommenders: raw logs to trained models, metrics and top-K lists.
#[derive(Debug, Parser)]
#[command(name = "seqrec", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where models run: cpu, cuda, cuda:N, or auto (a GPU when this binary has
    /// the `cuda` feature and one answers, else the CPU; the log says which).
    #[arg(long, global = true, default_value = "auto", value_name = "cpu|cuda[:N]|auto")]
    device: seqrec_kernels::device::DeviceChoice,
}

/// The `--device` of this process.
static DEVICE_CHOICE: std::sync::OnceLock<seqrec_kernels::device::DeviceChoice> = std::sync::OnceLock::new();
/// What it resolved to, once, on the first command that needs a device.
static DEVICE: std::sync::OnceLock<std::result::Result<candle_core::Device, String>> = std::sync::OnceLock::new();

/// `cpu` or `cuda:N`, for tables and JSON.
pub(crate) fn device_name(d: &candle_core::Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

/// The device the models of this command run on (`--device`, resolved and logged once).
pub(crate) fn device() -> Result<candle_core::Device> {
    DEVICE
        .get_or_init(|| {
            let choice = DEVICE_CHOICE.get().copied().unwrap_or_default();
            seqrec_kernels::device::resolve(choice).map(|(d, why)| {
                tracing::info!("{why}");
                d
            })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare, inspect and generate datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Train the run config's `model` (GRU4Rec, SASRec, MF, BST, NCF, RRNCF, …) into a run directory.
    Train(train::TrainArgs),
    /// Rank a part of a prepared dataset with a trained run.
    Evaluate(train::EvaluateArgs),
    /// Top-K next items for the sessions of a file.
    Recommend(train::RecommendArgs),
    /// Most-popular and Markov baselines on a prepared dataset.
    Baseline(train::BaselineArgs),
    /// Benchmarks that print a table and write JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    keep_freed_memory();
    seqrec_models::gru4rec::pin_thread_count();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter_or_info().init();
    // The command runs on a rayon worker: the many short parallel regions of
    // a training step then split from inside the pool instead of each being
    // injected from outside with the caller asleep on a lock until it ends.
    let cli = Cli::parse();
    let _ = DEVICE_CHOICE.set(cli.device);
    if let Err(e) = rayon::scope(|_| run(cli)) {
        eprintln!("error: {}", chain_message(&e));
        std::process::exit(1);
    }
}

/// Tells glibc's allocator to serve large blocks from the heap and keep freed
/// memory instead of returning it to the kernel. Training allocates and frees
/// the same few megabyte-sized tensors every step; with glibc's defaults each
/// one is a fresh `mmap` whose pages fault in again (a third of a GRU4Rec step
/// at 480 units on 2 cores). The process keeps its peak heap, which training
/// reaches in the first steps anyway.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// The error and its causes joined by `: `, skipping a cause whose text the
/// message already holds (library errors often quote their source).
fn chain_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(c) => data::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Train(a) => train::run_train(a),
        Command::Evaluate(a) => train::run_evaluate(a),
        Command::Recommend(a) => train::run_recommend(a),
        Command::Baseline(a) => train::run_baseline(a),
    }
}

/// Log level from `SEQREC_LOG` (error, warn, info, debug, trace), info by default.
trait LevelFromEnv {
    fn with_env_filter_or_info(self) -> Self;
}

impl<N, E, W> LevelFromEnv
    for tracing_subscriber::fmt::SubscriberBuilder<N, E, tracing_subscriber::filter::LevelFilter, W>
{
    fn with_env_filter_or_info(self) -> Self {
        let level = std::env::var("SEQREC_LOG")
            .ok()
            .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
            .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
        self.with_max_level(level)
    }
}

#[cfg(test)]
mod tests {
    use super::chain_message;
    use anyhow::Context;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let lib = seqrec_data::Error::io("a.csv", io);
        let e = Err::<(), _>(lib).context("preparing r.toml").unwrap_err();
        assert_eq!(chain_message(&e), "preparing r.toml: a.csv: no such file");
    }
}
