//! `seqrec train | evaluate | recommend` for GRU4Rec runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::{Array, Float64Array, Int64Array, LargeStringArray, StringArray};
use clap::Args;
use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;
use seqrec_data::split::Part;
use seqrec_data::table::col;
use seqrec_train::gru4rec::{evaluate_run, load_run, recommend, train, TrainOptions};
use seqrec_train::run::RunDir;
use seqrec_train::{Gru4RecConfig, RunConfig};

/// `seqrec train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Prepared dataset directory (`seqrec data prepare`).
    #[arg(long)]
    data: PathBuf,
    /// Run directory (config, metrics.jsonl, checkpoints).
    #[arg(long)]
    run: PathBuf,
    /// Run config (TOML, the papers' keys); not needed with --resume.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --run from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// Start from the best weights of this run (retraining on new sessions).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Knowledge tracing: read the event files one at a time (bounded memory).
    #[arg(long)]
    stream: bool,
}

/// `seqrec evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    run: PathBuf,
    /// Prepared dataset directory (the one the run was trained on).
    #[arg(long)]
    data: PathBuf,
    /// Which part to rank: test or valid.
    #[arg(long, default_value = "test")]
    part: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Knowledge-tracing runs: read the event files one at a time.
    #[arg(long)]
    stream: bool,
}

/// `seqrec recommend`.
#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    run: PathBuf,
    /// Sessions to recommend for (one event per line; sessions never seen in training are fine).
    #[arg(long)]
    input: PathBuf,
    /// Layout of --input: gru4rec (SessionId, ItemId, Time TSV), csv, parquet, …
    #[arg(long, default_value = "gru4rec")]
    format: String,
    /// Items per session.
    #[arg(long, short, default_value_t = 20)]
    k: usize,
    /// Output file: .csv, .json or .parquet.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    // `--resume` without `--config`: the run's own config says which trainer.
    let own = a.run.join("config.toml");
    let which = a.config.clone().or_else(|| (a.resume && own.exists()).then_some(own));
    if let Some(path) = &which {
        if seqrec_train::kt::KT_MODELS.contains(&seqrec_train::config::config_model(path)?.as_str()) {
            return run_train_kt(&a, path);
        }
    }
    if a.stream {
        bail!(
            "--stream: only knowledge-tracing models (model = {:?}) train from streamed event files",
            seqrec_train::kt::KT_MODELS
        );
    }
    let data = Dataset::open(&a.data).with_context(|| format!("opening dataset {}", a.data.display()))?;
    if let Some(path) = &a.config {
        let model = seqrec_train::config::config_model(path)?;
        if seqrec_train::rating::RATING_MODELS.contains(&model.as_str()) {
            return run_train_rating(&a, path, &data);
        }
        if seqrec_train::next_item::NEXT_ITEM_MODELS.contains(&model.as_str()) {
            return run_train_next_item(&a, path, &data);
        }
    }
    let (cfg, run) = if a.resume {
        let run = RunDir::open(&a.run)?;
        let cfg = Gru4RecConfig::load(&run.path("config.toml"))?;
        if let Some(path) = &a.config {
            let given = Gru4RecConfig::load(path)?;
            if given != cfg {
                bail!(
                    "--resume: {} differs from the run's config.toml; resume uses the run's own config",
                    path.display()
                );
            }
        }
        (cfg, run)
    } else {
        let cfg = match &a.config {
            Some(path) => Gru4RecConfig::load(path)?,
            None => Gru4RecConfig::default(),
        };
        (cfg, RunDir::create(&a.run)?)
    };
    let opts =
        TrainOptions { resume: a.resume, init_from: a.init_from, device: crate::device()?, ..TrainOptions::default() };
    let outcome = train(&cfg, &data, &run, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "trained {} epochs ({:.0} events/s); kept epoch {}{}",
            outcome.epochs,
            outcome.train_events_per_s,
            outcome.best_epoch,
            outcome.best_valid.map(|v| format!(" (valid {} {v:.4})", cfg.valid_metric)).unwrap_or_default()
        );
        if let Some(t) = &outcome.test {
            print_metrics("test", t);
        }
        println!("run directory: {}", run.dir.display());
    }
    Ok(())
}

