//! `seqrec bench`: benchmarks that print a table and write JSON.
//!
//! Each benchmark measures a whole command the way a user runs it (a child
//! process, wall time, its own peak RSS), never inside a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use seqrec_train::RunConfig;
use serde_json::{json, Value};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Generate a Riiid-schema parquet of N rows and time `data prepare` on it
    /// (read, encode, group, sort, split, gaps, write).
    Ingest(IngestArgs),
    /// Train GRU4Rec one epoch per setting on synthetic session sets with 8,000
    /// and 40,000 items; training and evaluation events/s, Recall@20, MRR@20
    /// beside the oracle's.
    Gru4rec(Gru4recArgs),
    /// Median baseline, MF and BST on MovieLens (leave-last-one-out): test
    /// MAE/MSE/RMSE, seconds per epoch and the time to build the windows.
    Rating(RatingArgs),
    /// GRU4Rec, the embedding-GRU, SASRec and most-popular on MovieLens
    /// (per-user leave-last-one-out, full ranking): test HR/NDCG/MRR@10 of
    /// the epoch with the best validation NDCG@10, seconds per epoch and per
    /// evaluation pass.
    NextItem(NextItemArgs),
    /// Knowledge tracing: the question-mean baseline, NCF and RRNCF on the
    /// default synthetic set (AUC beside the oracle's on the same test
    /// answers), then one epoch of RRNCF streamed over a 100M-row
    /// Riiid-schema set (events/s, peak RSS).
    Kt(KtArgs),
}

/// Arguments of `bench kt`.
#[derive(Debug, Args)]
pub struct KtArgs {
    /// 400 learners, one epoch of small models and a 200,000-row scale run, for CI.
    #[arg(long)]
    quick: bool,
    /// Learners of the synthetic set (default: the generator's default).
    #[arg(long)]
    learners: Option<usize>,
    /// Run configs, one per model (`model = "question-mean" | "ncf" | "rrncf"`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "configs/question-mean-synth-kt.toml,configs/ncf-synth-kt.toml,configs/ncf-gmf-synth-kt.toml,\
                         configs/ncf-mlp-synth-kt.toml,configs/ncf-pretrained-synth-kt.toml,configs/rrncf-synth-kt.toml"
    )]
    configs: Vec<PathBuf>,
    /// Recipes of the synthetic set, each with its own split (e.g. also
    /// `datasets/synth-kt-by-learner.toml`).
    #[arg(long, value_delimiter = ',', default_value = "datasets/synth-kt.toml")]
    recipes: Vec<PathBuf>,
    /// Override every config's `n_epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    /// Rows of the Riiid-schema scale run (0: skip it).
    #[arg(long, default_value_t = 100_000_000)]
    rows: u64,
    /// Run config of the scale run (trained one epoch, streamed).
    #[arg(long, default_value = "configs/rrncf-synth-kt.toml")]
    scale_config: PathBuf,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for generated data, prepared sets and runs.
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Folder to write kt.json into.
    #[arg(long, default_value = "target/bench")]
    json: PathBuf,
}

/// Arguments of `bench next-item`.
#[derive(Debug, Args)]
pub struct NextItemArgs {
    /// Two epochs of small models, for CI.
    #[arg(long)]
    quick: bool,
    /// Dataset recipe.
    #[arg(long, default_value = "datasets/ml-100k.toml")]
    recipe: PathBuf,
    /// Run configs, one per model (`model = "gru4rec" | "emb-gru" | "sasrec" | "most-popular"`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "configs/most-popular-ml-100k.toml,configs/gru4rec-ml-100k.toml,\
                         configs/emb-gru-ml-100k.toml,configs/sasrec-ml-100k.toml"
    )]
    configs: Vec<PathBuf>,
    /// Override every config's `n_epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    /// Folder for the prepared dataset and the runs.
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Folder to write next-item.json into.
    #[arg(long, default_value = "target/bench")]
    json: PathBuf,
}

/// Arguments of `bench rating`.
#[derive(Debug, Args)]
pub struct RatingArgs {
    /// One epoch of MF and of a small BST, for CI.
    #[arg(long)]
    quick: bool,
    /// Dataset recipe (MovieLens with users and items tables).
    #[arg(long, default_value = "datasets/ml-100k.toml")]
    recipe: PathBuf,
    /// Run configs, one per model (`model = "median" | "mf" | "bst"`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "configs/median-ml-100k.toml,configs/mf-ml-100k.toml,configs/bst-ml-100k.toml"
    )]
    configs: Vec<PathBuf>,
    /// Override every config's `n_epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    /// Folder for the prepared dataset and the runs.
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Folder to write rating.json into.
    #[arg(long, default_value = "target/bench")]
    json: PathBuf,
}

