//! `seqrec data`: prepare | stats | synth.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;

use crate::resources::peak_rss_bytes;

/// Dataset commands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Read, encode, group, filter, split and persist a dataset described by a recipe.
    Prepare {
        /// Recipe file (TOML), e.g. datasets/ml-100k.toml.
        recipe: PathBuf,
        /// Output directory (default: target/prepared/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Data directory, overriding the recipe's `dir`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print statistics of a prepared dataset.
    Stats {
        /// Prepared dataset directory.
        dir: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Prepare { recipe, out, dir, json } => prepare(recipe, out, dir, json),
        DataCommand::Stats { dir, json } => stats(dir, json),
    }
}

fn prepare(recipe: PathBuf, out: Option<PathBuf>, dir: Option<PathBuf>, json: bool) -> Result<()> {
    let t = std::time::Instant::now();
    let mut r = Recipe::load(&recipe).with_context(|| format!("loading recipe {}", recipe.display()))?;
    if let Some(d) = dir {
        r = r.with_dir(d);
    }
    let out = out.unwrap_or_else(|| PathBuf::from("target/prepared").join(&r.name));
    let meta = seqrec_data::prepare::prepare(&r, &out).with_context(|| format!("preparing {}", recipe.display()))?;
    let seconds = t.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "dataset": meta.name,
        "out": out,
        "rows_read": meta.rows_read,
        "counts": meta.counts,
        "vocab_sizes": meta.vocab_sizes,
        "filter": meta.filter,
        "split": meta.split,
        "gaps": meta.gaps,
        "stage_seconds": meta.seconds,
        "seconds": seconds,
        "decoded_column_bytes": meta.decoded_column_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

fn stats(dir: PathBuf, json: bool) -> Result<()> {
    let ds = Dataset::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let s = ds.stats();
    if json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("dataset       {}", s.name);
    println!("                            read        kept");
    println!("sequences     {:>14} {:>11}", s.sequences_read, s.sequences);
    println!("items         {:>14} {:>11}", s.items_read, s.items);
    println!("interactions  {:>14} {:>11}", s.rows_read, s.interactions);
    println!("train/valid/test events     {} / {} / {}", s.parts[0], s.parts[1], s.parts[2]);
    println!(
        "train/valid/test sequences  {} / {} / {}",
        s.sequences_per_part[0], s.sequences_per_part[1], s.sequences_per_part[2]
    );
    println!(
        "length min/median/mean/max  {} / {} / {:.1} / {}",
        s.length_min, s.length_median, s.length_mean, s.length_max
    );
    println!("time range (ms)             {} .. {}", s.time_range.0, s.time_range.1);
    for (k, v) in &s.vocab_sizes {
        println!("vocab {k:<22} {v}");
    }
    Ok(())
}