/// `seqrec train` with a rating config (median, MF, BST).
fn run_train_rating(a: &TrainArgs, config: &Path, data: &Dataset) -> Result<()> {
    if a.resume || a.init_from.is_some() {
        bail!("--resume and --init-from are not available for rating models yet; train anew");
    }
    let cfg = seqrec_train::rating::RatingConfig::load(config)?;
    let run = RunDir::create(&a.run)?;
    let opts = seqrec_train::rating::RatingOptions { device: crate::device()?, progress: true };
    let outcome = seqrec_train::rating::train_rating(&cfg, data, &run, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "{}: {} epochs ({:.1} s/epoch), kept epoch {}; split: {}",
            outcome.model,
            outcome.epochs,
            outcome.seconds_per_epoch,
            outcome.best_epoch,
            outcome.split.get("kind").and_then(|k| k.as_str()).unwrap_or("?")
        );
        for (label, m) in [("valid", &outcome.valid), ("test", &outcome.test)] {
            if let Some(m) = m {
                println!(
                    "{label}: MAE {:.4}  MSE {:.4}  RMSE {:.4}  ({} ratings)",
                    m.mae.unwrap_or(f64::NAN),
                    m.mse.unwrap_or(f64::NAN),
                    m.rmse.unwrap_or(f64::NAN),
                    m.n
                );
            }
        }
        println!("run directory: {}", run.dir.display());
    }
    Ok(())
}

/// `seqrec train` with a next-item config (SASRec, embedding-GRU, most popular).
fn run_train_next_item(a: &TrainArgs, config: &Path, data: &Dataset) -> Result<()> {
    use seqrec_train::next_item::{train_next_item, NextItemConfig, NextItemOptions};
    if a.resume || a.init_from.is_some() {
        bail!("--resume and --init-from are not available for next-item window models yet; train anew");
    }
    let cfg = NextItemConfig::load(config)?;
    let run = RunDir::create(&a.run)?;
    let opts = NextItemOptions { device: crate::device()?, progress: true };
    let outcome = train_next_item(&cfg, data, &run, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "{}: {} epochs ({:.1} s/epoch), kept epoch {}; {}",
            outcome.model, outcome.epochs, outcome.seconds_per_epoch, outcome.best_epoch, outcome.protocol
        );
        for (label, m) in [("valid", &outcome.valid), ("test", &outcome.test)] {
            if let Some(m) = m {
                print_metrics(label, m);
            }
        }
        println!("one test evaluation pass: {:.2} s; run directory: {}", outcome.eval_seconds, run.dir.display());
    }
    Ok(())
}

fn run_train_kt(a: &TrainArgs, config: &Path) -> Result<()> {
    use seqrec_train::kt::{train_kt, KtConfig, KtOptions};
    if a.init_from.is_some() {
        bail!("--init-from is not available for knowledge-tracing models (NeuMF takes `pretrained_gmf` / `pretrained_mlp`)");
    }
    let (cfg, run) = if a.resume {
        let run = RunDir::open(&a.run)?;
        let cfg = KtConfig::load(&run.path("config.toml"))?;
        if KtConfig::load(config)? != cfg {
            bail!(
                "--resume: {} differs from the run's config.toml; resume uses the run's own config",
                config.display()
            );
        }
        (cfg, run)
    } else {
        (KtConfig::load(config)?, RunDir::create(&a.run)?)
    };
    let data = if a.stream { Dataset::open_without_events(&a.data)? } else { Dataset::open(&a.data)? };
    let opts = KtOptions { device: crate::device()?, progress: !a.json, stream: a.stream, resume: a.resume };
    let o = train_kt(&cfg, &data, &run, &opts).with_context(|| format!("training on {}", a.data.display()))?;
    if a.json {
        let mut v = serde_json::to_value(&o)?;
        v["peak_rss_bytes"] = serde_json::json!(crate::resources::peak_rss_bytes());
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} ({}): {} epochs ({:.1} s/epoch, {:.0} events/s), kept epoch {}; training answers used {:.4}",
        o.model, o.head, o.epochs, o.seconds_per_epoch, o.events_per_s, o.best_epoch, o.fraction_used_train
    );
    print_kt_metrics("valid", &o.valid);
    print_kt_metrics("test", &o.test);
    print_kt_metrics("question-mean test", &o.question_mean_test);
    if let Some(auc) = o.oracle_test_auc {
        println!(
            "oracle test AUC {auc:.4} (model / oracle {:.4})",
            o.test.as_ref().and_then(|t| t.metrics.auc).unwrap_or(f64::NAN) / auc
        );
    }
    println!("run directory: {}", run.dir.display());
    Ok(())
}

/// The `--part` argument.
fn parse_part(part: &str) -> Result<Part> {
    match part {
        "test" => Ok(Part::Test),
        "valid" => Ok(Part::Valid),
        other => bail!("--part: found `{other}`, expected test or valid"),
    }
}

