//! GRU4Rec against the authors' PyTorch code, weight for weight: the same
//! initial weights, the same hand-made batches, their forward pass, loss
//! and `IndexedAdagradM` recorded by `xtask/reference/one_step.py` in the
//! fixtures under `tests/data/`; ours must give the same loss, the same
//! gradients and the same weights after the steps; and, from their
//! `batch_eval`, the same Recall and MRR with either tie mode.
//!
//! Their constrained and embedding modes use `torch.nn.GRUCell`, which is
//! our `reset_after` form: `c = tanh(x·Wc + b_c + r ⊙ (h·Uc + b'))`. Their
//! layout maps onto ours as: `weight_ih` `[3h, in]` in gate order r, z, n
//! → our `wx` `[in, 3h]` in order c, r, z (transposed); `weight_hh` →
//! `wrz` and `wh`; `bias_ih` → `b`, `bias_hh` → `brz` (gates) and `bhn`
//! (candidate); their one-hot first layer (`GRUEmbedding`) is our original
//! form in our layout already; item ids are ours minus one (our id 0 is
//! padding). `torch.nn.GRUCell`
//! also mixes the other way round, `h' = (1 − z) ⊙ n + z ⊙ h`, where we
//! (and the original GRU4Rec) take `h' = (1 − z) ⊙ h + z ⊙ c`: the same
//! function with the update gate's pre-activation negated, so their
//! update-gate weights and biases map onto ours negated (and their
//! gradients too; Adagrad's step is odd in the gradient, so the runs stay
//! the same).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use seqrec_data::rng::Rng;
use seqrec_data::split::Part;
use seqrec_data::SequenceStore;
use seqrec_eval::TieMode;
use seqrec_models::gru4rec::{FinalAct, Gru4Rec, Gru4RecScorer, Gru4RecShape, StepConfig, TrainBatch};
use seqrec_models::loss::Loss;
use seqrec_models::next_item::{evaluate_sessions, EvalConfig};
use seqrec_models::optim::{Optimizer, OptimizerKind};

struct Fixture {
    t: BTreeMap<String, Tensor>,
}

