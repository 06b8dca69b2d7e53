//! The workshop: `cargo xtask train | test | bench | data | ci`.
//!
//! Each task shells out to cargo and to the `seqrec` binary (built in
//! release), so what xtask does is exactly what a user can do by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  train              the main job on the built-in synthetic sessions dataset:
                     generate it, prepare it, print its statistics and the oracle
  test               every test of the workspace (what CI runs)
  bench [NAME] [--quick] [ARGS...]
                     benchmarks (NAME: ingest | all; default all); --quick runs
                     small sizes in seconds, as CI does; results in target/bench/
  data ARGS...       `seqrec data ARGS...` with the release binary
  ci                 fmt --check, clippy -D warnings, test, bench --quick
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
        "test" => test(rest),
        "bench" => bench(rest),
        "data" => seqrec(&[&["data"], &strs(rest)[..]].concat()),
        "ci" => ci(),
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
        Profile::Release => (Some("--release"), "target/release/seqrec"),
        Profile::Dev => (None, "target/debug/seqrec"),
    };
    run(cargo().args(["build", "--quiet", "-p", "seqrec"]).args(flag))?;
    run(Command::new(root().join(dir)).args(args))
}

fn train(rest: &[String]) -> Result<()> {
    let data = "target/synth/sessions";
    let prepared = "target/prepared/synth-sessions";
    seqrec(&["data", "synth", "sessions", "--out", data])?;
    seqrec(
        &[&["data", "prepare", "datasets/synth-sessions.toml", "--dir", data, "--out", prepared][..], &strs(rest)]
            .concat(),
    )?;
    seqrec(&["data", "stats", prepared])?;
    let path = Path::new(data).join("oracle.json");
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)?;
    println!(
        "oracle (exact Bayes predictor) on the test split: Recall@20 {:.4}, MRR@20 {:.4} over {} targets ({})",
        oracle["recall@20"].as_f64().unwrap_or(f64::NAN),
        oracle["mrr@20"].as_f64().unwrap_or(f64::NAN),
        oracle["n_targets"],
        path.display()
    );
    Ok(())
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
        "all" => vec!["ingest"],
        n @ "ingest" => vec![n],
        other => bail!("unknown benchmark `{other}` (known: ingest, all)"),
    };
    std::fs::create_dir_all("target/bench")?;
    for n in names {
        let mut a = vec!["bench", n, "--json", "target/bench"];
        if quick {
            a.push("--quick");
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
