//! `seqrec data`: prepare | stats | synth.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;
use seqrec_data::synth::kt::{write_riiid_parquet, KtConfig};
use seqrec_data::synth::sessions::SessionsConfig;

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
    /// Generate synthetic data with a known optimal predictor.
    #[command(subcommand)]
    Synth(SynthCommand),
    /// Print statistics of a prepared dataset.
    Stats {
        /// Prepared dataset directory.
        dir: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Synthetic generators.
#[derive(Debug, Subcommand)]
pub enum SynthCommand {
    /// Latent-intent sessions as GRU4Rec TSV (`sessions.tsv`) plus the oracle's report (`oracle.json`).
    Sessions {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Generator config (TOML with the keys of `SessionsConfig`); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed (overrides the config's).
        #[arg(long)]
        seed: Option<u64>,
        /// Number of sessions (overrides the config's).
        #[arg(long)]
        sessions: Option<usize>,
    },
    /// Knowledge tracing in Riiid's schema: train.csv, questions.csv, lectures.csv, truth.csv, oracle.json.
    Kt {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Generator config (TOML with the keys of `KtConfig`); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed (overrides the config's).
        #[arg(long)]
        seed: Option<u64>,
        /// Number of learners (overrides the config's).
        #[arg(long)]
        learners: Option<usize>,
    },
    /// A Riiid-schema train parquet of exactly N rows (for ingestion at scale).
    RiiidParquet {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Rows to write.
        #[arg(long)]
        rows: u64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn load_config<T: serde::de::DeserializeOwned + Default>(path: Option<&PathBuf>) -> Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid generator config", path.display()))
}

fn synth(cmd: SynthCommand) -> Result<()> {
    match cmd {
        SynthCommand::Sessions { out, config, seed, sessions } => {
            let mut cfg: SessionsConfig = load_config(config.as_ref())?;
            cfg.seed = seed.unwrap_or(cfg.seed);
            cfg.n_sessions = sessions.unwrap_or(cfg.n_sessions);
            let data = cfg.generate()?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            data.write_gru4rec_tsv(&out.join("sessions.tsv"))?;
            data.write_oracle_json(&out.join("oracle.json"))?;
            let r = data.oracle_report();
            eprintln!(
                "wrote {} sessions to {}; oracle recall@20 {:.4}, mrr@20 {:.4}",
                data.n_sessions(),
                out.display(),
                r.recall_at_20,
                r.mrr_at_20
            );
        }
        SynthCommand::Kt { out, config, seed, learners } => {
            let mut cfg: KtConfig = load_config(config.as_ref())?;
            cfg.seed = seed.unwrap_or(cfg.seed);
            cfg.n_learners = learners.unwrap_or(cfg.n_learners);
            let data = cfg.generate()?;
            data.write_riiid_csv(&out)?;
            let r = data.oracle_report();
            eprintln!(
                "wrote {} rows to {}; oracle test AUC {:.4}",
                data.rows.len(),
                out.display(),
                r.auc_test.unwrap_or(f64::NAN)
            );
        }
        SynthCommand::RiiidParquet { out, rows, seed } => {
            let s = write_riiid_parquet(&out, rows, seed)?;
            eprintln!("wrote {s:?} to {}", out.display());
        }
    }
    Ok(())
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(c) => synth(c),
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
        return Ok(());
    }
    let c = &meta.counts;
    println!("prepared {} into {} in {seconds:.2} s", meta.name, out.display());
    println!("  read      {} interactions", meta.rows_read);
    println!("  kept      {} events, {} sequences, {} items", c.events, c.sequences, c.items);
    println!(
        "  split     {}: train {} / valid {} / test {} events",
        summary["split"]["kind"].as_str().unwrap_or("?"),
        c.parts[0],
        c.parts[1],
        c.parts[2]
    );
    println!("  removed   {} valid/test events whose item is unseen in training", summary["split"]["removed_unseen"]);
    if let Some(g) = &meta.gaps {
        println!("  gaps      log1p(seconds) mean {:.4}, std {:.4} over {} training events", g.mean, g.std, g.n);
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