impl Fixture {
    fn read(path: &Path) -> Fixture {
        let t = Tensor::read_npz(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture { t: t.into_iter().collect() }
    }
    fn get(&self, name: &str) -> &Tensor {
        self.t.get(name).unwrap_or_else(|| panic!("fixture lacks `{name}`"))
    }
    fn f32(&self, name: &str) -> f32 {
        self.get(name).to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
    }
    /// Their item indices as our ids.
    fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name).to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().iter().map(|&i| i as u32 + 1).collect()
    }
    fn has(&self, name: &str) -> bool {
        self.t.contains_key(name)
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// `[n, d]` → `[n + 1, d]` with a zero padding row first.
fn pad_row(t: &Tensor) -> Tensor {
    let d = t.dim(1).unwrap();
    Tensor::cat(&[&Tensor::zeros((1, d), DType::F32, t.device()).unwrap(), t], 0).unwrap()
}

/// Their parameters (prefix `init.`, `final.` or `grad0.`) in our names and
/// layout (the mapping of the module comment).
fn theirs_as_ours(f: &Fixture, prefix: &str, layers: &[usize]) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    out.insert("wy".to_owned(), pad_row(f.get(&format!("{prefix}Wy.weight"))));
    out.insert("by".to_owned(), pad_row(f.get(&format!("{prefix}By.weight"))));
    if f.has(&format!("{prefix}E.weight")) {
        out.insert("embedding".to_owned(), pad_row(f.get(&format!("{prefix}E.weight"))));
    }
    let one_hot = f.has(&format!("{prefix}GE.Wx0.weight"));
    if one_hot {
        // their one-hot first layer is the original form in our layout already
        out.insert("layer0.wx".to_owned(), pad_row(f.get(&format!("{prefix}GE.Wx0.weight"))));
        out.insert("layer0.wrz".to_owned(), f.get(&format!("{prefix}GE.Wrz0")).clone());
        out.insert("layer0.wh".to_owned(), f.get(&format!("{prefix}GE.Wh0")).clone());
        out.insert("layer0.b".to_owned(), f.get(&format!("{prefix}GE.Bh0")).clone());
    }
    for (i, &h) in layers.iter().enumerate().skip(usize::from(one_hot)) {
        let g = |n: &str| f.get(&format!("{prefix}G.{i}.{n}")).clone();
        let (wih, whh, bih, bhh) = (g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"));
        let gate = |w: &Tensor, k: usize| w.narrow(0, k * h, h).unwrap().t().unwrap();
        // ours: columns c, r, z; theirs: rows r, z, n
        let neg = |t: Tensor| t.neg().unwrap();
        let wx = Tensor::cat(&[&gate(&wih, 2), &gate(&wih, 0), &neg(gate(&wih, 1))], 1).unwrap().contiguous().unwrap();
        let wrz = Tensor::cat(&[&gate(&whh, 0), &neg(gate(&whh, 1))], 1).unwrap().contiguous().unwrap();
        let wh = gate(&whh, 2).contiguous().unwrap();
        let part = |b: &Tensor, k: usize| b.narrow(0, k * h, h).unwrap();
        let b = Tensor::cat(&[&part(&bih, 2), &part(&bih, 0), &neg(part(&bih, 1))], 0).unwrap();
        let brz = Tensor::cat(&[&part(&bhh, 0), &neg(part(&bhh, 1))], 0).unwrap();
        out.insert(format!("layer{i}.wx"), wx);
        out.insert(format!("layer{i}.wrz"), wrz);
        out.insert(format!("layer{i}.wh"), wh);
        out.insert(format!("layer{i}.b"), b);
        out.insert(format!("layer{i}.bhn"), part(&bhh, 2));
        out.insert(format!("layer{i}.brz"), brz);
    }
    out
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

struct Run {
    model: Gru4Rec,
    layers: Vec<usize>,
    n_ids: usize,
}

fn start(f: &Fixture, layers: Vec<usize>, constrained: bool, embedding: usize) -> Run {
    let n_ids = f.get("init.Wy.weight").dim(0).unwrap() + 1;
    let shape = Gru4RecShape {
        layers: layers.clone(),
        embedding,
        constrained_embedding: constrained,
        dropout_p_embed: 0.0,
        dropout_p_hidden: 0.0,
        final_act: if bpr_max(f) { FinalAct::Elu(f.f32("elu")) } else { FinalAct::Linear },
        reset_after: true,
    };
    let mut model = Gru4Rec::new(shape, n_ids, 1, &Device::Cpu).unwrap();
    model.load_tensors(&theirs_as_ours(f, "init.", &layers), Path::new("fixture")).unwrap();
    Run { model, layers, n_ids }
}

/// Whether the fixture's loss is their BPR-max (with their ELU as the final
/// activation) rather than cross-entropy.
fn bpr_max(f: &Fixture) -> bool {
    f.has("bpr_max") && f.get("bpr_max").to_dtype(DType::I64).unwrap().to_scalar::<i64>().unwrap() == 1
}

/// The ids of one recorded step and, with logQ, the log popularity of each
/// output column as their correction takes it: targets `log pop`, samples
/// `alpha · log pop` (`P0[Y[M:]] ** sample_alpha`, alpha 0.5 in `one_step.py`).
struct StepIds {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    samples: Vec<u32>,
    log_pop: Option<Vec<f32>>,
}

impl StepIds {
    fn read(f: &Fixture, step: usize) -> StepIds {
        let ids = |what: &str| f.ids(&format!("step{step}.{what}"));
        let (inputs, targets, samples) = (ids("inputs"), ids("targets"), ids("samples"));
        let log_pop = (f.f32("logq") > 0.0).then(|| {
            let pop = f.get("pop").to_vec1::<f32>().unwrap();
            let alpha = 0.5f32;
            let mut v: Vec<f32> = targets.iter().map(|&t| pop[t as usize - 1].ln()).collect();
            v.extend(samples.iter().map(|&s| alpha * pop[s as usize - 1].ln()));
            v
        });
        StepIds { inputs, targets, samples, log_pop }
    }

    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            inputs: &self.inputs,
            targets: &self.targets,
            samples: &self.samples,
            log_pop: self.log_pop.as_deref(),
        }
    }
}

