//! `seqrec bench`: benchmarks that print a table and write JSON.
//!
//! Each benchmark measures a whole command the way a user runs it (a child
//! process, wall time, its own peak RSS), never inside a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Generate a Riiid-schema parquet of N rows and time `data prepare` on it
    /// (read, encode, group, sort, split, gaps, write).
    Ingest(IngestArgs),
}

/// Arguments of `bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Rows of the generated Riiid-schema parquet.
    #[arg(long, default_value_t = 100_000_000)]
    rows: u64,
    /// Small size (200,000 rows), for CI.
    #[arg(long)]
    quick: bool,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for the generated input and the prepared output (kept between runs).
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Folder to write ingest.json into.
    #[arg(long, default_value = "target/bench")]
    json: PathBuf,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ingest(a) => ingest(a),
    }
}

fn ingest(a: IngestArgs) -> Result<()> {
    let rows = if a.quick { 200_000 } else { a.rows };
    std::fs::create_dir_all(&a.work).with_context(|| format!("creating {}", a.work.display()))?;
    let input = a.work.join(format!("riiid-{rows}-seed{}.parquet", a.seed));
    if !input.exists() {
        let t = Instant::now();
        seqrec_data::synth::kt::write_riiid_parquet(&input, rows, a.seed)
            .with_context(|| format!("generating {}", input.display()))?;
        eprintln!("generated {} rows in {:.1} s: {}", rows, t.elapsed().as_secs_f64(), input.display());
    }
    let recipe = a.work.join(format!("riiid-{rows}.toml"));
    let text = format!(
        "name = \"riiid-synthetic-{rows}\"\nformat = \"riiid\"\ndir = \".\"\n\n[interactions]\npath = \"{}\"\n\n[split]\nkind = \"last_fraction\"\ntest = 0.1\nvalid = 0.1\n",
        input.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    std::fs::write(&recipe, text).with_context(|| format!("writing {}", recipe.display()))?;
    let out = a.work.join(format!("prepared-{rows}"));
    let exe = std::env::current_exe().context("locating the seqrec binary")?;
    let t = Instant::now();
    let output = Command::new(exe)
        .args(["data", "prepare"])
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .output()
        .context("running seqrec data prepare")?;
    let seconds = t.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("data prepare failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let summary: Value = serde_json::from_slice(&output.stdout).context("reading the prepare summary")?;
    let peak = summary["peak_rss_bytes"].as_u64().unwrap_or(0);
    let column_bytes = summary["decoded_column_bytes"].as_u64().unwrap_or(0);
    let result = json!({
        "bench": "ingest",
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows as f64 / seconds,
        "peak_rss_bytes": peak,
        "column_bytes": column_bytes,
        "rss_over_column_bytes": peak as f64 / column_bytes.max(1) as f64,
        "stage_seconds": summary["stage_seconds"],
        "events_kept": summary["counts"]["events"],
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("| rows | seconds | rows/s | peak RSS (MiB) | decoded columns (MiB) | RSS / columns |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {rows} | {seconds:.2} | {:.0} | {:.0} | {:.0} | {:.2} |",
        rows as f64 / seconds,
        peak as f64 / 1048576.0,
        column_bytes as f64 / 1048576.0,
        peak as f64 / column_bytes.max(1) as f64
    );
    println!("stages (s): {}", summary["stage_seconds"]);
    write_json(&a.json, "ingest", &result)
}

/// Writes `dir/<name>.json`.
pub fn write_json(dir: &Path, name: &str, value: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value)? + "\n";
    seqrec_data::io::write_atomic(&path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes()).map_err(|e| seqrec_data::Error::io(&path, e))
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
