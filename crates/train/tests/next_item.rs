//! Next-item window models end to end on a small planted set: each user
//! walks a ring of items with their own stride, so the next item follows
//! from the last two and popularity knows nothing. SASRec and the
//! embedding-GRU must find it under full ranking; the most-popular baseline
//! must not; the protocol options are reported; bad input is named.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;
use seqrec_data::rng::Rng;
use seqrec_train::next_item::{train_next_item, NextItemConfig, NextItemOptions, NextItemOutcome};
use seqrec_train::run::RunDir;
use seqrec_train::RunConfig;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqrec-next-item-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const N_ITEMS: usize = 30;

/// 150 users × 24 events on a ring of 30 items, stride 1, 2 or 3 per user;
/// one user (id 999) with a single event.
fn dataset(dir: &Path) -> Dataset {
    let mut rng = Rng::new(5);
    let mut csv = String::from("user,item,ts\n");
    for u in 0..150usize {
        let stride = 1 + u % 3;
        let mut item = rng.below(N_ITEMS as u64) as usize;
        for k in 0..24usize {
            let _ = writeln!(csv, "{},{},{}", u + 1, item + 1, 1_000 + u * 100 + k);
            item = (item + stride) % N_ITEMS;
        }
    }
    let _ = writeln!(csv, "999,1,5");
    std::fs::write(dir.join("events.csv"), csv).unwrap();
    let recipe = "name = \"ring\"\nformat = \"csv\"\n\
        [interactions]\npath = \"events.csv\"\n\
        columns = { seq = \"user\", item = \"item\", time = \"ts\" }\n\
        [split]\nkind = \"leave_last_out\"\nn = 1\nvalid = 1\n";
    let recipe = Recipe::from_toml_str(recipe, &dir.join("recipe.toml")).unwrap().with_dir(dir.to_path_buf());
    seqrec_data::prepare::prepare(&recipe, &dir.join("prepared")).unwrap();
    Dataset::open(&dir.join("prepared")).unwrap()
}

fn config(text: &str) -> NextItemConfig {
    NextItemConfig::from_toml_str(text, Path::new("test.toml")).unwrap()
}

fn run(cfg: &NextItemConfig, data: &Dataset, dir: &Path) -> NextItemOutcome {
    let opts = NextItemOptions { device: candle_core::Device::Cpu, progress: false };
    train_next_item(cfg, data, &RunDir::create(dir).unwrap(), &opts).unwrap()
}

fn hr10(o: &NextItemOutcome) -> f64 {
    o.test.as_ref().and_then(|m| m.recall(10)).unwrap()
}

#[test]
fn window_models_find_the_planted_stride_and_popularity_cannot() {
    let dir = scratch("planted");
    let data = dataset(&dir);
    let pop = run(&config("model = \"most-popular\""), &data, &dir.join("pop"));
    assert_eq!(pop.test.as_ref().unwrap().n, 150, "one test target per user with a history");
    // popularity over a ring where every item is about equally frequent: near 10/30.
    assert!(hr10(&pop) < 0.5, "most popular HR@10 {}", hr10(&pop));

    let sasrec = run(
        &config(
            "model = \"sasrec\"\nlen = 8\nembedding = 32\nblocks = 1\nheads = 2\ndropout = 0.1\n\
             learning_rate = 0.005\nbatch_size = 16\nn_epochs = 60\npatience = 20\n",
        ),
        &data,
        &dir.join("sasrec"),
    );
    assert!(hr10(&sasrec) > 0.9, "SASRec HR@10 {} (popularity {})", hr10(&sasrec), hr10(&pop));
    assert!(sasrec.protocol.starts_with("full ranking"));
    // removing candidates can only lift the target's rank.
    let excl = sasrec.test_excluding_history.as_ref().expect("reported beside full ranking");
    assert!(excl.recall(10).unwrap() >= hr10(&sasrec) && excl.n == 150);
    assert_eq!(sasrec.split["kind"], "leave_last_out");

    let gru = run(
        &config(
            "model = \"emb-gru\"\nlen = 6\nembedding = 16\nlayers = [32]\ndropout = 0.0\n\
             learning_rate = 0.01\nclip_norm = 5.0\nbatch_size = 64\nn_epochs = 25\npatience = 10\n",
        ),
        &data,
        &dir.join("gru"),
    );
    assert!(hr10(&gru) > 0.9, "embedding-GRU HR@10 {}", hr10(&gru));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("gru/results.json")).unwrap()).unwrap();
    assert_eq!(results["users_without_training_target"], 1, "user 999 has one event and is reported");
    assert!(dir.join("gru/best.safetensors").exists());
}

#[test]
fn bidirectional_sampled_losses_and_protocol_options_run_and_are_reported() {
    let dir = scratch("options");
    let data = dataset(&dir);
    let out = run(
        &config(
            "model = \"emb-gru\"\nlen = 5\nembedding = 8\nlayers = [8, 8]\nbidirectional = true\n\
             recurrent_dropout = 0.1\nloss = \"sampled-ce\"\nn_negatives = 8\nn_epochs = 2\n\
             exclude_history = true\n[sampled_eval]\nn = 5\ndraw = \"popularity\"\n",
        ),
        &data,
        &dir.join("bi"),
    );
    assert!(out.protocol.starts_with("SAMPLED") && out.protocol.contains("excluded"), "{}", out.protocol);
    assert!(out.test_excluding_history.is_none(), "the configured protocol already excludes");
    let m = out.test.as_ref().unwrap();
    assert!(m.recall(10).unwrap() >= 0.0 && m.n == 150);
    let bce = run(
        &config("model = \"sasrec\"\nlen = 5\nembedding = 8\nloss = \"bce\"\nn_epochs = 2\noptimizer = \"nadam\"\n"),
        &data,
        &dir.join("bce"),
    );
    assert_eq!(bce.epochs, 2);
}

#[test]
fn bad_configs_name_their_key() {
    let bad = |text: &str, key: &str| {
        let err = NextItemConfig::from_toml_str(text, Path::new("bad.toml")).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("bad.toml"), "{text}: {err}");
    };
    bad("model = \"sasrec\"\nlen = 0\n", "`len`");
    bad("model = \"emb-gru\"\nbidirectional = true\ntrain_windows = \"shifted\"\n", "`bidirectional`");
    bad("model = \"sasrec\"\nlen = 10\nstride = 11\n", "key `stride`");
    bad("model = \"sasrec\"\ndtype = \"bf16\"\n", "`dtype`");
    bad("model = \"sasrec\"\nloss = \"hinge\"\n", "`loss`");
    bad("model = \"sasrec\"\nvalid_metric = \"ndcg@50\"\n", "`valid_metric`");
    bad("model = \"sasrec\"\nembedding = 10\nheads = 3\n", "`heads`");
    bad("model = \"sasrec\"\nlenn = 3\n", "lenn");
}
