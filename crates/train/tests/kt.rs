//! Knowledge tracing end to end on small generated sets in Riiid's schema:
//! every answer is used (a 3,000-event learner included), RRNCF learns what
//! the history tells beyond each question's difficulty, the oracle is
//! scored on the same test answers, streaming the event files gives the
//! same result as reading them at once, and bad input is named.

use std::path::{Path, PathBuf};

use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;
use seqrec_data::synth::kt::KtConfig as GenConfig;
use seqrec_train::kt::{train_kt, KtConfig, KtOptions, KtOutcome};
use seqrec_train::run::RunDir;
use seqrec_train::RunConfig;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqrec-kt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Generates `gen` as Riiid CSVs in `dir/raw` and prepares them (last 10%
/// of each learner test, the 10% before validation).
fn dataset(dir: &Path, gen: &GenConfig) -> Dataset {
    let raw = dir.join("raw");
    gen.generate().unwrap().write_riiid_csv(&raw).unwrap();
    let recipe = Recipe::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/synth-kt.toml"))
        .unwrap()
        .with_dir(raw);
    seqrec_data::prepare::prepare(&recipe, &dir.join("prepared")).unwrap();
    Dataset::open(&dir.join("prepared")).unwrap()
}

fn config(text: &str) -> KtConfig {
    KtConfig::from_toml_str(text, Path::new("test.toml")).unwrap()
}

const SMALL: &str = "len = 16\nbatch_size = 16\nembedding = 8\nmlp = [16]\nhidden = 24\ninput_embedding = 8\n\
                     tag_embedding = 4\nlearning_rate = 0.01\npatience = 0\n";

fn run(cfg: &KtConfig, data: &Dataset, dir: &Path, stream: bool) -> KtOutcome {
    let opts = KtOptions { stream, ..KtOptions::default() };
    train_kt(cfg, data, &RunDir::create(dir).unwrap(), &opts).unwrap()
}

fn auc(o: &KtOutcome) -> f64 {
    o.test.as_ref().and_then(|t| t.metrics.auc).unwrap()
}

/// Riiid CSVs of a planted set: each learner is strong (answers correctly
/// with probability 0.9) or weak (0.1), every question equally hard, so only
/// the history tells; bundles of one or two questions, the odd lecture.
fn planted(dir: &Path, learners: usize) -> Dataset {
    use std::fmt::Write as _;
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let mut rng = seqrec_data::rng::Rng::new(17);
    let mut train = String::from(seqrec_data::synth::kt::riiid_csv::TRAIN_HEADER);
    train.push('\n');
    let mut row = 0;
    for u in 0..learners {
        let p = if rng.bernoulli(0.5) { 0.9 } else { 0.1 };
        let (mut t, mut container) = (0i64, 0);
        let mut first = true;
        while container < 24 {
            if !first && rng.bernoulli(0.05) {
                let _ = writeln!(train, "{row},{t},{u},{},1,{container},-1,-1,,False", 100 + rng.below(3));
                row += 1;
                container += 1;
                t += 60_000;
            }
            let size = 1 + rng.below(2);
            let elapsed = if first { String::new() } else { "20000.0".into() };
            let explained = if first { "" } else { "True" };
            for _ in 0..size {
                let correct = i32::from(rng.bernoulli(p));
                let _ =
                    writeln!(train, "{row},{t},{u},{},0,{container},0,{correct},{elapsed},{explained}", rng.below(20));
                row += 1;
            }
            first = false;
            container += 1;
            t += 30_000 + rng.below(100_000) as i64;
        }
    }
    std::fs::write(raw.join("train.csv"), train).unwrap();
    let mut q = String::from("question_id,bundle_id,correct_answer,part,tags\n");
    for i in 0..20 {
        let _ = writeln!(q, "{i},{i},0,1,{} {}", i % 5, 5 + i % 3);
    }
    std::fs::write(raw.join("questions.csv"), q).unwrap();
    std::fs::write(
        raw.join("lectures.csv"),
        "lecture_id,tag,part,type_of\n100,1,1,concept\n101,2,1,concept\n102,9,2,intention\n",
    )
    .unwrap();
    let recipe = Recipe::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/synth-kt.toml"))
        .unwrap()
        .with_dir(raw);
    seqrec_data::prepare::prepare(&recipe, &dir.join("prepared")).unwrap();
    Dataset::open(&dir.join("prepared")).unwrap()
}

#[test]
fn rrncf_learns_what_only_the_history_tells() {
    let dir = scratch("planted");
    let data = planted(&dir, 300);
    let mean = run(&config("model = \"question-mean\""), &data, &dir.join("mean"), false);
    let rr = run(&config(&format!("model = \"rrncf\"\nn_epochs = 4\n{SMALL}")), &data, &dir.join("rrncf"), false);
    let (m, r) = (auc(&mean), auc(&rr));
    assert!(m < 0.6, "questions are equally hard: the question mean knows nothing ({m})");
    assert!(r > 0.85, "RRNCF AUC {r}: the history shows strong and weak learners");
    for o in [&mean, &rr] {
        assert_eq!(o.fraction_used_train, 1.0, "{}", o.model);
        assert_eq!(o.test.as_ref().unwrap().fraction_used, 1.0);
        assert_eq!(o.valid.as_ref().unwrap().fraction_used, 1.0);
    }
    // The question mean of the results is the baseline model's own AUC.
    assert_eq!(rr.question_mean_test.as_ref().unwrap().metrics.auc, Some(m));
    for f in ["results.json", "metrics.jsonl", "best.safetensors", "config.toml", "run.json"] {
        assert!(dir.join("rrncf").join(f).exists(), "{f}");
    }
}

#[test]
fn the_oracle_is_scored_on_the_same_test_answers() {
    let dir = scratch("oracle");
    let gen = GenConfig { n_learners: 150, n_questions: 100, n_lectures: 10, seed: 3, ..GenConfig::default() };
    let data = dataset(&dir, &gen);
    let truth = dir.join("raw/truth.csv");
    let text = |model: &str| format!("model = \"{model}\"\nn_epochs = 1\n{SMALL}truth = \"{}\"", truth.display());
    let mean = run(&config(&text("question-mean")), &data, &dir.join("mean"), false);
    let rr = run(&config(&text("rrncf")), &data, &dir.join("rrncf"), false);
    let oracle = rr.oracle_test_auc.unwrap();
    assert_eq!(mean.oracle_test_auc, rr.oracle_test_auc);
    // The generator's own report: the same test answers (the last_fraction rule).
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("raw/oracle.json")).unwrap()).unwrap();
    // truth.csv rounds to 6 decimals, so ties may shift the AUC in the 7th.
    assert!((report["auc_test"].as_f64().unwrap() - oracle).abs() < 1e-5, "{report} vs {oracle}");
    assert!((report["baseline_question_mean_auc_test"].as_f64().unwrap() - auc(&mean)).abs() < 0.02);
    assert!(auc(&mean) < oracle && auc(&rr) < oracle);
}

