//! Tests of the knowledge-tracing generator: determinism, the exact Riiid
//! formats, the oracle against a difficulty baseline, the heavy tail of
//! history lengths, the test rule, and the streamed parquet.

use std::sync::OnceLock;

use arrow_array::{Array, BooleanArray, Float32Array, Int32Array, Int64Array, Int8Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::riiid_parquet::riiid_schema;
use super::*;
use crate::io::scratch_dir;

/// The default bank and learner model with 2000 learners (about 473,000
/// rows), a tenth of the default size: enough for the statistical checks.
fn default_data() -> &'static KtData {
    static DATA: OnceLock<KtData> = OnceLock::new();
    DATA.get_or_init(|| KtConfig { n_learners: 2000, ..KtConfig::default() }.generate().unwrap())
}

fn small(seed: u64) -> KtConfig {
    KtConfig {
        n_learners: 40,
        n_questions: 200,
        n_lectures: 20,
        n_tags: 12,
        lecture_prob: 0.1,
        seed,
        ..KtConfig::default()
    }
}

#[test]
fn same_seed_same_files_other_seed_other_data() {
    let d = scratch_dir("synth-kt");
    small(4).generate().unwrap().write_riiid_csv(&d.join("a")).unwrap();
    small(4).generate().unwrap().write_riiid_csv(&d.join("b")).unwrap();
    for f in ["train.csv", "questions.csv", "lectures.csv", "truth.csv", "oracle.json"] {
        let a = std::fs::read(d.join("a").join(f)).unwrap();
        assert!(!a.is_empty(), "{f} is empty");
        assert_eq!(a, std::fs::read(d.join("b").join(f)).unwrap(), "{f} differs");
    }
    assert_ne!(small(4).generate().unwrap().rows, small(5).generate().unwrap().rows);
}

#[test]
fn exact_riiid_formats() {
    let data = small(2).generate().unwrap();
    let d = scratch_dir("synth-kt");
    data.write_riiid_csv(&d).unwrap();
    let train = std::fs::read_to_string(d.join("train.csv")).unwrap();
    let lines: Vec<&str> = train.lines().collect();
    assert_eq!(lines[0], riiid_csv::TRAIN_HEADER);
    assert_eq!(lines.len(), 1 + data.rows.len());
    let r = &data.rows;
    // the first bundle of the first learner: both prior fields empty.
    let first =
        format!("0,0,{},{},0,0,{},{},,", r.user_id[0], r.content_id[0], r.user_answer[0], r.answered_correctly[0]);
    assert_eq!(lines[1], first);
    // the first row of the second bundle: elapsed with one decimal, False (onboarding).
    let i = (0..r.len()).find(|&i| r.task_container_id[i] == 1 && r.content_type_id[i] == 0).unwrap();
    assert!(lines[i + 1].ends_with(&format!(",{:.1},False", r.prior_elapsed[i])), "{}", lines[i + 1]);
    assert!(lines[i + 1].split(',').nth(8).unwrap().ends_with(".0"));
    // a lecture: -1 answer fields, empty elapsed, False.
    let l = (0..r.len()).find(|&i| r.content_type_id[i] == 1).expect("some lecture");
    let want = format!(
        "{l},{},{},{},1,{},-1,-1,,False",
        r.timestamp[l], r.user_id[l], r.content_id[l], r.task_container_id[l]
    );
    assert_eq!(lines[l + 1], want);
    // explanations after onboarding are True sometimes.
    assert!(lines.iter().any(|x| x.ends_with(",True")));
    let questions = std::fs::read_to_string(d.join("questions.csv")).unwrap();
    let q: Vec<&str> = questions.lines().collect();
    assert_eq!(q[0], "question_id,bundle_id,correct_answer,part,tags");
    assert_eq!(q.len(), 201);
    let q0 = &data.content.questions[0];
    let tags: Vec<String> = q0.tags.iter().map(|t| t.to_string()).collect();
    assert_eq!(q[1], format!("0,0,{},{},{}", q0.correct_answer, q0.part, tags.join(" ")));
    let lectures = std::fs::read_to_string(d.join("lectures.csv")).unwrap();
    let l0 = &data.content.lectures[0];
    assert_eq!(
        lectures.lines().take(2).collect::<Vec<_>>(),
        ["lecture_id,tag,part,type_of".to_string(), format!("{},{},{},{}", l0.id, l0.tag, l0.part, l0.type_of)]
    );
    let truth = std::fs::read_to_string(d.join("truth.csv")).unwrap();
    let n_q = r.content_type_id.iter().filter(|&&k| k == 0).count();
    assert_eq!(truth.lines().count(), 1 + n_q);
    assert_eq!(truth.lines().nth(1).unwrap(), format!("0,{:.6}", r.p_correct[0]));
}