fn check(name: &str, layers: Vec<usize>, constrained: bool, embedding: usize) {
    let f = Fixture::read(&fixture(name));
    let mut run = start(&f, layers, constrained, embedding);
    let cfg = StepConfig {
        loss: if bpr_max(&f) { Loss::BprMax { bpreg: f.f32("bpreg") } } else { Loss::CrossEntropy },
        logq: f.f32("logq"),
        batch_size: f.get("batch").to_dtype(DType::I64).unwrap().to_scalar::<i64>().unwrap() as usize,
    };
    let losses = f.get("losses").to_vec1::<f32>().unwrap();
    let mut state = run.model.zero_state(cfg.batch_size).unwrap();
    let mut rng = Rng::new(0);

    // Step 0: loss and every gradient.
    let first = StepIds::read(&f, 0);
    let (loss, grads) = run.model.gradients(first.batch(), &mut state.clone(), &cfg, &mut rng).unwrap();
    assert!(
        (loss - losses[0]).abs() <= 1e-5 * (1.0 + losses[0].abs()),
        "{name} step 0: loss {loss} vs theirs {}",
        losses[0]
    );
    let want = theirs_as_ours(&f, "grad0.", &run.layers);
    for g in grads {
        let mine = match &g.rows {
            // sparse rows summed into a dense table
            Some(rows) => {
                let d = g.grad.dim(1).unwrap();
                let mut acc = vec![0f32; run.n_ids * d];
                let v = g.grad.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
                for (r, row) in rows.iter().zip(&v) {
                    for (a, x) in acc[*r as usize * d..][..d].iter_mut().zip(row) {
                        *a += x;
                    }
                }
                Tensor::from_vec(acc, (run.n_ids, d), &Device::Cpu).unwrap()
            }
            None => g.grad.clone(),
        };
        let theirs = &want[&g.name];
        let mine = mine.reshape(theirs.shape()).unwrap();
        let diff = max_abs_diff(&mine, theirs);
        let scale = max_abs(theirs);
        assert!(
            diff <= 1e-5 * (1.0 + scale),
            "{name} step 0: gradient of `{}` differs by {diff} (theirs up to {scale})",
            g.name
        );
        eprintln!("{name} grad {}: max |diff| {diff:.2e}, max |theirs| {scale:.2e}", g.name);
    }

    // Every step through the optimiser; then the weights.
    let lr = f.f32("lr");
    let momentum = f.f32("momentum");
    let mut opt = Optimizer::new(OptimizerKind::Adagrad, lr, momentum).unwrap();
    for (step, &want_loss) in losses.iter().enumerate() {
        let ids = StepIds::read(&f, step);
        let loss = run.model.train_step(ids.batch(), &mut state, &cfg, &mut opt, &mut rng).unwrap();
        eprintln!("{name} step {step}: loss {loss} theirs {want_loss}");
        assert!(
            (loss - want_loss).abs() <= 1e-4 * (1.0 + want_loss.abs()),
            "{name} step {step}: loss {loss} vs theirs {want_loss}"
        );
    }
    let want = theirs_as_ours(&f, "final.", &run.layers);
    let mine = run.model.named_tensors().unwrap();
    for (key, theirs) in &want {
        let table =
            key == "wy" || key == "by" || key == "embedding" || (key == "layer0.wx" && !constrained && embedding == 0);
        let m = if table { mine[key].narrow(0, 1, run.n_ids - 1).unwrap() } else { mine[key].clone() };
        let t = if table { theirs.narrow(0, 1, run.n_ids - 1).unwrap() } else { theirs.clone() };
        let (diff, scale) = (max_abs_diff(&m, &t), max_abs(&t));
        eprintln!("{name} final {key}: max |diff| {diff:.2e}, max |theirs| {scale:.2e}");
        assert!(
            diff <= 1e-5 * (1.0 + scale),
            "{name}: `{key}` after the steps differs by {diff} (theirs up to {scale})"
        );
    }
}

