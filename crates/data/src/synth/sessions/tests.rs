//! Tests of the session generator: determinism, output format, empirical
//! statistics against the configuration, the split protocol, and the oracle
//! against simple baselines.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use seqrec_eval::TieMode;

use super::*;
use crate::io::scratch_dir;

fn default_data() -> &'static SyntheticSessions {
    static DATA: OnceLock<SyntheticSessions> = OnceLock::new();
    DATA.get_or_init(|| SessionsConfig::default().generate().unwrap())
}

fn small(seed: u64) -> SessionsConfig {
    SessionsConfig { n_items: 100, n_topics: 5, n_sessions: 300, seed, ..SessionsConfig::default() }
}

#[test]
fn same_seed_same_data_other_seed_other_data() {
    let a = small(7).generate().unwrap();
    let b = small(7).generate().unwrap();
    let c = small(8).generate().unwrap();
    assert_eq!((&a.items, &a.times_ms, &a.offsets), (&b.items, &b.times_ms, &b.offsets));
    assert_ne!(a.items, c.items);
    let d = scratch_dir("synth-sessions");
    a.write_gru4rec_tsv(&d.join("a.tsv")).unwrap();
    b.write_gru4rec_tsv(&d.join("b.tsv")).unwrap();
    assert_eq!(std::fs::read(d.join("a.tsv")).unwrap(), std::fs::read(d.join("b.tsv")).unwrap());
}

#[test]
fn tsv_format_and_time_order() {
    let data = small(3).generate().unwrap();
    let d = scratch_dir("synth-sessions");
    let path = d.join("s.tsv");
    data.write_gru4rec_tsv(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("SessionId\tItemId\tTime"));
    let first = lines.next().unwrap();
    let t0 = data.times_ms[0];
    assert_eq!(first, format!("1\t{}\t{}.{:03}", data.items[0], t0 / 1000, t0 % 1000));
    assert_eq!(text.lines().count(), 1 + data.items.len());
    // session ids increase with start time; times are sorted inside sessions.
    let starts: Vec<i64> = (0..data.n_sessions()).map(|s| data.times_of(s)[0]).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]));
    assert!((0..data.n_sessions()).all(|s| data.times_of(s).windows(2).all(|w| w[0] <= w[1])));
    let span = starts.last().unwrap() - starts[0];
    assert!(span <= 30 * DAY_MS && span > 25 * DAY_MS, "span {span}");
    assert!(data.items.iter().all(|&x| (1..=100).contains(&x)));
}

#[test]
fn empirical_statistics_match_the_configuration() {
    let data = default_data();
    let cfg = &data.config;
    let later: Vec<Origin> = data.origins.iter().copied().filter(|&o| o != Origin::First).collect();
    let share = |o: Origin| later.iter().filter(|&&x| x == o).count() as f64 / later.len() as f64;
    assert!((share(Origin::Repeat) - cfg.repeat_prob).abs() < 0.01, "repeat {}", share(Origin::Repeat));
    let succ = (1.0 - cfg.repeat_prob) * cfg.successor_prob;
    assert!((share(Origin::Successor) - succ).abs() < 0.01, "successor {}", share(Origin::Successor));
    // length 2 + min(G, max_len - 2), E[min(G, c)] = sum_{g=1..c} (1 - p)^g.
    let p = 1.0 / (1.0 + cfg.mean_extra_len);
    let want = 2.0 + (1..=cfg.max_len - 2).map(|g| (1.0 - p).powi(g as i32)).sum::<f64>();
    let mean = data.items.len() as f64 / data.n_sessions() as f64;
    assert!((mean - want).abs() < 0.05, "mean length {mean} vs {want}");
    assert!((0..data.n_sessions()).all(|s| data.items_of(s).len() <= cfg.max_len));
    // every item of a session belongs to the session's topic.
    for s in (0..data.n_sessions()).step_by(97) {
        let z = data.topics[s];
        assert!(data.items_of(s).iter().all(|&x| data.world.topics_of(x).iter().any(|p| p.0 == z)));
    }
}

