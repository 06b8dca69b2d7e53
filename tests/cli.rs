//! End-to-end tests of the `seqrec` binary: real files in, real directories
//! out, errors as a user sees them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn seqrec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqrec")).args(args).env("SEQREC_LOG", "warn").output().expect("run seqrec")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seqrec-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write_sessions(dir: &Path, body: &str) -> PathBuf {
    std::fs::write(dir.join("sessions.tsv"), body).unwrap();
    let recipe = dir.join("s.toml");
    std::fs::write(
        &recipe,
        "name = \"tiny\"\nformat = \"gru4rec\"\n\n[interactions]\npath = \"sessions.tsv\"\n\n[split]\nkind = \"last_days\"\ndays = 1\n",
    )
    .unwrap();
    recipe
}

#[test]
fn prepare_then_stats_on_a_gru4rec_file() {
    let d = scratch("tiny");
    // Two sessions on day 0, one session two days later (the test day).
    let recipe = write_sessions(
        &d,
        "SessionId\tItemId\tTime\n1\t10\t0.0\n1\t11\t60.5\n2\t11\t100\n2\t12\t160\n2\t10\t200\n3\t10\t172800\n3\t12\t172860\n3\t99\t172900\n",
    );
    let out = d.join("prepared");
    let o = seqrec(&["data", "prepare", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["rows_read"], 8);
    // item 99 never occurs in training: its test event is removed and counted
    assert_eq!(summary["counts"]["events"], 7);
    assert_eq!(summary["counts"]["parts"], serde_json::json!([5, 0, 2]));
    let o = seqrec(&["data", "stats", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["sequences"], 3);
    assert_eq!(s["items"], 3);
    assert_eq!(s["interactions"], 7);
}

#[test]
fn bad_input_names_file_line_and_column_and_leaves_no_output() {
    let d = scratch("bad");
    let recipe = write_sessions(&d, "SessionId\tItemId\tTime\n1\t10\t0\n1\tabc\t5\n");
    let out = d.join("prepared");
    let o = seqrec(&["data", "prepare", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(msg.contains("sessions.tsv:3:2"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(!out.exists());
    // nothing half-written next to it either
    let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn unknown_recipe_key_is_named() {
    let d = scratch("key");
    let recipe = write_sessions(&d, "SessionId\tItemId\tTime\n1\t10\t0\n");
    let t = std::fs::read_to_string(&recipe).unwrap().replace("days = 1", "dayz = 1");
    std::fs::write(&recipe, t).unwrap();
    let o = seqrec(&["data", "prepare", recipe.to_str().unwrap(), "--out", d.join("o").to_str().unwrap()]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(msg.contains("s.toml") && msg.contains("dayz"), "{msg}");
}

/// The real MovieLens-100K in `../shared/datasets` (present on CI machines).
#[test]
fn ml_100k_stats_match_the_published_counts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !root.join("../shared/datasets/ml-100k/ml-100k.inter").exists() {
        eprintln!("skipped: ../shared/datasets/ml-100k is not here");
        return;
    }
    let d = scratch("ml100k");
    let out = d.join("prepared");
    let recipe = root.join("datasets/ml-100k.toml");
    let o = seqrec(&["data", "prepare", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = seqrec(&["data", "stats", out.to_str().unwrap(), "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["sequences_read"], 943);
    assert_eq!(s["items_read"], 1682);
    assert_eq!(s["rows_read"], 100_000);
    // leave-last-one-out keeps every user; only valid/test events whose item
    // never occurs in training are removed, and they are counted
    assert_eq!(s["sequences"], 943);
    let removed = summary["split"]["removed_unseen"].as_u64().unwrap();
    assert_eq!(s["interactions"].as_u64().unwrap() + removed, 100_000);
    assert!(removed < 100, "{removed} removed");
    assert_eq!(s["parts"][2].as_u64().unwrap() + s["parts"][1].as_u64().unwrap() + removed, 2 * 943);
}

/// A prepared tiny session set and a config for a one-epoch GRU4Rec run.
fn tiny_run_inputs(d: &Path) -> (PathBuf, PathBuf) {
    let mut body = String::from("SessionId\tItemId\tTime\n");
    for s in 0..60u32 {
        let day = if s < 50 { 0 } else { 2 };
        for i in 0..4u32 {
            body.push_str(&format!("{s}\t{}\t{}\n", 10 + (s + i) % 7, day * 86_400 + s * 100 + i));
        }
    }
    let recipe = write_sessions(d, &body);
    let prepared = d.join("prepared");
    let o = seqrec(&["data", "prepare", recipe.to_str().unwrap(), "--out", prepared.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let config = d.join("run.toml");
    std::fs::write(&config, "layers = [8]\nbatch_size = 4\nn_sample = 4\nsample_store = 40\nn_epochs = 1\n").unwrap();
    (prepared, config)
}

#[test]
fn train_evaluate_recommend_end_to_end() {
    let d = scratch("gru4rec");
    let (prepared, config) = tiny_run_inputs(&d);
    let run = d.join("run");
    let (p, r, c) = (prepared.to_str().unwrap(), run.to_str().unwrap(), config.to_str().unwrap());
    let o = seqrec(&["train", "--data", p, "--run", r, "--config", c, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["epochs"], 1);
    for f in ["config.toml", "run.json", "metrics.jsonl", "best.safetensors", "last.safetensors", "vocab/item.parquet"]
    {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let o = seqrec(&["evaluate", "--run", r, "--data", p, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m, out["test"]);
    // sessions never seen in training, one item unknown to the model.
    std::fs::write(d.join("new.tsv"), "SessionId\tItemId\tTime\n900\t11\t1\n900\t12\t2\n901\t4242\t3\n901\t13\t4\n")
        .unwrap();
    for ext in ["csv", "json", "parquet"] {
        let recs = d.join(format!("recs.{ext}"));
        let (i, o_) = (d.join("new.tsv"), recs.to_str().unwrap().to_owned());
        let o = seqrec(&["recommend", "--run", r, "--input", i.to_str().unwrap(), "-k", "3", "--out", &o_]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(recs.is_file());
    }
    let csv = std::fs::read_to_string(d.join("recs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 3, "{csv}");
    assert!(csv.starts_with("session,rank,item,score\n900,1,"), "{csv}");
}

#[test]
fn bad_train_inputs_are_clear_errors() {
    let d = scratch("gru4rec-bad");
    let (prepared, _) = tiny_run_inputs(&d);
    let p = prepared.to_str().unwrap();
    let run = d.join("run");
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "layers = [8]\nbatch_size = \"thirty-two\"\n").unwrap();
    let o = seqrec(&["train", "--data", p, "--run", run.to_str().unwrap(), "--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("bad.toml") && t.contains("line 2, column 14") && t.contains("batch_size"), "{t}");
    std::fs::write(&bad, "loss = \"hinge\"\n").unwrap();
    let o = seqrec(&["train", "--data", p, "--run", run.to_str().unwrap(), "--config", bad.to_str().unwrap()]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("unknown loss `hinge`, expected one of cross-entropy"), "{t}");
    // a header-only (empty) session file for recommend
    std::fs::write(d.join("empty.tsv"), "SessionId\tItemId\tTime\n").unwrap();
    let o = seqrec(&["evaluate", "--run", run.to_str().unwrap(), "--data", p]);
    assert!(!o.status.success() && text(&o).contains("not a run directory"), "{}", text(&o));
    let (_, config) = tiny_run_inputs(&d);
    let o = seqrec(&["train", "--data", p, "--run", run.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let empty = d.join("empty.tsv");
    let recs = d.join("recs.csv");
    let o = seqrec(&[
        "recommend",
        "--run",
        run.to_str().unwrap(),
        "--input",
        empty.to_str().unwrap(),
        "--out",
        recs.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("empty.tsv") && t.contains("no data lines"), "{t}");
    assert!(!recs.exists(), "no output file on error");
}