fn print_metrics(label: &str, m: &seqrec_eval::RankingMetrics) {
    for at in &m.at {
        println!(
            "{label}: Recall@{k} {:.4}  MRR@{k} {:.4}  NDCG@{k} {:.4}  ({} targets)",
            at.recall,
            at.mrr,
            at.ndcg,
            m.n,
            k = at.k
        );
    }
}

pub fn run_evaluate(a: EvaluateArgs) -> Result<()> {
    let part = parse_part(&a.part)?;
    let config = a.run.join("config.toml");
    let model = if config.exists() { seqrec_train::config::config_model(&config)? } else { "gru4rec".into() };
    if seqrec_train::kt::KT_MODELS.contains(&model.as_str()) {
        return run_evaluate_kt(&a, part);
    }
    if model != "gru4rec" {
        bail!(
            "{}: `seqrec evaluate` reads GRU4Rec and knowledge-tracing runs; this run's model is `{model}`, whose \
             validation and test metrics `seqrec train` wrote to results.json",
            a.run.display()
        );
    }
    if a.stream {
        bail!("--stream: only knowledge-tracing runs evaluate from streamed event files");
    }
    let loaded = load_run(&a.run, &crate::device()?)?;
    let data = Dataset::open(&a.data).with_context(|| format!("opening dataset {}", a.data.display()))?;
    let m = evaluate_run(&loaded, &data, part)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print_metrics(&a.part, &m);
    }
    Ok(())
}

fn run_evaluate_kt(a: &EvaluateArgs, part: Part) -> Result<()> {
    use seqrec_train::kt::{evaluate_kt_run, KtOptions};
    let data = if a.stream { Dataset::open_without_events(&a.data)? } else { Dataset::open(&a.data)? };
    let opts = KtOptions { stream: a.stream, device: crate::device()?, ..KtOptions::default() };
    let e = evaluate_kt_run(&a.run, &data, &opts).with_context(|| format!("evaluating {}", a.run.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!("{} ({}) from {} on {}", e.model, e.head, e.run_dir.display(), e.dataset);
    let (label, m) = if part == Part::Test { ("test", &e.test) } else { ("valid", &e.valid) };
    print_kt_metrics(label, m);
    if part == Part::Test {
        print_kt_metrics("question-mean test", &e.question_mean_test);
        if let Some(auc) = e.oracle_test_auc {
            println!("oracle test AUC {auc:.4}");
        }
    }
    Ok(())
}

/// One line of knowledge-tracing metrics.
fn print_kt_metrics(label: &str, m: &Option<seqrec_train::kt::KtPartMetrics>) {
    if let Some(m) = m {
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.4}"));
        println!(
            "{label}: AUC {}  log-loss {}  accuracy {}  ({} answers, fraction used {:.4})",
            f(m.metrics.auc),
            f(m.metrics.log_loss),
            f(m.metrics.accuracy),
            m.metrics.n,
            m.fraction_used
        );
    }
}

/// Raw string of row `i` of a key column.
fn key_at(a: &dyn Array, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<Int64Array>() {
        return Some(x.value(i).to_string());
    }
    if let Some(x) = any.downcast_ref::<StringArray>() {
        return Some(x.value(i).to_owned());
    }
    if let Some(x) = any.downcast_ref::<LargeStringArray>() {
        return Some(x.value(i).to_owned());
    }
    None
}

fn time_at(a: Option<&dyn Array>, i: usize) -> i64 {
    let Some(a) = a else { return 0 };
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<Int64Array>() {
        return x.value(i);
    }
    if let Some(x) = any.downcast_ref::<Float64Array>() {
        return x.value(i) as i64;
    }
    0
}

/// An event of a session being read: time, position in the file, raw item.
type TimedItem = (i64, usize, String);

/// Sessions of a file (key, raw items in time order), in order of first appearance.
fn read_sessions(path: &Path, format: &str) -> Result<Vec<(String, Vec<String>)>> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().context("--input: expected a file")?.to_string_lossy().to_string();
    let text = format!("name = \"recommend-input\"\nformat = \"{format}\"\n[interactions]\npath = \"{name}\"\n");
    let recipe = Recipe::from_toml_str(&text, &dir.join("recommend.toml"))?.with_dir(dir);
    let mut index = std::collections::HashMap::new();
    let mut sessions: Vec<(String, Vec<TimedItem>)> = Vec::new();
    let mut n = 0usize;
    for batch in seqrec_data::read::read_interactions(&recipe.interactions)? {
        let batch = batch?;
        let seq = batch.column_by_name(col::SEQ).context("input has no session column")?;
        let item = batch.column_by_name(col::ITEM).context("input has no item column")?;
        let time = batch.column_by_name(col::TIME);
        for i in 0..batch.num_rows() {
            let (Some(s), Some(it)) = (key_at(seq.as_ref(), i), key_at(item.as_ref(), i)) else { continue };
            let slot = *index.entry(s.clone()).or_insert_with(|| {
                sessions.push((s, Vec::new()));
                sessions.len() - 1
            });
            sessions[slot].1.push((time_at(time.map(|t| t.as_ref()), i), n, it));
            n += 1;
        }
    }
    if n == 0 {
        bail!("{}: no events, expected at least one session", path.display());
    }
    Ok(sessions
        .into_iter()
        .map(|(k, mut ev)| {
            ev.sort_by_key(|&(t, i, _)| (t, i));
            (k, ev.into_iter().map(|(_, _, it)| it).collect())
        })
        .collect())
}

