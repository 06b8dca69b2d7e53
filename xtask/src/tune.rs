//! `cargo xtask tune [GRID]`: a hyper-parameter search, chosen on validation.
//!
//! A grid file names a base run config, a dataset recipe with a validation
//! part, and trials, each a name plus the keys it changes:
//!
//! ```toml
//! base = "configs/gru4rec-synth.toml"
//! data = "datasets/synth-sessions-tune.toml"
//! generate = "sessions"            # optional: `seqrec data synth sessions` first
//!
//! [common]                          # optional: keys every trial sets
//! n_epochs = 20
//!
//! [[trial]]
//! name = "base"
//!
//! [[trial]]
//! name = "units-200"
//! layers = [200]
//! ```
//!
//! Each trial's config (the base table, then `common`'s keys, then the
//! trial's own, each replacing what was there) is written to
//! `target/tune/<grid>/<name>.toml` and trained with `seqrec train` into
//! `runs/tune/<grid>/<name>`; a trial whose config text
//! is unchanged and whose run finished is not trained again. The trials are
//! ranked by the base's validation metric (the best epoch's value, the
//! weights kept), and their test metrics are printed beside it, so a choice
//! is made without looking at the test part. Results go to
//! `target/tune/<grid>.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{at20, read_json, seqrec, SYNTH_SESSIONS};

/// The grid used when none is given.
const DEFAULT_GRID: &str = "configs/tune/gru4rec-synth.toml";

/// A trial: its name and the keys it sets.
#[derive(Debug)]
struct Trial {
    name: String,
    keys: toml::Table,
}

/// What a finished trial reports.
#[derive(Debug)]
struct Outcome {
    name: String,
    /// The trial's merged config.
    config: PathBuf,
    valid: f64,
    best_epoch: u64,
    epochs: u64,
    test_recall: f64,
    test_mrr: f64,
    train_events_per_s: f64,
    seconds: Option<f64>,
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>().with_context(|| format!("{}: not a TOML table", path.display()))
}

fn take_str(grid: &mut toml::Table, key: &str, path: &Path) -> Result<Option<String>> {
    match grid.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("{}: key `{key}`: expected a string, found {}", path.display(), other.type_str()),
    }
}

/// A parsed grid file.
#[derive(Debug)]
struct Grid {
    /// Path of the base run config.
    base: String,
    /// Path of the dataset recipe.
    data: String,
    /// `generate = "sessions"`: generate the synthetic sessions first.
    generate_sessions: bool,
    /// Keys every trial sets.
    common: toml::Table,
    trials: Vec<Trial>,
}

/// Parses a grid file.
fn parse_grid(path: &Path) -> Result<Grid> {
    let mut grid = read_table(path)?;
    let base = take_str(&mut grid, "base", path)?
        .with_context(|| format!("{}: key `base` (the run config the trials change) is missing", path.display()))?;
    let data = take_str(&mut grid, "data", path)?.with_context(|| {
        format!("{}: key `data` (a dataset recipe with a validation part) is missing", path.display())
    })?;
    let generate_sessions = match take_str(&mut grid, "generate", path)?.as_deref() {
        None => false,
        Some("sessions") => true,
        Some(g) => bail!("{}: key `generate`: expected \"sessions\", found \"{g}\"", path.display()),
    };
    let common = match grid.remove("common") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(other) => bail!("{}: key `common`: expected a table, found {}", path.display(), other.type_str()),
    };
    let trials = match grid.remove("trial") {
        Some(toml::Value::Array(a)) => a,
        Some(other) => bail!("{}: key `trial`: expected [[trial]] tables, found {}", path.display(), other.type_str()),
        None => bail!("{}: no [[trial]] tables", path.display()),
    };
    if let Some(key) = grid.keys().next() {
        bail!("{}: unknown key `{key}` (expected base, data, generate, common, trial)", path.display());
    }
    let mut out: Vec<Trial> = Vec::with_capacity(trials.len());
    for (i, t) in trials.into_iter().enumerate() {
        let toml::Value::Table(mut keys) = t else {
            bail!("{}: trial {}: expected a table", path.display(), i + 1);
        };
        let name = take_str(&mut keys, "name", path)?
            .with_context(|| format!("{}: trial {}: key `name` is missing", path.display(), i + 1))?;
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            bail!("{}: trial {}: name `{name}`: expected letters, digits, `.`, `_` or `-`", path.display(), i + 1);
        }
        if out.iter().any(|o| o.name == name) {
            bail!("{}: trial {}: name `{name}` is used twice", path.display(), i + 1);
        }
        out.push(Trial { name, keys });
    }
    for (what, keys) in std::iter::once(("common".to_owned(), &common))
        .chain(out.iter().map(|t| (format!("trial `{}`", t.name), &t.keys)))
    {
        if keys.contains_key("valid_metric") {
            bail!(
                "{}: {what}: key `valid_metric` belongs in the base (trials are ranked by one metric)",
                path.display()
            );
        }
    }
    Ok(Grid { base, data, generate_sessions, common, trials: out })
}

