//! Rating runs end to end on a small synthetic MovieLens-like set with a
//! planted structure (user and item biases plus a slowly drifting mood
//! that only the recent ratings reveal): MF and BST beat the median
//! baseline, the kept checkpoint reproduces the reported test metrics,
//! bad configs name their key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seqrec_data::dataset::Dataset;
use seqrec_data::recipe::Recipe;
use seqrec_data::rng::Rng;
use seqrec_train::rating::{train_rating, RatingConfig, RatingOptions, RatingOutcome};
use seqrec_train::run::RunDir;
use seqrec_train::RunConfig;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqrec-rating-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ratings per user in the generated sets (written user by user, in time order).
const PER_USER: usize = 40;

/// 160 users × 40 ratings of 60 movies; rating = round(3.4 + b_u + b_i + mood), clamped to 1..5.
fn dataset(dir: &Path) -> Dataset {
    dataset_split(dir, "kind = \"leave_last_out\"\nn = 1\nvalid = 1\n")
}

fn dataset_split(dir: &Path, split: &str) -> Dataset {
    dataset_with(dir, split, |_, planted| planted.round().clamp(1.0, 5.0))
}

/// The planted set with each rating drawn by `rate(rng, planted value)`.
fn dataset_with(dir: &Path, split: &str, mut rate: impl FnMut(&mut Rng, f64) -> f64) -> Dataset {
    let mut rng = Rng::new(11);
    let (n_users, n_items) = (160usize, 60usize);
    let item_bias: Vec<f64> = (0..n_items).map(|_| rng.normal() * 0.6).collect();
    let mut ratings = String::from("user,movie,stars,ts\n");
    let mut users = String::from("user,gender,age\n");
    for u in 0..n_users {
        let bias = rng.normal() * 0.6;
        let _ = writeln!(users, "{},{},{}", u + 1, if u % 2 == 0 { "F" } else { "M" }, 18 + (u % 5) * 10);
        let mut mood = rng.normal() * 0.8;
        for k in 0..PER_USER {
            mood = 0.9 * mood + 0.35 * rng.normal();
            let i = rng.below(n_items as u64) as usize;
            let r = rate(&mut rng, 3.4 + bias + item_bias[i] + mood);
            let _ = writeln!(ratings, "{},{},{r},{}", u + 1, i + 1, 1_000_000 + u * 10_000 + k * 60);
        }
    }
    std::fs::write(dir.join("ratings.csv"), ratings).unwrap();
    std::fs::write(dir.join("users.csv"), users).unwrap();
    let recipe = "name = \"tiny-ratings\"\nformat = \"csv\"\n\
        [interactions]\npath = \"ratings.csv\"\n\
        columns = { seq = \"user\", item = \"movie\", rating = \"stars\", time = \"ts\" }\n\
        rating_range = [1, 5]\n\
        [users]\npath = \"users.csv\"\nkey = \"user\"\nfeatures = [\"gender\", \"age\"]\n\
        [split]\n";
    let recipe = format!("{recipe}{split}");
    let recipe = Recipe::from_toml_str(&recipe, &dir.join("recipe.toml")).unwrap().with_dir(dir.to_path_buf());
    seqrec_data::prepare::prepare(&recipe, &dir.join("prepared")).unwrap();
    Dataset::open(&dir.join("prepared")).unwrap()
}

fn config(text: &str) -> RatingConfig {
    RatingConfig::from_toml_str(text, Path::new("test.toml")).unwrap()
}

fn run(cfg: &RatingConfig, data: &Dataset, dir: &Path) -> RatingOutcome {
    let opts = RatingOptions { device: candle_core::Device::Cpu, progress: false };
    train_rating(cfg, data, &RunDir::create(dir).unwrap(), &opts).unwrap()
}

fn mae(o: &RatingOutcome) -> f64 {
    o.test.as_ref().and_then(|m| m.mae).unwrap()
}

