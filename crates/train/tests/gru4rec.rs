//! GRU4Rec runs end to end on small synthetic sessions: training beats the
//! most-popular baseline, `--resume` continues bit-exactly, checkpoints of
//! another dataset are refused, `recommend` handles unseen sessions.

use std::path::{Path, PathBuf};

use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;
use seqrec_data::split::Part;
use seqrec_data::synth::sessions::SessionsConfig;
use seqrec_train::gru4rec::{evaluate_run, load_run, recommend, train, TrainOptions};
use seqrec_train::run::RunDir;
use seqrec_train::{Gru4RecConfig, RunConfig};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqrec-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A prepared synthetic session set with 120 items, last day as test.
fn dataset(dir: &Path, seed: u64, n_sessions: usize) -> Dataset {
    dataset_with(dir, seed, n_sessions, 120)
}

fn dataset_with(dir: &Path, seed: u64, n_sessions: usize, n_items: usize) -> Dataset {
    let cfg = SessionsConfig { n_items, n_topics: 6, n_sessions, days: 10.0, seed, ..SessionsConfig::default() };
    let data = cfg.generate().unwrap();
    data.write_gru4rec_tsv(&dir.join("sessions.tsv")).unwrap();
    let text = "name = \"tiny\"\nformat = \"gru4rec\"\n[interactions]\npath = \"sessions.tsv\"\n\
                [split]\nkind = \"last_days\"\ndays = 1\nvalid_days = 1\n";
    let recipe = Recipe::from_toml_str(text, &dir.join("recipe.toml")).unwrap().with_dir(dir.to_path_buf());
    seqrec_data::prepare::prepare(&recipe, &dir.join("prepared")).unwrap();
    Dataset::open(&dir.join("prepared")).unwrap()
}

fn config(n_epochs: usize) -> Gru4RecConfig {
    let text = format!(
        "layers = [24]\nbatch_size = 16\nn_sample = 32\nsample_store = 320\nloss = \"bpr-max\"\nbpreg = 0.5\n\
         dropout_p_embed = 0.1\ndropout_p_hidden = 0.1\nmomentum = 0.3\nlearning_rate = 0.1\nn_epochs = {n_epochs}\n\
         patience = 0\neval_batch_size = 7\n"
    );
    Gru4RecConfig::from_toml_str(&text, Path::new("test.toml")).unwrap()
}

fn quiet() -> TrainOptions {
    TrainOptions { progress: false, ..TrainOptions::default() }
}