/// The base config, then the common keys, then the trial's, each replacing what was there.
fn trial_config(base: &toml::Table, common: &toml::Table, trial: &Trial) -> toml::Table {
    let mut config = base.clone();
    for (k, v) in common.iter().chain(&trial.keys) {
        config.insert(k.clone(), v.clone());
    }
    config
}

pub fn tune(rest: &[String]) -> Result<()> {
    let grid_path = PathBuf::from(rest.first().map_or(DEFAULT_GRID, String::as_str));
    let Grid { base: base_path, data: recipe, generate_sessions, common, trials } = parse_grid(&grid_path)?;
    let base = read_table(Path::new(&base_path))?;
    let metric = match base.get("valid_metric") {
        Some(toml::Value::String(m)) => m.clone(),
        _ => "recall@20".to_owned(),
    };
    let stem = grid_path.file_stem().and_then(|s| s.to_str()).context("grid file name")?.to_owned();
    let recipe_stem = Path::new(&recipe).file_stem().and_then(|s| s.to_str()).context("recipe file name")?.to_owned();
    let prepared = format!("target/prepared/{recipe_stem}");
    if generate_sessions {
        seqrec(&["data", "synth", "sessions", "--out", SYNTH_SESSIONS])?;
    }
    seqrec(&["data", "prepare", &recipe, "--out", &prepared])?;
    let config_dir = Path::new("target/tune").join(&stem);
    std::fs::create_dir_all(&config_dir)?;
    let mut outcomes = Vec::with_capacity(trials.len());
    for trial in &trials {
        let config = trial_config(&base, &common, trial);
        let text = format!(
            "# trial `{}` of {} (base {base_path})\n{}",
            trial.name,
            grid_path.display(),
            toml::to_string(&config)?
        );
        let config_path = config_dir.join(format!("{}.toml", trial.name));
        let run_dir = Path::new("runs/tune").join(&stem).join(&trial.name);
        let results_path = run_dir.join("results.json");
        let unchanged = std::fs::read_to_string(&config_path).is_ok_and(|old| old == text);
        let mut seconds = None;
        if !(unchanged && results_path.is_file()) {
            std::fs::write(&config_path, &text).with_context(|| format!("writing {}", config_path.display()))?;
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
            }
            let start = Instant::now();
            let (cfg, run) = (config_path.to_string_lossy(), run_dir.to_string_lossy());
            seqrec(&["train", "--data", &prepared, "--run", &run, "--config", &cfg])?;
            seconds = Some(start.elapsed().as_secs_f64());
        }
        let results = read_json(&results_path)?;
        let valid = results["best_valid"].as_f64().with_context(|| {
            format!("{}: no validation value (does {recipe} split off a validation part?)", results_path.display())
        })?;
        outcomes.push(Outcome {
            name: trial.name.clone(),
            config: config_path,
            valid,
            best_epoch: results["best_epoch"].as_u64().unwrap_or(0),
            epochs: results["epochs"].as_u64().unwrap_or(0),
            test_recall: at20(&results["test"], "recall"),
            test_mrr: at20(&results["test"], "mrr"),
            train_events_per_s: results["train_events_per_s"].as_f64().unwrap_or(f64::NAN),
            seconds,
        });
    }
    outcomes.sort_by(|a, b| b.valid.total_cmp(&a.valid));
    println!(
        "\n{} trials of {}, ranked by validation {metric} (test beside it, not used to choose):",
        outcomes.len(),
        grid_path.display()
    );
    println!(
        "  {:<28} {:>16} {:>11} {:>10} {:>8} {:>10} {:>8}",
        "trial",
        format!("valid {metric}"),
        "best/epochs",
        "Recall@20",
        "MRR@20",
        "train e/s",
        "wall s"
    );
    for o in &outcomes {
        println!(
            "  {:<28} {:>16.4} {:>11} {:>10.4} {:>8.4} {:>10.0} {:>8}",
            o.name,
            o.valid,
            format!("{}/{}", o.best_epoch, o.epochs),
            o.test_recall,
            o.test_mrr,
            o.train_events_per_s,
            o.seconds.map_or("(kept)".to_owned(), |s| format!("{s:.0}"))
        );
    }
    let json = serde_json::json!({
        "grid": grid_path,
        "base": base_path,
        "data": recipe,
        "valid_metric": metric,
        "chosen": outcomes.first().map(|o| o.name.clone()),
        "trials": outcomes.iter().map(|o| serde_json::json!({
            "name": o.name,
            "config": o.config,
            "valid": o.valid,
            "best_epoch": o.best_epoch,
            "epochs": o.epochs,
            "recall@20": o.test_recall,
            "mrr@20": o.test_mrr,
            "train_events_per_s": o.train_events_per_s,
        })).collect::<Vec<_>>(),
    });
    let out = Path::new("target/tune").join(format!("{stem}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(best) = outcomes.first() {
        println!("chosen on validation: `{}` ({})", best.name, best.config.display());
    }
    println!("results: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(text: &str) -> Result<Grid> {
        let dir = std::env::temp_dir().join(format!("xtask-tune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("g{n}.toml"));
        std::fs::write(&path, text).unwrap();
        parse_grid(&path)
    }

    const HEAD: &str = "base = \"b.toml\"\ndata = \"d.toml\"\n";

    #[test]
    fn trials_replace_the_base_keys_and_keep_the_rest() {
        let g = grid(&format!(
            "{HEAD}[common]\nn_epochs = 20\nseed = 7\n[[trial]]\nname = \"a\"\n[[trial]]\nname = \"b.2\"\nlayers = [200]\nseed = 1\n"
        ))
        .unwrap();
        assert_eq!((g.base.as_str(), g.data.as_str(), g.generate_sessions), ("b.toml", "d.toml", false));
        let names: Vec<&str> = g.trials.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b.2"]);
        let base: toml::Table = "layers = [100]\nloss = \"bpr-max\"\nn_epochs = 10\n".parse().unwrap();
        let want: toml::Table = "layers = [100]\nloss = \"bpr-max\"\nn_epochs = 20\nseed = 7\n".parse().unwrap();
        assert_eq!(trial_config(&base, &g.common, &g.trials[0]), want);
        let want: toml::Table = "layers = [200]\nloss = \"bpr-max\"\nn_epochs = 20\nseed = 1\n".parse().unwrap();
        assert_eq!(trial_config(&base, &g.common, &g.trials[1]), want);
    }

    #[test]
    fn the_shipped_grid_parses_and_names_files_that_exist() {
        let root = crate::root();
        let g = parse_grid(&root.join(DEFAULT_GRID)).unwrap();
        assert!(root.join(&g.base).is_file(), "{}", g.base);
        assert!(root.join(&g.data).is_file(), "{}", g.data);
        assert!(g.trials.len() >= 20 && g.trials[0].name == "base" && g.trials[0].keys.is_empty());
    }

    #[test]
    fn bad_grids_name_the_key_or_the_trial() {
        let cases = [
            ("data = \"d.toml\"\n[[trial]]\nname = \"a\"\n".to_owned(), "key `base`"),
            (
                format!("{HEAD}generate = \"ratings\"\n[[trial]]\nname = \"a\"\n"),
                "key `generate`: expected \"sessions\"",
            ),
            (format!("{HEAD}epochs = 3\n[[trial]]\nname = \"a\"\n"), "unknown key `epochs`"),
            (HEAD.to_owned(), "no [[trial]] tables"),
            (format!("{HEAD}[[trial]]\nlayers = [1]\n"), "trial 1: key `name` is missing"),
            (format!("{HEAD}[[trial]]\nname = \"a b\"\n"), "trial 1: name `a b`"),
            (format!("{HEAD}[[trial]]\nname = \"a\"\n[[trial]]\nname = \"a\"\n"), "trial 2: name `a` is used twice"),
            (format!("{HEAD}[[trial]]\nname = \"a\"\nvalid_metric = \"mrr@20\"\n"), "trial `a`: key `valid_metric`"),
            (
                format!("{HEAD}[common]\nvalid_metric = \"mrr@20\"\n[[trial]]\nname = \"a\"\n"),
                "common: key `valid_metric`",
            ),
            (format!("{HEAD}common = 1\n[[trial]]\nname = \"a\"\n"), "key `common`: expected a table"),
            ("base = 3\ndata = \"d.toml\"\n".to_owned(), "key `base`: expected a string, found integer"),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", grid(&text).err().unwrap_or_else(|| panic!("accepted:\n{text}")));
            assert!(err.contains(want), "{text}\n-> {err}\nwanted `{want}`");
        }
    }
}