/// Arguments of `bench gru4rec`.
#[derive(Debug, Args)]
pub struct Gru4recArgs {
    /// Small sizes (500 items, 2,000 sessions, n_sample 64), for CI.
    #[arg(long)]
    quick: bool,
    /// Sessions per synthetic set (about 7.5 events each).
    #[arg(long, default_value_t = 46_000)]
    sessions: usize,
    /// Item counts of the synthetic sets.
    #[arg(long, value_delimiter = ',', default_value = "8000,40000")]
    items: Vec<usize>,
    /// Settings to run (a, b, c, a-logq; see `gru4rec_setting`).
    #[arg(long, value_delimiter = ',', default_value = "a,b")]
    settings: Vec<String>,
    /// Epochs per setting.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Folder for generated data, prepared sets and runs.
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
    /// Folder to write gru4rec.json into.
    #[arg(long, default_value = "target/bench")]
    json: PathBuf,
    /// Also time each phase of the training steps (`seqrec_kernels::probe`):
    /// µs per step and the other cores' idle µs, printed per setting and
    /// written as `phases` in the JSON.
    #[arg(long)]
    phases: bool,
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
        BenchCommand::Gru4rec(a) => gru4rec(a),
        BenchCommand::Rating(a) => rating(a),
        BenchCommand::NextItem(a) => next_item(a),
        BenchCommand::Kt(a) => kt(a),
    }
}