fn tensors(dir: &Path, name: &str) -> Vec<(String, Vec<f32>)> {
    let run = RunDir::open(dir).unwrap();
    run.load_tensors(name, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn trains_beyond_most_popular_and_resumes_exactly() {
    let dir = scratch("resume");
    let data = dataset(&dir, 3, 1500);
    let straight = RunDir::create(&dir.join("straight")).unwrap();
    let a = train(&config(3), &data, &straight, &quiet()).unwrap();
    assert_eq!(a.epochs, 3);
    let test = a.test.clone().unwrap();

    // most popular on the same test events, through the same ranking code.
    let (store, parts) = (&data.events.store, &data.events.parts);
    let n_ids = data.vocabs["item"].n_ids();
    let mut pop = seqrec_models::baseline::MostPopular::fit(store, parts, n_ids).unwrap();
    let cfg = seqrec_models::next_item::EvalConfig { ks: vec![20], tie_mode: seqrec_eval::TieMode::Optimistic };
    let pop = seqrec_models::next_item::evaluate_sessions(store, parts, Part::Test, &mut pop, 64, &cfg).unwrap();
    assert!(
        test.recall(20).unwrap() > pop.recall(20).unwrap() + 0.05,
        "GRU4Rec {:?} vs most popular {:?}",
        test.recall(20),
        pop.recall(20)
    );

    // one epoch, then resume to three: the same weights and optimiser state, bit for bit.
    let split = RunDir::create(&dir.join("split")).unwrap();
    train(&config(1), &data, &split, &quiet()).unwrap();
    let resumed = TrainOptions { resume: true, ..quiet() };
    let b = train(&config(3), &data, &split, &resumed).unwrap();
    assert_eq!(b.epochs, 3);
    assert_eq!(tensors(&straight.dir, "last.safetensors"), tensors(&split.dir, "last.safetensors"));
    assert_eq!(b.test, a.test);
    let lines = std::fs::read_to_string(split.path("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3, "{lines}");
}

#[test]
fn checkpoints_of_another_dataset_are_refused() {
    let dir = scratch("other");
    let data = dataset(&dir.join("one").tap_mkdir(), 5, 600);
    let other = dataset(&dir.join("two").tap_mkdir(), 6, 900);
    let run = RunDir::create(&dir.join("run")).unwrap();
    train(&config(1), &data, &run, &quiet()).unwrap();
    let err = train(&config(2), &other, &run, &TrainOptions { resume: true, ..quiet() }).unwrap_err().to_string();
    assert!(err.contains("the run was trained on dataset `tiny`"), "{err}");
    let loaded = load_run(&run.dir, &candle_core::Device::Cpu).unwrap();
    if other.vocabs["item"] != data.vocabs["item"] {
        let err = evaluate_run(&loaded, &other, Part::Test).unwrap_err().to_string();
        assert!(err.contains("different item vocabulary"), "{err}");
    }
    // the dataset it was trained on evaluates, and equals the run's own test result.
    let own = evaluate_run(&loaded, &data, Part::Test).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path("results.json")).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&own).unwrap(), results["test"]);
}

#[test]
fn recommends_for_unseen_sessions_and_skips_unknown_items() {
    let dir = scratch("recommend");
    let data = dataset(&dir, 7, 600);
    let run = RunDir::create(&dir.join("run")).unwrap();
    train(&config(1), &data, &run, &quiet()).unwrap();
    let loaded = load_run(&run.dir, &candle_core::Device::Cpu).unwrap();
    let known: Vec<String> = (1..=3).map(|i| loaded.vocab.raw(i).unwrap()).collect();
    let sessions = vec![
        ("new-1".to_owned(), vec![known[0].clone(), "no-such-item".to_owned(), known[1].clone()]),
        ("new-2".to_owned(), vec![known[2].clone()]),
        ("unknown-only".to_owned(), vec!["999999999".to_owned()]),
    ];
    let recs = recommend(&loaded, &sessions, 5, 2).unwrap();
    assert_eq!((recs.skipped_events, recs.skipped_sessions), (2, 1));
    assert_eq!(recs.sessions.len(), 2);
    for r in &recs.sessions {
        assert_eq!(r.items.len(), 5);
        assert!(r.scores.windows(2).all(|w| w[0] >= w[1]), "{r:?}");
    }
    // a session's list does not depend on the batch it was scored in.
    let alone = recommend(&loaded, &sessions[1..2], 5, 1).unwrap();
    assert_eq!(alone.sessions[0], recs.sessions[1]);
}

#[test]
fn retraining_keeps_the_vocabulary_and_skips_unknown_items() {
    let dir = scratch("retrain");
    let first = dataset(&dir.join("one").tap_mkdir(), 8, 800);
    // the same generator with more items: ids 121.. are unknown to the first model.
    let grown = dataset_with(&dir.join("two").tap_mkdir(), 9, 800, 160);
    let run = RunDir::create(&dir.join("run")).unwrap();
    train(&config(1), &first, &run, &quiet()).unwrap();
    let again = RunDir::create(&dir.join("again")).unwrap();
    let opts = TrainOptions { init_from: Some(run.dir.clone()), ..quiet() };
    let out = train(&config(1), &grown, &again, &opts).unwrap();
    let unknown = grown
        .events
        .store
        .items
        .iter()
        .filter(|&&i| {
            first.vocabs["item"].id_str(&grown.vocabs["item"].raw(i).unwrap()).is_none()
                && first.vocabs["item"].id_int(grown.vocabs["item"].raw(i).unwrap().parse().unwrap()).is_none()
        })
        .count();
    assert!(unknown > 0);
    assert_eq!(out.skipped_unknown_items, unknown);
    // the retrained run indexes the first run's vocabulary.
    let loaded = load_run(&again.dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.vocab, first.vocabs["item"]);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