#[test]
fn first_items_follow_zipf_within_the_topic() {
    let data = default_data();
    let w = &data.world;
    let t = 0; // the most likely topic
    let mut counts: FxHashMap<u32, usize> = FxHashMap::default();
    let mut n = 0;
    for s in 0..data.n_sessions() {
        if data.topics[s] as usize == t {
            *counts.entry(data.items_of(s)[0]).or_default() += 1;
            n += 1;
        }
    }
    // the members' popularity is Zipf(s) by position; total variation to the draws is small.
    let pop = w.popularity(t);
    assert!((pop[0] / pop[1] - 2f64.powf(data.config.zipf_s)).abs() < 1e-9);
    let tv: f64 = w
        .members(t)
        .iter()
        .zip(pop)
        .map(|(m, &p)| (counts.get(m).copied().unwrap_or(0) as f64 / n as f64 - p).abs())
        .sum::<f64>()
        / 2.0;
    assert!(tv < 0.06, "total variation {tv} over {n} sessions");
    // log-log slope of frequency against popularity rank over the top 8 ≈ -s.
    let (xs, ys): (Vec<f64>, Vec<f64>) = (0..8)
        .map(|r| {
            let c = counts.get(&w.members(t)[r]).copied().unwrap_or(1) as f64;
            (((r + 1) as f64).ln(), c.ln())
        })
        .unzip();
    let (mx, my) = (xs.iter().sum::<f64>() / 8.0, ys.iter().sum::<f64>() / 8.0);
    let slope = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
        / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
    assert!((slope + data.config.zipf_s).abs() < 0.25, "slope {slope}");
}

/// Most popular item on the training sessions.
struct MostPopular(Vec<f64>);

impl NextItemScorer for MostPopular {
    fn score(&self, _prefix: &[u32], out: &mut [f64]) {
        out.copy_from_slice(&self.0);
    }
}

/// Training transition counts from the previous item, popularity breaking ties.
struct PreviousItemSuccessor {
    pop: Vec<f64>,
    next: FxHashMap<u32, Vec<(u32, f64)>>,
}

impl NextItemScorer for PreviousItemSuccessor {
    fn score(&self, prefix: &[u32], out: &mut [f64]) {
        let total: f64 = self.pop.iter().sum();
        out.iter_mut().zip(&self.pop).for_each(|(o, p)| *o = p / (total + 1.0));
        if let Some(next) = prefix.last().and_then(|x| self.next.get(x)) {
            next.iter().for_each(|&(y, c)| out[y as usize] += c);
        }
    }
}

#[test]
fn oracle_beats_popularity_and_successor_baselines() {
    let data = default_data();
    let split = data.last_day_split();
    let n = data.world.n_items();
    let mut pop = vec![0.0; n + 1];
    let mut pairs: FxHashMap<(u32, u32), f64> = FxHashMap::default();
    for &s in &split.train {
        let items = data.items_of(s);
        items.iter().for_each(|&x| pop[x as usize] += 1.0);
        items.windows(2).for_each(|w| *pairs.entry((w[0], w[1])).or_default() += 1.0);
    }
    let mut next: FxHashMap<u32, Vec<(u32, f64)>> = FxHashMap::default();
    pairs.into_iter().for_each(|((a, b), c)| next.entry(a).or_default().push((b, c)));
    let ks = [20];
    let popular = evaluate_next_item(&split, n, &ks, TieMode::Median, &MostPopular(pop.clone()));
    let successor = evaluate_next_item(&split, n, &ks, TieMode::Median, &PreviousItemSuccessor { pop, next });
    let report = data.oracle_report();
    assert_eq!(report.n_targets as usize, split.n_targets());
    assert!(report.n_targets > 3000, "{} targets", report.n_targets);
    for (name, base) in [("popular", &popular), ("successor", &successor)] {
        let (r, m) = (base.recall(20).unwrap(), base.mrr(20).unwrap());
        assert!(report.recall_at_20 > r + 0.02, "{name}: oracle recall {} vs {r}", report.recall_at_20);
        assert!(report.mrr_at_20 > m + 0.01, "{name}: oracle mrr {} vs {m}", report.mrr_at_20);
    }
    // the successor baseline is a real competitor, not a strawman.
    assert!(successor.recall(20).unwrap() > popular.recall(20).unwrap());
}