#[test]
fn a_long_history_is_read_to_the_end_and_streaming_changes_nothing() {
    let dir = scratch("long");
    // A few learners, one of them with thousands of events.
    let gen = GenConfig {
        n_learners: 6,
        n_questions: 100,
        n_lectures: 5,
        len_median: 3000.0,
        len_sigma: 0.3,
        max_len: 3000,
        seed: 9,
        ..GenConfig::default()
    };
    let data = dataset(&dir, &gen);
    let longest = (0..data.events.store.n_seq()).map(|s| data.events.store.len_of(s)).max().unwrap();
    assert!(longest >= 1500, "expected a long history, longest {longest}");
    let cfg = config(&format!("model = \"rrncf\"\nn_epochs = 1\n{SMALL}"));
    let memory = run(&cfg, &data, &dir.join("memory"), false);
    assert_eq!(memory.fraction_used_train, 1.0);
    assert_eq!(memory.test.as_ref().unwrap().fraction_used, 1.0);
    assert_eq!(memory.events, data.events.store.n_events());
    let streamed = run(&cfg, &Dataset::open_without_events(&dir.join("prepared")).unwrap(), &dir.join("stream"), true);
    assert_eq!(streamed.test.as_ref().unwrap().metrics, memory.test.as_ref().unwrap().metrics);
    assert_eq!(streamed.events, memory.events);
}