#[test]
fn mf_and_bst_beat_the_median_on_planted_ratings() {
    let dir = scratch("planted");
    let data = dataset(&dir);
    let median = run(&config("model = \"median\""), &data, &dir.join("median"));
    assert_eq!(median.test.as_ref().unwrap().n, 160, "one test rating per user");
    assert_eq!(median.split["kind"], "leave_last_out");

    let mf = run(
        &config(
            "model = \"mf\"\nn_factors = 8\ninit_std = 0.01\nlearning_rate = 0.02\nbatch_size = 64\nn_epochs = 12\n",
        ),
        &data,
        &dir.join("mf"),
    );
    assert!(mae(&mf) < mae(&median) - 0.02, "MF {} vs median {}", mae(&mf), mae(&median));

    let bst_cfg = config(
        "model = \"bst\"\nlen = 6\nembedding = 16\nheads = 2\nffn_dim = 32\nmlp = [32, 16, 8]\n\
         batch_size = 64\nn_epochs = 8\nlearning_rate = 0.005\n",
    );
    let bst = run(&bst_cfg, &data, &dir.join("bst"));
    assert_eq!(bst.user_features, vec!["gender".to_string(), "age".to_string()], "every categorical column by default");
    eprintln!("test MAE: median {:.4}, MF {:.4}, BST {:.4}", mae(&median), mae(&mf), mae(&bst));
    assert!(mae(&bst) < mae(&median) - 0.02, "BST {} vs median {}", mae(&bst), mae(&median));
    // The mood is visible only in the recent ratings: BST must use them.
    assert!(mae(&bst) < 0.95 * mae(&mf), "BST {} vs MF {}", mae(&bst), mae(&mf));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bst/results.json")).unwrap()).unwrap();
    assert_eq!(results["test"]["mae"].as_f64().unwrap(), mae(&bst));
    let lines = std::fs::read_to_string(dir.join("bst/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), bst.epochs);
}

/// Ratings that ignore user and movie: 5 stars with probability 0.75, else 1
/// (so that nearly every user's own median is 5 as well). The best constant
/// under absolute error is the median (5), under squared error the mean
/// (≈ 4). An MF trained with `loss = "mae"` must score the test set like the
/// constant 5, one trained with `mse` like the training mean — both computed
/// here from the ratings file (the last rating of each user is test, the
/// second last validation).
#[test]
fn the_mae_loss_predicts_the_median_and_the_mse_loss_the_mean() {
    let dir = scratch("loss");
    let data = dataset_with(&dir, "kind = \"leave_last_out\"\nn = 1\nvalid = 1\n", |rng, _| {
        if rng.uniform() < 0.75 {
            5.0
        } else {
            1.0
        }
    });
    let text = std::fs::read_to_string(dir.join("ratings.csv")).unwrap();
    let stars: Vec<f64> = text.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    let users = || stars.chunks(PER_USER);
    let train: Vec<f64> = users().flat_map(|u| u[..PER_USER - 2].to_vec()).collect();
    let test: Vec<f64> = users().map(|u| u[PER_USER - 1]).collect();
    let mean = train.iter().sum::<f64>() / train.len() as f64;
    let mae_of = |c: f64| test.iter().map(|r| (r - c).abs()).sum::<f64>() / test.len() as f64;
    let mf = |loss: &str| {
        let text = format!(
            "model = \"mf\"\nn_factors = 1\ninit_std = 0.01\nlearning_rate = 0.05\nbatch_size = 64\n\
             n_epochs = 6\npatience = 0\nloss = \"{loss}\"\n"
        );
        run(&config(&text), &data, &dir.join(loss))
    };
    let (l1, l2) = (mf("mae"), mf("mse"));
    eprintln!(
        "test MAE: MF-mae {:.4} (constant 5: {:.4}), MF-mse {:.4} (train mean {mean:.3}: {:.4})",
        mae(&l1),
        mae_of(5.0),
        mae(&l2),
        mae_of(mean)
    );
    assert!((mae(&l1) - mae_of(5.0)).abs() < 0.03, "MF-mae {} vs {}", mae(&l1), mae_of(5.0));
    assert!((mae(&l2) - mae_of(mean)).abs() < 0.03, "MF-mse {} vs {}", mae(&l2), mae_of(mean));
}

#[test]
fn a_global_time_cut_is_named_in_the_results() {
    let dir = scratch("time-cut");
    // Users are 10,000 s apart: the cut puts the last 40 users' ratings in test.
    let data = dataset_split(&dir, "kind = \"time_cut\"\ntest_from = 2200000000\nvalid_from = 2100000000\n");
    let median = run(&config("model = \"median\""), &data, &dir.join("median"));
    assert_eq!(median.split["kind"], "time_cut");
    let mf = run(&config("model = \"mf\"\nn_factors = 4\nn_epochs = 2\nbatch_size = 64\n"), &data, &dir.join("mf"));
    assert_eq!(mf.split["kind"], "time_cut");
    assert!(mf.test.as_ref().unwrap().n > 1000, "{:?}", mf.test);
}

#[test]
fn bad_rating_configs_name_the_key() {
    let cases = [
        ("model = \"svd\"", "key `model`"),
        ("model = \"bst\"\nheads = 7", "`heads`"),
        ("model = \"mf\"\nschedule = \"cosine\"", "key `schedule`"),
        ("model = \"mf\"\nloss = \"huber\"", "key `loss`"),
        ("model = \"mf\"\nbatch_size = \"big\"", "batch_size"),
        ("model = \"mf\"\nlearning_rte = 0.1", "learning_rte"),
        ("model = \"mf\"\noutput_range = [5, 1]", "key `output_range`"),
    ];
    for (text, needle) in cases {
        let e = RatingConfig::from_toml_str(text, Path::new("bad.toml")).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn a_dataset_without_ratings_is_refused() {
    let dir = scratch("no-ratings");
    std::fs::write(
        dir.join("clicks.tsv"),
        "SessionId\tItemId\tTime\n1\t1\t1\n1\t2\t2\n1\t3\t3\n2\t1\t4\n2\t2\t5\n2\t3\t6\n",
    )
    .unwrap();
    let recipe = "name = \"clicks\"\nformat = \"gru4rec\"\n[interactions]\npath = \"clicks.tsv\"\n\
                  [split]\nkind = \"leave_last_out\"\nn = 1\n";
    let recipe = Recipe::from_toml_str(recipe, &dir.join("recipe.toml")).unwrap().with_dir(dir.clone());
    seqrec_data::prepare::prepare(&recipe, &dir.join("prepared")).unwrap();
    let data = Dataset::open(&dir.join("prepared")).unwrap();
    let opts = RatingOptions { device: candle_core::Device::Cpu, progress: false };
    let e = train_rating(&config("model = \"mf\""), &data, &RunDir::create(&dir.join("run")).unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no ratings"), "{e}");
}