#[test]
fn split_removes_unseen_items_and_drops_short_sessions() {
    let world = SessionsConfig { n_items: 6, n_topics: 1, ..small(1) }.build_world().unwrap();
    let day = DAY_MS;
    // sessions 0, 1 train (start day 0); 2, 3 test (start within the last day).
    let sessions: [(&[u32], i64); 4] = [(&[1, 2, 3], 0), (&[3, 4], 1), (&[1, 5, 2], 2 * day), (&[6, 1], 2 * day + 5)];
    let mut data = SyntheticSessions {
        config: SessionsConfig::default(),
        world,
        offsets: vec![0],
        items: vec![],
        times_ms: vec![],
        topics: vec![0; 4],
        origins: vec![],
    };
    for (items, start) in sessions {
        for (j, &x) in items.iter().enumerate() {
            data.items.push(x);
            data.times_ms.push(start + j as i64);
            data.origins.push(Origin::Popular);
        }
        data.offsets.push(data.items.len());
    }
    let split = data.last_day_split();
    assert_eq!(split.test_from_ms, 2 * day + 6 - day);
    assert_eq!(split.train, vec![0, 1]);
    // item 5 and item 6 are unseen in training: session 2 keeps [1, 2], session 3 is dropped.
    assert_eq!(split.test, vec![2]);
    assert_eq!(split.test_session(0), &[1, 2]);
    assert_eq!((split.n_removed_events, split.n_dropped_sessions, split.n_targets()), (2, 1, 1));
}

#[test]
fn oracle_json_and_config_defaults() {
    let data = small(5).generate().unwrap();
    let d = scratch_dir("synth-sessions");
    data.write_oracle_json(&d.join("oracle.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("oracle.json")).unwrap()).unwrap();
    for key in ["recall@20", "mrr@20", "n_targets", "config"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["config"]["n_items"], 100);
    let partial: SessionsConfig = toml::from_str("n_items = 50\nseed = 9").unwrap();
    assert_eq!(partial, SessionsConfig { n_items: 50, seed: 9, ..SessionsConfig::default() });
    assert!(toml::from_str::<SessionsConfig>("n_itemz = 5").is_err());
    let bad = SessionsConfig { repeat_prob: 1.5, ..SessionsConfig::default() };
    assert!(matches!(bad.generate(), Err(Error::Config { key, .. }) if key == "repeat_prob"));
    for bad in [
        SessionsConfig { n_topics: 0, ..SessionsConfig::default() },
        SessionsConfig { n_topics: 3001, ..SessionsConfig::default() },
        SessionsConfig { days: f64::NAN, ..SessionsConfig::default() },
        SessionsConfig { mean_gap_s: 1e300, ..SessionsConfig::default() },
        SessionsConfig { start_unix_s: i64::MAX, ..SessionsConfig::default() },
        SessionsConfig { max_len: 1, ..SessionsConfig::default() },
        SessionsConfig { zipf_s: -1.0, ..SessionsConfig::default() },
    ] {
        assert!(matches!(bad.validate(), Err(Error::Config { .. })), "{bad:?}");
    }
}

#[test]
fn oracle_prediction_is_a_distribution_on_generated_prefixes() {
    let data = small(11).generate().unwrap();
    for s in 0..20 {
        let items = data.items_of(s);
        let p = data.world.predict_next(&items[..items.len() - 1]).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p[*items.last().unwrap() as usize] > 0.0);
        let post = data.world.posterior(items).unwrap();
        assert!(post[data.topics[s] as usize] > 0.0);
    }
}