#[test]
fn constrained_embedding_matches_the_authors_step_for_step() {
    check("gru4rec_ref_constrained.npz", vec![8], true, 0);
}

#[test]
fn two_layers_with_logq_match_the_authors_step_for_step() {
    check("gru4rec_ref_constrained_2l_logq.npz", vec![8, 8], true, 0);
}

#[test]
fn bpr_max_with_elu_matches_the_authors_step_for_step() {
    check("gru4rec_ref_bpr_max.npz", vec![8], true, 0);
}

#[test]
fn separate_embedding_matches_the_authors_step_for_step() {
    check("gru4rec_ref_embedding.npz", vec![8], false, 8);
}

#[test]
fn one_hot_input_matches_the_authors_step_for_step() {
    check("gru4rec_ref_one_hot.npz", vec![8], false, 0);
}

/// Their `batch_eval` (`xtask/reference/eval_ref.py`): the same model, the
/// same test sessions (two pairs of items tied everywhere, and often
/// targets), Recall and MRR at 1, 5 and 20 in their `standard` and
/// `conservative` modes; ours at several evaluation batch sizes.
#[test]
fn evaluation_matches_the_authors_batch_eval() {
    let f = Fixture::read(&fixture("gru4rec_ref_eval.npz"));
    let run = start(&f, vec![8], true, 0);
    let to_usize = |name: &str| -> Vec<usize> {
        f.get(name).to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().iter().map(|&x| x as usize).collect()
    };
    let offsets = to_usize("offsets");
    let items: Vec<u32> = f.ids("items");
    let n = items.len();
    let store = SequenceStore {
        seq_ids: (1..offsets.len() as u32).collect(),
        offsets,
        items,
        // sessions are stored in time order
        times: (0..n as i64).collect(),
        ..Default::default()
    };
    let parts = vec![Part::Test; n];
    let ks = to_usize("cutoffs");
    for (mode, tie_mode) in [("standard", TieMode::Optimistic), ("conservative", TieMode::Pessimistic)] {
        let recall = f.get(&format!("{mode}.recall")).to_vec1::<f64>().unwrap();
        let mrr = f.get(&format!("{mode}.mrr")).to_vec1::<f64>().unwrap();
        for batch in [1, 6, 64] {
            let cfg = EvalConfig { ks: ks.clone(), tie_mode };
            let mut scorer = Gru4RecScorer::new(&run.model);
            let got = evaluate_sessions(&store, &parts, Part::Test, &mut scorer, batch, &cfg).unwrap();
            for (i, &k) in ks.iter().enumerate() {
                let (r, m) = (got.recall(k).unwrap(), got.mrr(k).unwrap());
                eprintln!(
                    "{mode} batch {batch} @{k}: recall {r:.6} theirs {:.6}, mrr {m:.6} theirs {:.6}",
                    recall[i], mrr[i]
                );
                assert!((r - recall[i]).abs() < 1e-9, "{mode} batch {batch}: Recall@{k} {r} vs theirs {}", recall[i]);
                assert!((m - mrr[i]).abs() < 1e-6, "{mode} batch {batch}: MRR@{k} {m} vs theirs {}", mrr[i]);
            }
        }
    }
    // the fixture's ties do separate the two modes
    let standard = f.get("standard.mrr").to_vec1::<f64>().unwrap();
    let conservative = f.get("conservative.mrr").to_vec1::<f64>().unwrap();
    assert!(standard.iter().zip(&conservative).any(|(s, c)| s > c));
}