#[test]
fn test_rule_takes_the_questions_of_the_rounded_last_tenth() {
    let data = small(3).generate().unwrap();
    let mask = data.test_mask();
    for w in data.learner_offsets.windows(2) {
        let n_test = ((w[1] - w[0]) as f64 * 0.1).round() as usize;
        let tail = w[1] - n_test;
        let want: Vec<usize> = (tail..w[1]).filter(|&i| data.rows.content_type_id[i] == 0).collect();
        let test: Vec<usize> = (w[0]..w[1]).filter(|&i| mask[i]).collect();
        assert_eq!(test, want);
    }
    // hand cases of the rounding: 4 -> 0, 5 -> 1 (half away from zero), 14 -> 1, 15 -> 2.
    for (n, want) in [(4usize, 0usize), (5, 1), (14, 1), (15, 2)] {
        assert_eq!((n as f64 * 0.1).round() as usize, want);
    }
}

#[test]
fn oracle_is_plausible_and_beats_question_difficulty() {
    let report = default_data().oracle_report();
    let (auc_test, base) = (report.auc_test.unwrap(), report.baseline_question_mean_auc_test.unwrap());
    assert!((0.7..0.95).contains(&auc_test), "oracle test auc {auc_test}");
    assert!((0.7..0.95).contains(&report.auc_all.unwrap()), "oracle auc {:?}", report.auc_all);
    assert!(auc_test > base + 0.02, "oracle {auc_test} vs difficulty baseline {base}");
    assert!(base > 0.55, "difficulty alone should carry signal: {base}");
    assert!(report.log_loss_test.unwrap() < 0.69);
    assert!(report.n_test > 20_000 && report.n_rows > 200_000, "{report:?}");
}

/// Without dynamics (no learning) the knowledge term is 0 everywhere and the
/// static oracle ranks exactly as the oracle; with the default dynamics,
/// knowing how knowledge moves is worth more than 0.02 AUC (the room a
/// history model has over a static learner model).
#[test]
fn static_oracle_equals_the_oracle_without_dynamics_and_trails_it_with_them() {
    let flat = KtConfig { n_learners: 300, eta_question: 0.0, eta_lecture: 0.0, ..KtConfig::default() };
    let flat = flat.generate().unwrap();
    assert!(flat.rows.knowledge.iter().all(|&k| k == 0.0 || k.is_nan()));
    let r = flat.oracle_report();
    assert_eq!(r.static_auc_test, r.auc_test);
    let r = default_data().oracle_report();
    let (oracle, stat) = (r.auc_test.unwrap(), r.static_auc_test.unwrap());
    assert!(oracle - stat > 0.02, "oracle {oracle} vs static oracle {stat}");
    assert!(stat > r.baseline_question_mean_auc_test.unwrap() + 0.02, "{r:?}");
    // the knowledge term is recorded on questions only, within [0, k_max].
    let rows = &default_data().rows;
    for (k, kind) in rows.knowledge.iter().zip(&rows.content_type_id) {
        assert_eq!(k.is_nan(), *kind == 1);
        assert!(k.is_nan() || (0.0..=4.0).contains(k), "{k}");
    }
}

#[test]
fn most_rows_lie_beyond_position_200_of_their_history() {
    let data = default_data();
    let beyond: usize = data.learner_offsets.windows(2).map(|w| (w[1] - w[0]).saturating_sub(200)).sum();
    let share = beyond as f64 / data.rows.len() as f64;
    assert!(share > 0.5, "share of rows beyond position 200: {share}");
    // ... while the median learner is short, as in Riiid.
    let mut lens: Vec<usize> = data.learner_offsets.windows(2).map(|w| w[1] - w[0]).collect();
    lens.sort_unstable();
    assert!(lens[lens.len() / 2] < 100, "median length {}", lens[lens.len() / 2]);
    let lectures = data.rows.content_type_id.iter().filter(|&&k| k == 1).count() as f64;
    let share = lectures / data.rows.len() as f64;
    assert!((0.015..0.025).contains(&share), "lecture share {share}");
}