pub fn run_recommend(a: RecommendArgs) -> Result<()> {
    let loaded = load_run(&a.run, &crate::device()?)?;
    let sessions = read_sessions(&a.input, &a.format)?;
    let recs = recommend(&loaded, &sessions, a.k, loaded.config.eval_batch_size)?;
    if recs.skipped_events > 0 || recs.skipped_sessions > 0 {
        tracing::warn!(
            "{} events with items unknown to the model skipped; {} sessions had no known item and get no recommendation",
            recs.skipped_events,
            recs.skipped_sessions
        );
    }
    write_recs(&a.out, &recs)?;
    println!("{} sessions → {}", recs.sessions.len(), a.out.display());
    Ok(())
}

fn write_recs(out: &Path, recs: &seqrec_train::gru4rec::Recommendations) -> Result<()> {
    use arrow_array::{Float32Array, RecordBatch, UInt32Array};
    use std::sync::Arc;
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "json" => {
            let text = serde_json::to_string_pretty(recs)? + "\n";
            seqrec_data::io::write_text_atomic(out, &text)?;
        }
        "csv" => {
            let mut text = String::from("session,rank,item,score\n");
            for r in &recs.sessions {
                for (i, (item, score)) in r.items.iter().zip(&r.scores).enumerate() {
                    text.push_str(&format!("{},{},{},{}\n", r.session, i + 1, item, score));
                }
            }
            seqrec_data::io::write_text_atomic(out, &text)?;
        }
        "parquet" => {
            let (mut s, mut rank, mut item, mut score) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for r in &recs.sessions {
                for (i, (it, sc)) in r.items.iter().zip(&r.scores).enumerate() {
                    s.push(r.session.clone());
                    rank.push(i as u32 + 1);
                    item.push(it.clone());
                    score.push(*sc);
                }
            }
            let batch = RecordBatch::try_from_iter([
                ("session", Arc::new(StringArray::from(s)) as Arc<dyn Array>),
                ("rank", Arc::new(UInt32Array::from(rank)) as Arc<dyn Array>),
                ("item", Arc::new(StringArray::from(item)) as Arc<dyn Array>),
                ("score", Arc::new(Float32Array::from(score)) as Arc<dyn Array>),
            ])?;
            seqrec_data::persist::write_parquet(out, &batch)?;
        }
        _ => bail!("--out {}: expected a .csv, .json or .parquet file", out.display()),
    }
    Ok(())
}

/// `seqrec baseline`.
#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Prepared dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// Which part to rank: test or valid.
    #[arg(long, default_value = "test")]
    part: String,
    /// Cut-off K.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Most-popular and first-order Markov baselines on a prepared dataset,
/// ranked exactly as the models are (all items, ties at the median).
pub fn run_baseline(a: BaselineArgs) -> Result<()> {
    use seqrec_models::baseline::{Markov, MostPopular};
    use seqrec_models::next_item::{evaluate_sessions, EvalConfig};
    let part = parse_part(&a.part)?;
    let data = Dataset::open(&a.data).with_context(|| format!("opening dataset {}", a.data.display()))?;
    let n_ids = data.vocabs.get("item").context("the dataset has no item vocabulary")?.n_ids();
    let (store, parts) = (&data.events.store, &data.events.parts);
    let cfg = EvalConfig { ks: vec![a.k], tie_mode: seqrec_eval::TieMode::Median };
    let mut pop = MostPopular::fit(store, parts, n_ids)?;
    let mut markov = Markov::fit(store, parts, n_ids)?;
    let pop_m = evaluate_sessions(store, parts, part, &mut pop, 512, &cfg)?;
    let markov_m = evaluate_sessions(store, parts, part, &mut markov, 512, &cfg)?;
    if a.json {
        println!("{}", serde_json::json!({ "most_popular": pop_m, "markov": markov_m }));
    } else {
        print_metrics("most popular", &pop_m);
        print_metrics("markov", &markov_m);
    }
    Ok(())
}