#[test]
fn ncf_learns_learners_and_questions() {
    let dir = scratch("ncf");
    let gen = GenConfig { n_learners: 150, n_questions: 200, n_lectures: 10, seed: 5, ..GenConfig::default() };
    let data = dataset(&dir, &gen);
    let ncf = run(&config(&format!("model = \"ncf\"\nn_epochs = 3\n{SMALL}")), &data, &dir.join("ncf"), false);
    let mlp = run(
        &config(&format!("model = \"ncf\"\nhead = \"mlp\"\nn_epochs = 1\n{SMALL}")),
        &data,
        &dir.join("mlp"),
        false,
    );
    let gmf = run(
        &config(&format!("model = \"ncf\"\nhead = \"gmf\"\nn_epochs = 1\n{SMALL}")),
        &data,
        &dir.join("gmf"),
        false,
    );
    assert!(ncf.parameters > mlp.parameters && ncf.parameters > gmf.parameters);
    let base = ncf.question_mean_test.as_ref().unwrap().metrics.auc.unwrap();
    assert!(auc(&ncf) > 0.5 && base > 0.5, "NCF {} / baseline {base}", auc(&ncf));

    // NeuMF pre-trained from the two runs: at alpha 1 (0) and a learning rate
    // too small to move anything it ranks exactly as GMF (MLP) did.
    let frozen = SMALL.replace("learning_rate = 0.01", "learning_rate = 1e-9");
    let pretrained = |alpha: f64| {
        format!(
            "model = \"ncf\"\nn_epochs = 1\npretrained_gmf = \"{}\"\npretrained_mlp = \"{}\"\npretrain_alpha = {alpha:?}\n{frozen}",
            dir.join("gmf").display(),
            dir.join("mlp").display()
        )
    };
    for (alpha, like) in [(1.0, &gmf), (0.0, &mlp)] {
        let neumf = run(&config(&pretrained(alpha)), &data, &dir.join(format!("neumf-{alpha}")), false);
        assert!(
            (auc(&neumf) - auc(like)).abs() < 1e-4,
            "alpha {alpha}: NeuMF {} vs its source {}",
            auc(&neumf),
            auc(like)
        );
    }
    assert!(
        (auc(&gmf) - auc(&mlp)).abs() > 1e-3,
        "the two sources must differ for the check to mean anything: {} vs {}",
        auc(&gmf),
        auc(&mlp)
    );
    let missing = config(&pretrained(0.5).replace(&dir.join("gmf").display().to_string(), "/nonexistent/gmf-run"));
    let e = train_kt(&missing, &data, &RunDir::create(&dir.join("r-missing")).unwrap(), &KtOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/gmf-run") && e.contains("not a run directory"), "{e}");
}

#[test]
fn bad_settings_and_inputs_are_named() {
    let bad = |text: &str| KtConfig::from_toml_str(text, Path::new("kt.toml")).unwrap_err().to_string();
    assert!(bad("model = \"dkt\"").contains("key `model`"));
    assert!(bad("head = \"dot\"").contains("key `head`"));
    assert!(bad("len = 0").contains("key `len`"));
    assert!(bad("hidden = 0").contains("key `hidden`"));
    assert!(bad("mlp = []").contains("key `mlp`"));
    assert!(bad("dropout = 1.0").contains("key `dropout`"));
    assert!(bad("optimizer = \"nadam\"").contains("key `optimizer`"));
    assert!(bad("model = \"ncf\"\npretrained_gmf = \"g\"").contains("needs both run directories"));
    assert!(bad("model = \"rrncf\"\npretrained_gmf = \"g\"\npretrained_mlp = \"m\"")
        .contains("model `ncf` with head `neumf`"));
    assert!(bad("model = \"ncf\"\npretrain_alpha = 2.0").contains("key `pretrain_alpha`"));
    let e = bad("hiden = 3");
    assert!(e.contains("kt.toml") && e.contains("hiden"), "{e}");

    let dir = scratch("bad");
    let gen = GenConfig { n_learners: 20, n_questions: 50, n_lectures: 5, seed: 2, ..GenConfig::default() };
    let data = dataset(&dir, &gen);
    // A truth file of another dataset does not align.
    let other = scratch("bad-other");
    GenConfig { n_learners: 21, ..gen.clone() }.generate().unwrap().write_riiid_csv(&other).unwrap();
    let cfg = config(&format!("model = \"question-mean\"\ntruth = \"{}\"", other.join("truth.csv").display()));
    let e = train_kt(&cfg, &data, &RunDir::create(&dir.join("r1")).unwrap(), &KtOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("truth.csv") && e.contains("do not align"), "{e}");
    std::fs::write(other.join("broken.csv"), "row_id,p_correct\n0,0.5\n1,x\n").unwrap();
    let cfg = config(&format!("model = \"question-mean\"\ntruth = \"{}\"", other.join("broken.csv").display()));
    let e = train_kt(&cfg, &data, &RunDir::create(&dir.join("r2")).unwrap(), &KtOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.csv:3"), "{e}");
}

/// `seqrec evaluate` on a finished run: the kept weights score exactly what
/// training reported (model, baseline and oracle on the same answers); a
/// dataset prepared from other files, a run of another shape and a folder
/// that is no run are errors naming what is wrong.
#[test]
fn evaluating_a_run_reproduces_its_results_and_refuses_other_data() {
    use seqrec_train::kt::evaluate_kt_run;
    let dir = scratch("evaluate");
    let gen = GenConfig { n_learners: 60, n_questions: 200, n_lectures: 10, seed: 8, ..GenConfig::default() };
    let data = dataset(&dir, &gen);
    let truth = dir.join("raw").join("truth.csv");
    let rr = format!("model = \"rrncf\"\nn_epochs = 2\ntruth = \"{}\"\n{SMALL}", truth.display());
    let trained = run(&config(&rr), &data, &dir.join("rrncf"), false);
    let opts = KtOptions::default();
    let e = evaluate_kt_run(&dir.join("rrncf"), &data, &opts).unwrap();
    assert_eq!(e.test, trained.test);
    assert_eq!(e.valid, trained.valid);
    assert_eq!(e.question_mean_test, trained.question_mean_test);
    assert_eq!(e.oracle_test_auc, trained.oracle_test_auc);
    assert!(e.test.as_ref().unwrap().metrics.n > 0);
    let streamed = evaluate_kt_run(&dir.join("rrncf"), &data, &KtOptions { stream: true, ..opts.clone() }).unwrap();
    assert_eq!(streamed.test, e.test);

    // Another generated set (other files): refused, naming both datasets' hashes.
    let other_dir = dir.join("other");
    let other = dataset(&other_dir, &GenConfig { seed: 9, ..gen.clone() });
    let err = evaluate_kt_run(&dir.join("rrncf"), &other, &opts).unwrap_err().to_string();
    assert!(err.contains("other input files") && err.contains(&other.meta.input_hash), "{err}");
    // Weights of another shape under the run's config: named by the loader.
    let ncf = run(&config(&format!("model = \"ncf\"\nn_epochs = 1\n{SMALL}")), &data, &dir.join("ncf"), false);
    assert!(ncf.test.is_some());
    std::fs::copy(dir.join("ncf").join("best.safetensors"), dir.join("rrncf").join("best.safetensors")).unwrap();
    let err = evaluate_kt_run(&dir.join("rrncf"), &data, &opts).unwrap_err().to_string();
    assert!(err.contains("checkpoint has") && err.contains("best.safetensors"), "{err}");
    let err = evaluate_kt_run(&dir.join("raw"), &data, &opts).unwrap_err().to_string();
    assert!(err.contains("not a run directory"), "{err}");
}

/// `--resume`: one epoch, then the run continued to three gives the losses,
/// validation AUCs, kept epoch and test metrics of three epochs in one go;
/// resuming on another dataset is refused.
#[test]
fn resume_continues_a_run_exactly() {
    let dir = scratch("resume");
    let gen = GenConfig { n_learners: 50, n_questions: 150, n_lectures: 10, seed: 12, ..GenConfig::default() };
    let data = dataset(&dir, &gen);
    let cfg = |epochs: usize| config(&format!("model = \"rrncf\"\nn_epochs = {epochs}\n{SMALL}"));
    let whole = run(&cfg(3), &data, &dir.join("whole"), false);
    run(&cfg(1), &data, &dir.join("parts"), false);
    let lines = |d: &str| std::fs::read_to_string(dir.join(d).join("metrics.jsonl")).unwrap();
    assert_eq!(lines("parts").lines().count(), 1);
    let resumed = KtOptions { resume: true, ..KtOptions::default() };
    let parts = train_kt(&cfg(3), &data, &RunDir::open(&dir.join("parts")).unwrap(), &resumed).unwrap();
    let losses = |d: &str| -> Vec<(f64, Option<f64>)> {
        lines(d)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["loss"].as_f64().unwrap(), v["valid_auc"].as_f64())
            })
            .collect()
    };
    assert_eq!(losses("parts"), losses("whole"));
    assert_eq!((parts.epochs, parts.best_epoch), (whole.epochs, whole.best_epoch));
    assert_eq!(parts.test, whole.test);
    // a finished run resumed again trains nothing and reports the same.
    let again = train_kt(&cfg(3), &data, &RunDir::open(&dir.join("parts")).unwrap(), &resumed).unwrap();
    assert_eq!((again.epochs, again.test), (3, whole.test.clone()));
    assert_eq!(losses("parts").len(), 3);

    let other = dataset(&dir.join("other"), &GenConfig { seed: 13, ..gen.clone() });
    let err = train_kt(&cfg(3), &other, &RunDir::open(&dir.join("parts")).unwrap(), &resumed).unwrap_err().to_string();
    assert!(err.contains("input hash"), "{err}");
}
