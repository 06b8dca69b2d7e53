//! The workshop: `cargo xtask train | tune | test | bench | data | ci`.
//!
//! Each task shells out to cargo and to the `seqrec` binary (built in
//! release), so what xtask does is exactly what a user can do by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod tune;

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  train [CONFIG]     the main job on the built-in synthetic sessions dataset:
                     generate, prepare, train GRU4Rec (configs/gru4rec-synth.toml
                     unless CONFIG), print Recall@20 / MRR@20 beside the oracle and
                     the baselines, write runs/gru4rec-synth/summary.json
  tune [GRID]        a hyper-parameter search for the main job: trains each trial of
                     GRID (configs/tune/gru4rec-synth.toml unless given) on the
                     synthetic sessions with a validation day, ranks the trials by
                     the validation metric, prints their test metrics beside it and
                     writes target/tune/<GRID>.json
  test               every test of the workspace (what CI runs)
  bench [NAME] [--quick] [ARGS...]
                     benchmarks (NAME: ingest | gru4rec | rating | next-item | kt | all; default all); --quick runs
                     small sizes in seconds, as CI does; results in target/bench/
  data ARGS...       `seqrec data ARGS...` with the release binary
  ci                 fmt --check, clippy -D warnings, test, bench --quick
  gpu-pack           build the `cuda` binary and GPU test binaries (needs nvcc; see
                     ../shared/docs/gpu.md) and pack them, stripped and gzipped, into
                     .gpu/ for a GPU machine without Rust; run there with
                     xtask/gpu-run.sh (the device tool: carry .gpu)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    std::env::set_current_dir(root()).context("entering the workspace root")?;
    match task.as_str() {
        "train" => train(rest),
        "tune" => tune::tune(rest),
        "test" => test(rest),
        "bench" => bench(rest),
        "data" => seqrec(&[&["data"], &strs(rest)[..]].concat()),
        "ci" => ci(),
        "gpu-pack" => gpu_pack(),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs the release `seqrec` binary with `args`.
fn seqrec(args: &[&str]) -> Result<()> {
    seqrec_profile(Profile::Release, args)
}

/// Which build of `seqrec` to run.
#[derive(Clone, Copy, PartialEq)]
enum Profile {
    /// Optimised: for real measurements and the main job.
    Release,
    /// The test build: `bench --quick` only proves a benchmark still runs, so
    /// CI saves a second full build on its 2 cores.
    Dev,
}

fn seqrec_profile(profile: Profile, args: &[&str]) -> Result<()> {
    let (flag, dir) = match profile {
        Profile::Release => (Some("--release"), "release/seqrec"),
        Profile::Dev => (None, "debug/seqrec"),
    };
    // `--device cuda[:N]` needs the `cuda` build, kept in its own target dir
    // so the CPU build's cache stays (../shared/docs/gpu.md).
    let (features, target): (&[&str], &str) = if wants_cuda(args) {
        (&["--features", "cuda", "--target-dir", "target/cuda"], "target/cuda")
    } else {
        (&[], "target")
    };
    run(cargo().args(["build", "--quiet", "-p", "seqrec"]).args(flag).args(features))?;
    run(Command::new(root().join(target).join(dir)).args(args))
}

/// True when the arguments ask for `--device cuda…`.
fn wants_cuda(args: &[&str]) -> bool {
    args.windows(2).any(|w| w[0] == "--device" && w[1].starts_with("cuda"))
        || args.iter().any(|a| a.starts_with("--device=cuda"))
}

/// Where `cargo xtask train` and `tune` generate the default synthetic sessions.
const SYNTH_SESSIONS: &str = "target/synth/sessions";

fn train(rest: &[String]) -> Result<()> {
    let data = SYNTH_SESSIONS;
    let prepared = "target/prepared/synth-sessions";
    let run_dir = "runs/gru4rec-synth";
    seqrec(&["data", "synth", "sessions", "--out", data])?;
    seqrec(&["data", "prepare", "datasets/synth-sessions.toml", "--dir", data, "--out", prepared])?;
    seqrec(&["data", "stats", prepared])?;
    let config = rest.first().map_or("configs/gru4rec-synth.toml", String::as_str);
    seqrec(&["train", "--data", prepared, "--run", run_dir, "--config", config])?;
    let baselines = seqrec_output(&["baseline", "--data", prepared, "--json"])?;
    let baselines: serde_json::Value = serde_json::from_str(&baselines).context("parsing `seqrec baseline --json`")?;
    let oracle = read_json(&Path::new(data).join("oracle.json"))?;
    let results = read_json(&Path::new(run_dir).join("results.json"))?;
    let test = &results["test"];
    let summary = serde_json::json!({
        "recall@20": at20(test, "recall"),
        "mrr@20": at20(test, "mrr"),
        "oracle_recall@20": oracle["recall@20"],
        "oracle_mrr@20": oracle["mrr@20"],
        "markov_recall@20": at20(&baselines["markov"], "recall"),
        "markov_mrr@20": at20(&baselines["markov"], "mrr"),
        "most_popular_recall@20": at20(&baselines["most_popular"], "recall"),
        "most_popular_mrr@20": at20(&baselines["most_popular"], "mrr"),
        "test_targets": test["n"],
        "train_events_per_s": results["train_events_per_s"],
        "epochs": results["epochs"],
        "config": config,
        "run_dir": run_dir,
    });
    let path = Path::new(run_dir).join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nnext-item test on the default synthetic sessions ({} targets, all items ranked):", test["n"]);
    println!("  {:<22} {:>10} {:>8}", "model", "Recall@20", "MRR@20");
    let row = |name: &str, r: &serde_json::Value, m: &serde_json::Value| {
        println!("  {:<22} {:>10.4} {:>8.4}", name, r.as_f64().unwrap_or(f64::NAN), m.as_f64().unwrap_or(f64::NAN));
    };
    row("GRU4Rec", &summary["recall@20"], &summary["mrr@20"]);
    row("oracle (exact Bayes)", &summary["oracle_recall@20"], &summary["oracle_mrr@20"]);
    row("Markov (1st order)", &summary["markov_recall@20"], &summary["markov_mrr@20"]);
    row("most popular", &summary["most_popular_recall@20"], &summary["most_popular_mrr@20"]);
    println!("summary: {}", path.display());
    Ok(())
}

/// Reads a JSON file that `seqrec` wrote.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// The value at cut-off 20 of `key` in a metrics object (`{"at": [{"k": .., key: ..}]}`), NaN when absent.
fn at20(m: &serde_json::Value, key: &str) -> f64 {
    m["at"].as_array().and_then(|a| a.iter().find(|x| x["k"] == 20)).and_then(|x| x[key].as_f64()).unwrap_or(f64::NAN)
}

/// Runs the release `seqrec` and returns its stdout (stderr passes through).
fn seqrec_output(args: &[&str]) -> Result<String> {
    run(cargo().args(["build", "--quiet", "--release", "-p", "seqrec"]))?;
    let mut cmd = Command::new(root().join("target/release/seqrec"));
    cmd.args(args).stderr(std::process::Stdio::inherit());
    eprintln!("$ {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn test(rest: &[String]) -> Result<()> {
    run(cargo().args(["test", "--workspace", "--all-targets"]).args(rest))?;
    run(cargo().args(["test", "--workspace", "--doc"]))
}

fn bench(rest: &[String]) -> Result<()> {
    let quick = rest.iter().any(|a| a == "--quick");
    let mut args: Vec<&str> = rest.iter().map(String::as_str).filter(|a| *a != "--quick").collect();
    let name = if args.first().is_some_and(|a| !a.starts_with('-')) { args.remove(0) } else { "all" };
    let names: Vec<&str> = match name {
        "all" => vec!["ingest", "gru4rec", "rating", "next-item", "kt"],
        n @ ("ingest" | "gru4rec" | "rating" | "next-item" | "kt") => vec![n],
        other => bail!("unknown benchmark `{other}` (known: ingest, gru4rec, rating, next-item, kt, all)"),
    };
    std::fs::create_dir_all("target/bench")?;
    for n in names {
        let mut a = vec!["bench", n, "--json", "target/bench"];
        if quick {
            a.push("--quick");
            // The phase timer's path, exercised at the quick size (unless
            // asked for already: clap refuses a flag given twice).
            if n == "gru4rec" && !args.contains(&"--phases") {
                a.push("--phases");
            }
        }
        a.extend(&args);
        seqrec_profile(if quick { Profile::Dev } else { Profile::Release }, &a)?;
    }
    Ok(())
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    test(&[])?;
    bench(&["--quick".into()])
}

/// Builds the `cuda` binary and the GPU test binaries into `target/cuda`
/// and packs them into `.gpu/` (stripped, gzipped: the binary alone is
/// ≈ 60 MB stripped, the device tool carries 64 MiB in all).
fn gpu_pack() -> Result<()> {
    if Command::new("nvcc").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("gpu-pack: `nvcc` is not on PATH; get a CUDA toolkit first (../shared/docs/gpu.md, steps 1-3)");
    }
    let target = ["--target-dir", "target/cuda"];
    run(cargo().args(["build", "--release", "-p", "seqrec", "--features", "cuda"]).args(target))?;
    let out = cargo()
        .args(["test", "--release", "--features", "cuda", "-p", "seqrec-kernels", "-p", "seqrec-models", "--no-run"])
        .args(["--message-format", "json"])
        .args(target)
        .output()
        .context("building the GPU test binaries")?;
    if !out.status.success() {
        bail!("building the GPU test binaries failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    // Test binaries named `gpu` (tests/gpu.rs), one per crate.
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["target"]["name"] == "gpu" {
            if let (Some(exe), Some(pkg)) = (msg["executable"].as_str(), msg["package_id"].as_str()) {
                let krate = if pkg.contains("kernels") { "kernels" } else { "models" };
                tests.push((PathBuf::from(exe), format!("gpu-{krate}")));
            }
        }
    }
    if tests.len() != 2 {
        bail!("gpu-pack: expected the GPU test binaries of seqrec-kernels and seqrec-models, found {tests:?}");
    }
    let dir = Path::new(".gpu");
    std::fs::create_dir_all(dir)?;
    let mut items = vec![(PathBuf::from("target/cuda/release/seqrec"), "seqrec".to_owned())];
    items.extend(tests);
    for (src, name) in &items {
        let stripped = dir.join(name);
        run(Command::new("strip").arg("-o").arg(&stripped).arg(src))?;
        run(Command::new("gzip").args(["-f", "-9"]).arg(&stripped))?;
        let size = std::fs::metadata(dir.join(format!("{name}.gz")))?.len();
        println!("{}: {:.1} MB", dir.join(format!("{name}.gz")).display(), size as f64 / 1e6);
    }
    println!("run on a GPU machine (carry .gpu): bash xtask/gpu-run.sh");
    Ok(())
}