fn ingest(a: IngestArgs) -> Result<()> {
    let rows = if a.quick { 200_000 } else { a.rows };
    let (recipe, out) = riiid_input(&a.work, rows, a.seed)?;
    let t = Instant::now();
    let summary = prepare_child(&recipe, &out)?;
    let seconds = t.elapsed().as_secs_f64();
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

/// The Riiid-schema parquet of `rows` rows for `seed` in `work` (generated
/// once, then kept), a recipe for it (last 10% of each learner test, the
/// 10% before validation) and the folder its prepared dataset goes to.
fn riiid_input(work: &Path, rows: u64, seed: u64) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let gen = seqrec_data::synth::kt::KtConfig { seed, ..Default::default() };
    let stem = format!("riiid-{rows}-seed{seed}-{}", config_tag(&gen)?);
    let input = work.join(format!("{stem}.parquet"));
    if !input.exists() {
        let t = Instant::now();
        seqrec_data::synth::kt::write_riiid_parquet(&input, rows, seed)
            .with_context(|| format!("generating {}", input.display()))?;
        eprintln!("generated {rows} rows in {:.1} s: {}", t.elapsed().as_secs_f64(), input.display());
    }
    let recipe = work.join(format!("riiid-{rows}.toml"));
    let text = format!(
        "name = \"riiid-synthetic-{rows}\"\nformat = \"riiid\"\ndir = \".\"\n\n[interactions]\npath = \"{}\"\n\n[split]\nkind = \"last_fraction\"\ntest = 0.1\nvalid = 0.1\n",
        input.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    std::fs::write(&recipe, text).with_context(|| format!("writing {}", recipe.display()))?;
    // Named after the input file, so that a prepared set of other data is never reused.
    Ok((recipe, work.join(format!("prepared-{stem}"))))
}

/// Eight hex digits of a hash (FNV-1a) of a generator configuration's JSON,
/// for the names of cached generated data.
fn config_tag<T: serde::Serialize>(config: &T) -> Result<String> {
    let json = serde_json::to_string(config).context("serialising a generator config")?;
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    Ok(format!("{:08x}", hash >> 32))
}

/// `seqrec data prepare RECIPE --out OUT --json` as a child process; its summary.
fn prepare_child(recipe: &Path, out: &Path) -> Result<Value> {
    use std::ffi::OsStr;
    child_json(&[
        OsStr::new("data"),
        OsStr::new("prepare"),
        recipe.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
        OsStr::new("--json"),
    ])
}

/// Writes `dir/<name>.json`.
pub fn write_json(dir: &Path, name: &str, value: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value)? + "\n";
    seqrec_data::io::write_text_atomic(&path, &text)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The benchmark settings of the GRU4Rec issue: (a) layers 100, batch 32,
/// n_sample 2048, cross-entropy, one-hot input; (b) layers 480, batch 48,
/// n_sample 2048, cross-entropy, constrained embedding; (c) as (a) with n_sample 0;
/// (a-logq) as (a) with logq 1 (the GPU issue's setting (a)).
fn gru4rec_setting(name: &str, quick: bool, epochs: usize) -> Result<String> {
    let n_sample = if quick { 64 } else { 2048 };
    let body = match name {
        "a" => format!("layers = [100]\nbatch_size = 32\nn_sample = {n_sample}\nconstrained_embedding = false\n"),
        "b" => format!("layers = [480]\nbatch_size = 48\nn_sample = {n_sample}\nconstrained_embedding = true\n"),
        "c" => "layers = [100]\nbatch_size = 32\nn_sample = 0\nconstrained_embedding = false\n".to_owned(),
        "a-logq" => {
            format!(
                "layers = [100]\nbatch_size = 32\nn_sample = {n_sample}\nconstrained_embedding = false\nlogq = 1.0\n"
            )
        }
        other => bail!("--settings: unknown setting `{other}`, expected a, b, c or a-logq"),
    };
    Ok(format!("{body}loss = \"cross-entropy\"\nn_epochs = {epochs}\nsample_store = 1000000\n"))
}

fn gru4rec(a: Gru4recArgs) -> Result<()> {
    use seqrec_data::synth::sessions::SessionsConfig;
    let (items, sessions) = if a.quick { (vec![500], 2_000) } else { (a.items.clone(), a.sessions) };
    let mut rows = Vec::new();
    for &n_items in &items {
        let name = format!("synth-{n_items}items-{sessions}s");
        let dir = a.work.join(&name);
        let prepared = a.work.join(format!("{name}-prepared"));
        let cfg = SessionsConfig { n_items, n_sessions: sessions, ..SessionsConfig::default() };
        if !dir.join("oracle.json").exists() {
            let data = cfg.generate()?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            data.write_gru4rec_tsv(&dir.join("sessions.tsv"))?;
            data.write_oracle_json(&dir.join("oracle.json"))?;
        }
        if !prepared.join("dataset.json").exists() {
            let text = "name = \"synth-sessions\"\nformat = \"gru4rec\"\n[interactions]\npath = \"sessions.tsv\"\n\
                        [split]\nkind = \"last_days\"\ndays = 1\n";
            let recipe =
                seqrec_data::recipe::Recipe::from_toml_str(text, &dir.join("recipe.toml"))?.with_dir(dir.clone());
            seqrec_data::prepare::prepare(&recipe, &prepared)?;
        }
        let oracle: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("oracle.json"))?)?;
        let data = seqrec_data::dataset::Dataset::open(&prepared)?;
        let train_events = data.stats().parts[0];
        for setting in &a.settings {
            let text = gru4rec_setting(setting, a.quick, a.epochs)?;
            let cfg = seqrec_train::Gru4RecConfig::from_toml_str(&text, Path::new(setting))?;
            let run_dir = a.work.join(format!("{name}-run-{setting}"));
            let _ = std::fs::remove_dir_all(&run_dir);
            let run = seqrec_train::run::RunDir::create(&run_dir)?;
            let opts =
                seqrec_train::gru4rec::TrainOptions { progress: false, device: crate::device()?, ..Default::default() };
            seqrec_kernels::probe::enable(a.phases);
            let _ = seqrec_kernels::probe::take();
            let out = seqrec_train::gru4rec::train(&cfg, &data, &run, &opts)?;
            seqrec_kernels::probe::enable(false);
            let phases = a.phases.then(|| phase_rows(&seqrec_kernels::probe::take()));
            let test = out.test.as_ref().context("the synthetic set has a test part")?;
            rows.push(json!({
                "setting": setting,
                "config": text,
                "dataset": name,
                "items": n_items,
                "train_events": train_events,
                "epochs": out.epochs,
                "train_events_per_s": out.train_events_per_s,
                "eval_events_per_s": out.eval_events_per_s,
                "recall@20": test.recall(20),
                "mrr@20": test.mrr(20),
                "oracle_recall@20": oracle["recall@20"],
                "oracle_mrr@20": oracle["mrr@20"],
                "threads": std::env::var("RAYON_NUM_THREADS").ok(),
                "device": crate::device_name(&opts.device),
                "phases": phases,
            }));
        }
    }
    println!(
        "{:<8} {:<28} {:>12} {:>12} {:>10} {:>8} {:>11} {:>9}",
        "setting", "dataset", "train ev/s", "eval ev/s", "Recall@20", "MRR@20", "oracle R@20", "oracle MRR"
    );
    for r in &rows {
        println!(
            "{:<8} {:<28} {:>12.0} {:>12.0} {:>10.4} {:>8.4} {:>11.4} {:>9.4}",
            r["setting"].as_str().unwrap_or(""),
            r["dataset"].as_str().unwrap_or(""),
            r["train_events_per_s"].as_f64().unwrap_or(f64::NAN),
            r["eval_events_per_s"].as_f64().unwrap_or(f64::NAN),
            r["recall@20"].as_f64().unwrap_or(f64::NAN),
            r["mrr@20"].as_f64().unwrap_or(f64::NAN),
            r["oracle_recall@20"].as_f64().unwrap_or(f64::NAN),
            r["oracle_mrr@20"].as_f64().unwrap_or(f64::NAN),
        );
    }
    for r in rows.iter().filter(|r| r["phases"].is_array()) {
        println!(
            "\nsetting {} on {}: µs per training step (other cores idle µs)",
            r["setting"].as_str().unwrap_or(""),
            r["dataset"].as_str().unwrap_or("")
        );
        let phases = r["phases"].as_array().map(Vec::as_slice).unwrap_or_default();
        let name_width =
            phases.iter().filter_map(|p| p["phase"].as_str()).map(|n| n.chars().count()).max().unwrap_or(0);
        for p in phases {
            println!(
                "  {:<name_width$} {:>9.1} {:>9.1}",
                p["phase"].as_str().unwrap_or(""),
                p["us_per_step"].as_f64().unwrap_or(f64::NAN),
                p["idle_us_per_step"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    write_json(&a.json, "gru4rec", &Value::Array(rows))
}

/// The probe's totals as JSON rows (means per step), with a `step` total last.
fn phase_rows(t: &seqrec_kernels::probe::Totals) -> Value {
    let per_step = |ns: u64| ns as f64 / 1e3 / t.steps.max(1) as f64;
    let mut rows: Vec<Value> = t
        .phases
        .iter()
        .map(|p| json!({"phase": p.name, "us_per_step": per_step(p.wall_ns), "idle_us_per_step": per_step(p.idle_ns)}))
        .collect();
    let (wall, idle) = t.phases.iter().fold((0, 0), |(w, i), p| (w + p.wall_ns, i + p.idle_ns));
    rows.push(
        json!({"phase": "step", "us_per_step": per_step(wall), "idle_us_per_step": per_step(idle), "steps": t.steps}),
    );
    Value::Array(rows)
}

/// The settings `--quick` trains BST with: the configured model at a size
/// that finishes in seconds in a debug build.
const QUICK_BST: &str = "len = 5\nembedding = 16\nheads = 2\nffn_dim = 32\nmlp = [32, 16, 8]\n";

fn rating(a: RatingArgs) -> Result<()> {
    use seqrec_train::rating::{train_rating, RatingConfig, RatingOptions};
    let recipe = seqrec_data::recipe::Recipe::load(&a.recipe)?;
    let prepared = a.work.join(format!("{}-prepared", recipe.name));
    let t = Instant::now();
    let meta = seqrec_data::prepare::prepare(&recipe, &prepared)?;
    let prepare_dataset_s = t.elapsed().as_secs_f64();
    let data = seqrec_data::dataset::Dataset::open(&prepared)?;
    let mut rows = Vec::new();
    for path in &a.configs {
        let epochs = if a.quick { Some(1) } else { a.epochs };
        let text = overridden_config(path, epochs, |table| {
            let bst = table.get("model").and_then(|m| m.as_str()) == Some("bst");
            Ok(if a.quick && bst { toml::from_str(QUICK_BST)? } else { toml::Table::new() })
        })?;
        let cfg = RatingConfig::from_toml_str(&text, path)?;
        let run_dir = a.work.join(format!("{}-{}", recipe.name, cfg.model));
        let _ = std::fs::remove_dir_all(&run_dir);
        let run = seqrec_train::run::RunDir::create(&run_dir)?;
        let opts = RatingOptions { device: crate::device()?, progress: false };
        let out = train_rating(&cfg, &data, &run, &opts)?;
        let test = out.test.clone().context("the dataset has a test part")?;
        rows.push(json!({
            "model": out.model,
            "config": path,
            "dataset": recipe.name,
            "split": out.split["kind"],
            "mae": test.mae,
            "mse": test.mse,
            "rmse": test.rmse,
            "test_ratings": test.n,
            "valid_mae": out.valid.as_ref().and_then(|v| v.mae),
            "epochs": out.epochs,
            "best_epoch": out.best_epoch,
            "seconds_per_epoch": out.seconds_per_epoch,
            "windows_seconds": out.prepare_seconds,
            "prepare_dataset_seconds": prepare_dataset_s,
            "parameters": out.parameters,
            "quick": a.quick,
        }));
    }
    println!(
        "{} ({}; {} ratings read, split {}):",
        recipe.name,
        a.recipe.display(),
        meta.rows_read,
        meta.split["kind"].as_str().unwrap_or("?")
    );
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>10} {:>7} {:>9} {:>10}",
        "model", "MAE", "MSE", "RMSE", "valid MAE", "epochs", "s/epoch", "windows s"
    );
    for r in &rows {
        println!(
            "{:<8} {:>8.4} {:>8.4} {:>8.4} {:>10.4} {:>7} {:>9.2} {:>10.3}",
            r["model"].as_str().unwrap_or(""),
            r["mae"].as_f64().unwrap_or(f64::NAN),
            r["mse"].as_f64().unwrap_or(f64::NAN),
            r["rmse"].as_f64().unwrap_or(f64::NAN),
            r["valid_mae"].as_f64().unwrap_or(f64::NAN),
            r["epochs"],
            r["seconds_per_epoch"].as_f64().unwrap_or(f64::NAN),
            r["windows_seconds"].as_f64().unwrap_or(f64::NAN),
        );
    }
    write_json(&a.json, "rating", &Value::Array(rows))
}

/// What `--quick` shrinks every next-item model to.
const QUICK_NEXT_ITEM: &str = "len = 10\nstride = 5\nembedding = 16\nlayers = [16]\nn_sample = 64\n";

/// A run config's text with `n_epochs` set (when given) and the keys that
/// `small` returns (given the file's table) put over the file's own.
fn overridden_config(
    path: &Path,
    epochs: Option<usize>,
    small: impl FnOnce(&toml::Table) -> Result<toml::Table>,
) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(n) = epochs {
        table.insert("n_epochs".into(), toml::Value::Integer(n as i64));
    }
    let extra = small(&table)?;
    table.extend(extra);
    Ok(toml::to_string(&table)?)
}