#[test]
fn parquet_has_the_schema_and_exactly_the_rows() {
    let cfg = small(6);
    let d = scratch_dir("synth-kt");
    let path = d.join("train.parquet");
    let rows = 25_000u64;
    let summary = write_riiid_parquet_with(&path, rows, &cfg, 10_000).unwrap();
    assert_eq!((summary.rows, summary.row_groups), (rows, 3));
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(builder.metadata().file_metadata().num_rows(), rows as i64);
    assert_eq!(builder.schema().fields(), riiid_schema().fields());
    let batches: Vec<RecordBatch> = builder.build().unwrap().collect::<Result<_, _>>().unwrap();
    // the parquet's learners are the in-memory generator's learners, in order.
    let mem = KtConfig { n_learners: summary.learners as usize, ..cfg }.generate().unwrap();
    let n = rows as usize;
    assert!(mem.rows.len() >= n, "{} rows in memory", mem.rows.len());
    let last_learner = mem.learner_offsets[mem.learner_offsets.len() - 2];
    assert!(last_learner < n, "the last learner contributes rows");
    let m = &mem.rows;
    let mut off = 0;
    for batch in &batches {
        let k = batch.num_rows();
        let row_id: &Int64Array = column(batch, "row_id");
        assert!(row_id.values().iter().enumerate().all(|(i, &v)| v == (off + i) as i64));
        assert_eq!(column::<Int64Array>(batch, "timestamp").values(), &m.timestamp[off..off + k]);
        assert_eq!(column::<Int32Array>(batch, "user_id").values(), &m.user_id[off..off + k]);
        assert_eq!(column::<Int32Array>(batch, "content_id").values(), &m.content_id[off..off + k]);
        assert_eq!(column::<Int8Array>(batch, "content_type_id").values(), &m.content_type_id[off..off + k]);
        assert_eq!(column::<Int32Array>(batch, "task_container_id").values(), &m.task_container_id[off..off + k]);
        assert_eq!(column::<Int8Array>(batch, "user_answer").values(), &m.user_answer[off..off + k]);
        assert_eq!(column::<Int8Array>(batch, "answered_correctly").values(), &m.answered_correctly[off..off + k]);
        let elapsed: &Float32Array = column(batch, "prior_question_elapsed_time");
        let explained: &BooleanArray = column(batch, "prior_question_had_explanation");
        for i in 0..k {
            let (e, x) = (m.prior_elapsed[off + i], m.prior_explanation[off + i]);
            assert_eq!(elapsed.is_null(i), e.is_nan(), "row {}", off + i);
            assert!(elapsed.is_null(i) || elapsed.value(i) == e);
            assert_eq!(explained.is_null(i), x < 0, "row {}", off + i);
            assert!(explained.is_null(i) || explained.value(i) == (x == 1));
        }
        off += k;
    }
    assert_eq!(off, n);
    let first = &batches[0];
    assert!(column::<Float32Array>(first, "prior_question_elapsed_time").is_null(0));
    assert!(column::<BooleanArray>(first, "prior_question_had_explanation").is_null(0));
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    let i = batch.schema().index_of(name).unwrap();
    batch.column(i).as_any().downcast_ref::<T>().unwrap()
}

/// The default dataset (`seqrec data synth kt`) has at least 5 million
/// rows; the drawn history lengths, a lower bound on the rows, show it
/// without simulating anyone.
#[test]
fn default_size_is_at_least_five_million_rows() {
    use rayon::prelude::*;
    let cfg = KtConfig::default();
    let lens: Vec<usize> = (0..cfg.n_learners as u64).into_par_iter().map(|l| history_len(&cfg, l).unwrap()).collect();
    let rows: usize = lens.iter().sum();
    assert!(rows >= 5_000_000, "{} learners draw {rows} rows", cfg.n_learners);
    eprintln!("default: {} learners, at least {rows} rows", cfg.n_learners);
    // 2000 learners (the statistical tests' size) draw about a tenth of it.
    let tenth: usize = lens[..2000].iter().sum();
    assert!((400_000..600_000).contains(&tenth), "{tenth}");
}

#[test]
fn config_defaults_and_validation() {
    let c: KtConfig = toml::from_str("n_learners = 7").unwrap();
    assert_eq!(c, KtConfig { n_learners: 7, ..KtConfig::default() });
    assert!(toml::from_str::<KtConfig>("learners = 7").is_err());
    let bad = KtConfig { guess: 1.2, ..KtConfig::default() };
    assert!(matches!(bad.generate(), Err(Error::Config { key, .. }) if key == "guess"));
    let bad = KtConfig { n_tags: 0, ..KtConfig::default() };
    assert!(bad.validate().is_err());
    let d = scratch_dir("synth-kt");
    assert!(write_riiid_parquet_with(&d.join("x.parquet"), 10, &small(1), 0).is_err());
    assert!(!d.join("x.parquet").exists());
}

/// The ingestion-benchmark file: `SEQREC_KT_ROWS` rows (default 100,000,000)
/// into the temp dir; prints the time. Run with
/// `cargo test --release -p seqrec-data --lib kt::tests::write_benchmark_parquet -- --ignored --nocapture`.
#[test]
#[ignore = "writes a multi-gigabyte file; run by hand in release"]
fn write_benchmark_parquet() {
    let rows = std::env::var("SEQREC_KT_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000_000u64);
    let d = scratch_dir("synth-kt-bench");
    let path = d.join("riiid.parquet");
    let start = std::time::Instant::now();
    let summary = write_riiid_parquet(&path, rows, 1).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).unwrap().len();
    eprintln!("{summary:?}: {secs:.1} s, {:.0} rows/s, {:.1} MB", rows as f64 / secs, bytes as f64 / 1e6);
    std::fs::remove_dir_all(&d).unwrap();
}