/// The keys of [`QUICK_NEXT_ITEM`] that apply to `model`'s config `table`.
fn quick_next_item(model: &str, table: &toml::Table) -> Result<toml::Table> {
    let small: toml::Table = toml::from_str(QUICK_NEXT_ITEM)?;
    Ok(small
        .into_iter()
        .filter(|(k, _)| match model {
            "gru4rec" => k == "n_sample" || (k == "layers" && table.contains_key("layers")),
            "sasrec" => k == "len" || k == "embedding" || (k == "stride" && table.contains_key("stride")),
            "emb-gru" => k != "n_sample" && k != "stride",
            _ => false,
        })
        .collect())
}

fn next_item(a: NextItemArgs) -> Result<()> {
    use seqrec_train::next_item::{train_next_item, NextItemConfig, NextItemOptions};
    let recipe = seqrec_data::recipe::Recipe::load(&a.recipe)?;
    let prepared = a.work.join(format!("{}-prepared", recipe.name));
    let meta = seqrec_data::prepare::prepare(&recipe, &prepared)?;
    let data = seqrec_data::dataset::Dataset::open(&prepared)?;
    let epochs = if a.quick { Some(2) } else { a.epochs };
    let mut rows = Vec::new();
    for path in &a.configs {
        let model = seqrec_train::config::config_model(path)?;
        let text = overridden_config(path, epochs, |table| {
            if a.quick {
                quick_next_item(&model, table)
            } else {
                Ok(toml::Table::new())
            }
        })?;
        let run_dir = a.work.join(format!("{}-{model}", recipe.name));
        let _ = std::fs::remove_dir_all(&run_dir);
        let run = seqrec_train::run::RunDir::create(&run_dir)?;
        let row = if model == "gru4rec" {
            let cfg = seqrec_train::Gru4RecConfig::from_toml_str(&text, path)?;
            let opts =
                seqrec_train::gru4rec::TrainOptions { progress: false, device: crate::device()?, ..Default::default() };
            let out = seqrec_train::gru4rec::train(&cfg, &data, &run, &opts)?;
            let test = out.test.clone().context("the dataset has a test part")?;
            let lines = std::fs::read_to_string(run.path("metrics.jsonl"))?;
            let secs: Vec<f64> = lines
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["seconds"].as_f64())
                .collect();
            let eval_seconds = out.eval_events_per_s.map(|r| test.n as f64 / r);
            next_item_row(
                "gru4rec",
                path,
                &test,
                out.epochs,
                out.best_epoch,
                mean(&secs),
                eval_seconds,
                "full ranking over every item",
            )
        } else {
            let cfg = NextItemConfig::from_toml_str(&text, path)?;
            let opts = NextItemOptions { device: crate::device()?, progress: false };
            let out = train_next_item(&cfg, &data, &run, &opts)?;
            let test = out.test.clone().context("the dataset has a test part")?;
            let mut row = next_item_row(
                &out.model,
                path,
                &test,
                out.epochs,
                out.best_epoch,
                out.seconds_per_epoch,
                Some(out.eval_seconds),
                &out.protocol,
            );
            row["valid_ndcg@10"] = json!(out.valid.as_ref().and_then(|v| v.ndcg(10)));
            if let Some(x) = &out.test_excluding_history {
                row["hr@10_excluding_history"] = json!(x.recall(10));
                row["ndcg@10_excluding_history"] = json!(x.ndcg(10));
                row["mrr@10_excluding_history"] = json!(x.mrr(10));
            }
            row
        };
        rows.push(row);
    }
    println!(
        "{} ({}; {} events read, split {}), test, chosen by validation NDCG@10:",
        recipe.name,
        a.recipe.display(),
        meta.rows_read,
        meta.split["kind"].as_str().unwrap_or("?")
    );
    println!(
        "{:<13} {:>7} {:>8} {:>7} {:>10} {:>10} {:>7} {:>6} {:>9} {:>8}",
        "model", "HR@10", "NDCG@10", "MRR@10", "HR@10 -h", "NDCG@10 -h", "epochs", "best", "s/epoch", "eval s"
    );
    for r in &rows {
        println!(
            "{:<13} {:>7.4} {:>8.4} {:>7.4} {:>10.4} {:>10.4} {:>7} {:>6} {:>9.2} {:>8.2}",
            r["model"].as_str().unwrap_or(""),
            r["hr@10"].as_f64().unwrap_or(f64::NAN),
            r["ndcg@10"].as_f64().unwrap_or(f64::NAN),
            r["mrr@10"].as_f64().unwrap_or(f64::NAN),
            r["hr@10_excluding_history"].as_f64().unwrap_or(f64::NAN),
            r["ndcg@10_excluding_history"].as_f64().unwrap_or(f64::NAN),
            r["epochs"],
            r["best_epoch"],
            r["seconds_per_epoch"].as_f64().unwrap_or(f64::NAN),
            r["eval_seconds"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("(-h: the user's earlier items removed from the candidates, reported beside full ranking)");
    write_json(&a.json, "next-item", &Value::Array(rows))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[allow(clippy::too_many_arguments)]
fn next_item_row(
    model: &str,
    config: &Path,
    test: &seqrec_eval::RankingMetrics,
    epochs: usize,
    best_epoch: usize,
    seconds_per_epoch: f64,
    eval_seconds: Option<f64>,
    protocol: &str,
) -> Value {
    let at = |k: usize| test.at_k(k);
    json!({
        "model": model,
        "config": config,
        "protocol": protocol,
        "hr@5": at(5).map(|m| m.recall),
        "ndcg@5": at(5).map(|m| m.ndcg),
        "mrr@5": at(5).map(|m| m.mrr),
        "hr@10": at(10).map(|m| m.recall),
        "ndcg@10": at(10).map(|m| m.ndcg),
        "mrr@10": at(10).map(|m| m.mrr),
        "hr@20": at(20).map(|m| m.recall),
        "ndcg@20": at(20).map(|m| m.ndcg),
        "mrr@20": at(20).map(|m| m.mrr),
        "test_targets": test.n,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "seconds_per_epoch": seconds_per_epoch,
        "eval_seconds": eval_seconds,
    })
}

/// What `--quick` shrinks the knowledge-tracing models to.
const QUICK_KT: &str = "len = 16\nembedding = 8\nmlp = [16]\nhidden = 16\ninput_embedding = 8\ntag_embedding = 4\n";

/// Runs `seqrec <args> --device <this process's>` as a child process and reads the JSON it prints.
fn child_json(args: &[&std::ffi::OsStr]) -> Result<Value> {
    let exe = std::env::current_exe().context("locating the seqrec binary")?;
    let device = crate::DEVICE_CHOICE.get().copied().unwrap_or_default().to_string();
    let output = Command::new(exe).args(args).args(["--device", &device]).output().context("running seqrec")?;
    if !output.status.success() {
        bail!("seqrec {:?} failed: {}", args, String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("reading the JSON summary")
}

/// `seqrec train --json` (with `--stream` when asked) of `config` on `data`
/// into a fresh `run` directory, as a child process; its JSON summary.
fn train_child(config: &Path, data: &Path, run: &Path, stream: bool) -> Result<Value> {
    use std::ffi::OsStr;
    let _ = std::fs::remove_dir_all(run);
    let mut args = vec![OsStr::new("train")];
    if stream {
        args.push(OsStr::new("--stream"));
    }
    args.extend([OsStr::new("--config"), config.as_os_str(), OsStr::new("--data"), data.as_os_str()]);
    args.extend([OsStr::new("--run"), run.as_os_str(), OsStr::new("--json")]);
    child_json(&args)
}

/// A knowledge-tracing run config with `truth` and the overrides, written
/// into the work folder; returns its path.
fn kt_config(a: &KtArgs, path: &Path, epochs: Option<usize>, truth: Option<&Path>, tag: &str) -> Result<PathBuf> {
    let text = overridden_config(path, epochs, |table| {
        let mut extra: toml::Table = if a.quick { toml::from_str(QUICK_KT)? } else { toml::Table::new() };
        if table.get("model").and_then(|m| m.as_str()) == Some("question-mean") {
            extra.clear();
        }
        // NeuMF pre-trained from `runs/<config stem>`: use this bench's run of that config.
        for key in ["pretrained_gmf", "pretrained_mlp"] {
            if let Some(run) = table.get(key).and_then(|v| v.as_str()) {
                let stem = Path::new(run).file_name().and_then(|n| n.to_str()).unwrap_or(run);
                let recipe = tag.strip_suffix(tag_stem(path).as_str()).unwrap_or(tag);
                let here = a.work.join(format!("kt-run-{recipe}{stem}"));
                extra.insert(key.into(), toml::Value::String(here.display().to_string()));
            }
        }
        match truth {
            Some(t) => {
                extra.insert("truth".into(), toml::Value::String(t.display().to_string()));
            }
            None => {
                extra.insert("patience".into(), toml::Value::Integer(0));
                extra.insert("validate_every".into(), toml::Value::Integer(0));
            }
        }
        Ok(extra)
    })?;
    let mut table: toml::Table = toml::from_str(&text)?;
    if truth.is_none() {
        table.remove("truth");
    }
    let out = a.work.join(format!("kt-{tag}.toml"));
    std::fs::write(&out, toml::to_string(&table)?).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// The file stem of a config path (the tail of its bench tag).
fn tag_stem(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned()
}

fn kt_row(v: &Value, dataset: &str, config: &Path, quick: bool) -> Value {
    json!({
        "model": v["model"],
        "head": v["head"],
        "dataset": dataset,
        "config": config,
        "auc": v["test"]["metrics"]["auc"],
        "oracle_auc": v["oracle_test_auc"],
        "logloss": v["test"]["metrics"]["log_loss"],
        "accuracy": v["test"]["metrics"]["accuracy"],
        "question_mean_auc": v["question_mean_test"]["metrics"]["auc"],
        "valid_auc": v["valid"]["metrics"]["auc"],
        "test_answers": v["test"]["metrics"]["n"],
        "events_per_s": v["events_per_s"],
        "peak_rss_bytes": v["peak_rss_bytes"],
        "fraction_used": v["test"]["fraction_used"],
        "fraction_used_train": v["fraction_used_train"],
        "events": v["events"],
        "epochs": v["epochs"],
        "best_epoch": v["best_epoch"],
        "seconds_per_epoch": v["seconds_per_epoch"],
        "eval_seconds": v["eval_seconds"],
        "parameters": v["parameters"],
        "quick": quick,
    })
}

fn kt(a: KtArgs) -> Result<()> {
    use std::ffi::OsStr;
    std::fs::create_dir_all(&a.work).with_context(|| format!("creating {}", a.work.display()))?;
    let mut gen = seqrec_data::synth::kt::KtConfig { seed: a.seed, ..Default::default() };
    gen.n_learners = a.learners.unwrap_or(if a.quick { 400 } else { gen.n_learners });
    // The tag names the generator's parameters: data cached from other defaults is never reused.
    let raw = a.work.join(format!("kt-synth-{}-seed{}-{}", gen.n_learners, a.seed, config_tag(&gen)?));
    if !raw.join("truth.csv").exists() {
        let data = gen.generate()?;
        data.write_riiid_csv(&raw)?;
    }
    let oracle: Value = serde_json::from_slice(&std::fs::read(raw.join("oracle.json"))?)?;
    eprintln!(
        "generator: oracle test AUC {:.4}, static oracle (knowledge held at each learner's mean) {:.4}, \
         question mean {:.4} on its last-fraction test answers",
        oracle["auc_test"].as_f64().unwrap_or(f64::NAN),
        oracle["static_auc_test"].as_f64().unwrap_or(f64::NAN),
        oracle["baseline_question_mean_auc_test"].as_f64().unwrap_or(f64::NAN)
    );
    let epochs = if a.quick { Some(1) } else { a.epochs };
    let mut rows = Vec::new();
    for recipe_path in &a.recipes {
        let recipe = seqrec_data::recipe::Recipe::load(recipe_path)?.with_dir(raw.clone());
        let prepared = a.work.join(format!("{}-{}-seed{}-prepared", recipe.name, gen.n_learners, a.seed));
        let meta = seqrec_data::prepare::prepare(&recipe, &prepared)?;
        let split = meta.split["kind"].as_str().unwrap_or("?").to_owned();
        let dataset = format!("{} ({} learners, {} events, {split})", recipe.name, gen.n_learners, meta.counts.events);
        for path in &a.configs {
            // Runs are named by config file, so that e.g. NCF's heads keep their own runs.
            let model = seqrec_train::config::config_model(path)?;
            let stem = path.file_stem().and_then(OsStr::to_str).unwrap_or(&model);
            let tag = format!("{}-{stem}", recipe.name);
            let cfg = kt_config(&a, path, epochs, Some(&raw.join("truth.csv")), &tag)?;
            let v = train_child(&cfg, &prepared, &a.work.join(format!("kt-run-{tag}")), false)?;
            rows.push(kt_row(&v, &dataset, path, a.quick));
        }
    }
    let rows_scale = if a.quick { 200_000 } else { a.rows };
    if rows_scale > 0 {
        let (recipe, out) = riiid_input(&a.work, rows_scale, a.seed)?;
        if !out.join("dataset.json").exists() {
            prepare_child(&recipe, &out)?;
        }
        let cfg = kt_config(&a, &a.scale_config, Some(1), None, "scale")?;
        let v = train_child(&cfg, &out, &a.work.join("kt-run-scale"), true)?;
        rows.push(kt_row(&v, &format!("riiid-synthetic-{rows_scale} (streamed)"), &a.scale_config, a.quick));
    }
    println!(
        "{:<24} {:<64} {:>7} {:>7} {:>7} {:>8} {:>10} {:>9} {:>6} {:>8}",
        "config", "dataset", "AUC", "oracle", "ratio", "logloss", "events/s", "RSS MiB", "used", "epochs"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<24} {:<64} {:>7.4} {:>7.4} {:>7.4} {:>8.4} {:>10.0} {:>9.0} {:>6.4} {:>8}",
            tag_stem(Path::new(r["config"].as_str().unwrap_or(""))),
            r["dataset"].as_str().unwrap_or(""),
            f("auc"),
            f("oracle_auc"),
            f("auc") / f("oracle_auc"),
            f("logloss"),
            f("events_per_s"),
            f("peak_rss_bytes") / 1048576.0,
            f("fraction_used"),
            r["epochs"],
        );
    }
    write_json(&a.json, "kt", &Value::Array(rows))
}
