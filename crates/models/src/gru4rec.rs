//! GRU4Rec (Hidasi et al., arXiv 1511.06939; Hidasi & Karatzoglou, arXiv
//! 1706.03847) as the authors define it.
//!
//! - **GRU in the original form**: `r = σ(x·Wr + h·Ur + br)`,
//!   `z = σ(x·Wz + h·Uz + bz)`, `c = tanh(x·Wc + (r ⊙ h)·Uc + bc)`,
//!   `h' = (1 − z) ⊙ h + z ⊙ c` — the reset gate multiplies the state
//!   *before* the recurrent product. Input weights are stored `[in, 3h]` with
//!   the gate blocks `[c | r | z]`, recurrent weights `[h, 2h]` (`[r | z]`)
//!   and `[h, h]` (`c`), as in the authors' code.
//! - **Inputs**: one-hot equivalent (the first layer's input weights are an
//!   `[items, 3h]` table whose rows are gathered, never a one-hot product),
//!   a separate embedding, or the constrained embedding (the input rows are
//!   the output table's rows).
//! - **Initialisation**: Glorot-uniform per gate block, `±√(6 / (fan_in + h))`
//!   for every `[fan_in, h]` block, biases zero.
//! - **Dropout** (drop probabilities): `dropout_p_embed` on the embedding (in
//!   one-hot mode, on the first layer's output, which is that mode's
//!   embedding), `dropout_p_hidden` on the other layers' outputs; the state
//!   carried to the next step is the dropped-out output, as the authors'.
//! - **Training output** scores only `[targets of the batch ‖ shared
//!   samples]`; the final activation is applied to those scores before the
//!   loss. Full-catalogue scores at evaluation are the raw scores: every
//!   final activation is non-decreasing, so ranks differ at most by ties the
//!   activation would create (relu's zeros), which we do not create.
//! - **Sparse updates**: gathered rows are the autograd leaves, so a step's
//!   gradient never has the catalogue's size; [`Optimizer::sparse`] updates
//!   only those rows, repeated ids summed.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use seqrec_data::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::loss::{kernel_kind, Loss};
use crate::next_item::SessionScorer;
use crate::optim::Optimizer;

/// Activation applied to the sampled training scores before the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FinalAct {
    /// Identity.
    Linear,
    /// max(x, 0).
    Relu,
    /// tanh(x).
    Tanh,
    /// x for x ≥ 0, a·x below (`leaky-a`).
    Leaky(f32),
    /// x for x ≥ 0, a·(eˣ − 1) below (`elu-a`).
    Elu(f32),
}

impl FinalAct {
    /// Parses `linear`, `relu`, `tanh`, `leaky-<a>`, `elu-<a>`.
    pub fn parse(s: &str) -> Option<FinalAct> {
        match s {
            "linear" => Some(FinalAct::Linear),
            "relu" => Some(FinalAct::Relu),
            "tanh" => Some(FinalAct::Tanh),
            _ => {
                let (kind, a) = s.split_once('-')?;
                let a: f32 = a.parse().ok().filter(|a: &f32| a.is_finite())?;
                match kind {
                    "leaky" => Some(FinalAct::Leaky(a)),
                    "elu" => Some(FinalAct::Elu(a)),
                    _ => None,
                }
            }
        }
    }

    /// The name [`FinalAct::parse`] reads.
    pub fn name(&self) -> String {
        match self {
            FinalAct::Linear => "linear".into(),
            FinalAct::Relu => "relu".into(),
            FinalAct::Tanh => "tanh".into(),
            FinalAct::Leaky(a) => format!("leaky-{a}"),
            FinalAct::Elu(a) => format!("elu-{a}"),
        }
    }

    fn kernel_act(&self) -> seqrec_kernels::loss::Act {
        use seqrec_kernels::loss::Act;
        match *self {
            FinalAct::Linear => Act::Linear,
            FinalAct::Relu => Act::Relu,
            FinalAct::Tanh => Act::Tanh,
            FinalAct::Leaky(a) => Act::Leaky(a),
            FinalAct::Elu(a) => Act::Elu(a),
        }
    }
}

impl Serialize for FinalAct {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for FinalAct {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FinalAct::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown final activation `{s}`, expected linear, relu, tanh, leaky-<a> or elu-<a>"
            ))
        })
    }
}

/// The network's shape (the papers' key names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gru4RecShape {
    /// Hidden sizes of the GRU layers.
    pub layers: Vec<usize>,
    /// Size of a separate input embedding; 0 = none (one-hot equivalent input).
    pub embedding: usize,
    /// Input rows shared with the output table (overrides `embedding`).
    pub constrained_embedding: bool,
    /// Drop probability on the embedding.
    pub dropout_p_embed: f32,
    /// Drop probability on the hidden layers' outputs.
    pub dropout_p_hidden: f32,
    /// Activation of the sampled training scores.
    pub final_act: FinalAct,
}

impl Gru4RecShape {
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.layers.is_empty() || self.layers.contains(&0) {
            return bad(format!("layers: found {:?}, expected one or more positive sizes", self.layers));
        }
        for (key, p) in [("dropout_p_embed", self.dropout_p_embed), ("dropout_p_hidden", self.dropout_p_hidden)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{key}: found {p}, expected a drop probability in [0, 1)"));
            }
        }
        Ok(())
    }

    fn input(&self) -> Input {
        if self.constrained_embedding {
            Input::Constrained
        } else if self.embedding > 0 {
            Input::Embedding
        } else {
            Input::OneHot
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    OneHot,
    Embedding,
    Constrained,
}

/// One GRU layer's dense weights.
#[derive(Debug)]
struct Layer {
    /// `[in, 3h]` input weights; `None` for the first layer in one-hot mode
    /// (its input weights are the item table `input`).
    wx: Option<Var>,
    /// `[h, 2h]` recurrent weights of the reset and update gates.
    wrz: Var,
    /// `[h, h]` recurrent weights of the candidate.
    wh: Var,
    /// `[3h]` biases `[c | r | z]`.
    b: Var,
    size: usize,
}

/// A GRU4Rec network: parameters on one device.
#[derive(Debug)]
pub struct Gru4Rec {
    shape: Gru4RecShape,
    n_ids: usize,
    device: Device,
    /// One-hot mode: the first layer's `[ids, 3h]` input weights; embedding
    /// mode: the `[ids, e]` embedding; constrained: none.
    input: Option<Tensor>,
    layers: Vec<Layer>,
    /// `[ids, d]` output item weights.
    wy: Tensor,
    /// `[ids, 1]` output item biases.
    by: Tensor,
}

fn glorot_blocks(rng: &mut Rng, rows: usize, fan_in: usize, h: usize, blocks: usize, dev: &Device) -> Result<Tensor> {
    let bound = (6.0 / (fan_in + h) as f64).sqrt();
    let mut v = Vec::with_capacity(rows * h * blocks);
    for _ in 0..rows * h * blocks {
        v.push(((rng.uniform() * 2.0 - 1.0) * bound) as f32);
    }
    Ok(Tensor::from_vec(v, (rows, h * blocks), dev)?)
}

/// σ(x) through tanh (finite for any finite x).
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)?)
}

/// Inverted-dropout mask (`0` or `1 / (1 − p)`) of a `[rows, width]` tensor.
fn dropout_mask(rng: &mut Rng, rows: usize, width: usize, p: f32, dev: &Device) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let v: Vec<f32> = (0..rows * width).map(|_| if rng.uniform() < f64::from(p) { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(v, (rows, width), dev)?)
}

/// One mini-batch of session-parallel training.
#[derive(Debug, Clone, Copy)]
pub struct TrainBatch<'a> {
    /// Input item of each row.
    pub inputs: &'a [u32],
    /// Target item of each row (the next event).
    pub targets: &'a [u32],
    /// Extra negatives shared by the rows.
    pub samples: &'a [u32],
    /// log of each column's popularity for logQ (`targets.len() + samples.len()` values).
    pub log_pop: Option<&'a [f32]>,
}

/// Settings of a training step.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    /// Loss over the sampled scores.
    pub loss: Loss,
    /// logQ weight (0: off).
    pub logq: f32,
    /// The configured batch size the loss is divided by.
    pub batch_size: usize,
}

impl Gru4Rec {
    /// A freshly initialised network over `n_ids` ids (padding id 0 included).
    ///
    /// # Errors
    /// An impossible shape, fewer than 2 ids, or a tensor error.
    pub fn new(shape: Gru4RecShape, n_ids: usize, seed: u64, device: &Device) -> Result<Self> {
        shape.check()?;
        if n_ids < 2 {
            return Err(ModelError::Invalid(format!("GRU4Rec: found {n_ids} ids, expected padding and one item at least")));
        }
        let dev = device;
        let mut rng = Rng::fork(seed, 0x6752_7534);
        let d_out = *shape.layers.last().expect("checked non-empty");
        let (input, mut fan_in) = match shape.input() {
            Input::OneHot => (Some(glorot_blocks(&mut rng, n_ids, n_ids, shape.layers[0], 3, dev)?), n_ids),
            Input::Embedding => {
                (Some(glorot_blocks(&mut rng, n_ids, n_ids, shape.embedding, 1, dev)?), shape.embedding)
            }
            Input::Constrained => (None, d_out),
        };
        let mut layers = Vec::with_capacity(shape.layers.len());
        for (i, &h) in shape.layers.iter().enumerate() {
            let wx = if i == 0 && shape.input() == Input::OneHot {
                None
            } else {
                Some(Var::from_tensor(&glorot_blocks(&mut rng, fan_in, fan_in, h, 3, dev)?)?)
            };
            let wrz = Var::from_tensor(&glorot_blocks(&mut rng, h, h, h, 2, dev)?)?;
            let wh = Var::from_tensor(&glorot_blocks(&mut rng, h, h, h, 1, dev)?)?;
            let b = Var::from_tensor(&Tensor::zeros(3 * h, DType::F32, dev)?)?;
            layers.push(Layer { wx, wrz, wh, b, size: h });
            fan_in = h;
        }
        let wy = glorot_blocks(&mut rng, n_ids, n_ids, d_out, 1, dev)?;
        let by = Tensor::zeros((n_ids, 1), DType::F32, dev)?;
        Ok(Gru4Rec { shape, n_ids, device: dev.clone(), input, layers, wy, by })
    }

    /// The network's shape.
    pub fn shape(&self) -> &Gru4RecShape {
        &self.shape
    }

    /// Number of ids (rows of the item tables, padding included).
    pub fn n_ids(&self) -> usize {
        self.n_ids
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Zero hidden states for `rows` rows, one per layer.
    ///
    /// # Errors
    /// A tensor error.
    pub fn zero_state(&self, rows: usize) -> Result<Vec<Tensor>> {
        self.layers.iter().map(|l| Ok(Tensor::zeros((rows, l.size), DType::F32, &self.device)?)).collect()
    }

    fn ids(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&x| x == 0 || x as usize >= self.n_ids) {
            return Err(ModelError::Invalid(format!("GRU4Rec: item id {bad}, expected 1..{}", self.n_ids)));
        }
        Ok(Tensor::from_slice(ids, ids.len(), &self.device)?)
    }

    /// Runs the layers on the input representation `x0` (gathered rows),
    /// replacing `state` with the new outputs; returns the last output.
    fn layers_forward(&self, x0: &Tensor, state: &mut [Tensor], mut dropout: Option<&mut Rng>) -> Result<Tensor> {
        let rows = x0.dim(0)?;
        let one_hot = self.shape.input() == Input::OneHot;
        let mut x = x0.clone();
        if !one_hot && self.shape.dropout_p_embed > 0.0 {
            if let Some(rng) = dropout.as_deref_mut() {
                x = (x * dropout_mask(rng, rows, x0.dim(1)?, self.shape.dropout_p_embed, &self.device)?)?;
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.size;
            let vx = match &layer.wx {
                Some(wx) => x.matmul(wx.as_tensor())?,
                None => x.clone(),
            }
            .broadcast_add(layer.b.as_tensor())?;
            let prev = &state[i];
            let vrz = prev.matmul(layer.wrz.as_tensor())?;
            let r = sigmoid(&(vx.narrow(1, h, h)? + vrz.narrow(1, 0, h)?)?)?;
            let z = sigmoid(&(vx.narrow(1, 2 * h, h)? + vrz.narrow(1, h, h)?)?)?;
            let c = ((r * prev)?.matmul(layer.wh.as_tensor())? + vx.narrow(1, 0, h)?)?.tanh()?;
            let mut out = (prev + (z * (c - prev)?)?)?;
            let p = if i == 0 && one_hot { self.shape.dropout_p_embed } else { self.shape.dropout_p_hidden };
            if p > 0.0 {
                if let Some(rng) = dropout.as_deref_mut() {
                    out = (out * dropout_mask(rng, rows, h, p, &self.device)?)?;
                }
            }
            state[i] = out.detach();
            x = out;
        }
        Ok(x)
    }

    /// One training step: forward over `batch`, the sampled loss, backward and
    /// the optimiser's update. `state` holds the (detached) hidden states of
    /// the rows and is replaced by the new ones. Returns the loss.
    ///
    /// # Errors
    /// Ids outside `1..n_ids`, rows that disagree, or a tensor error.
    pub fn train_step(
        &mut self,
        batch: TrainBatch<'_>,
        state: &mut [Tensor],
        cfg: &StepConfig,
        opt: &mut Optimizer,
        dropout_rng: &mut Rng,
    ) -> Result<f32> {
        let rows = batch.inputs.len();
        if rows == 0 || batch.targets.len() != rows {
            return Err(ModelError::Invalid(format!(
                "GRU4Rec step: {rows} inputs and {} targets, expected the same positive number",
                batch.targets.len()
            )));
        }
        let mut out_ids = Vec::with_capacity(rows + batch.samples.len());
        out_ids.extend_from_slice(batch.targets);
        out_ids.extend_from_slice(batch.samples);
        let in_t = self.ids(batch.inputs)?;
        let out_t = self.ids(&out_ids)?;
        let n_out = out_ids.len();
        // The gathered input rows are an autograd leaf: their gradient has the batch's size.
        let input_table = match self.shape.input() {
            Input::Constrained => &self.wy,
            _ => self.input.as_ref().expect("one-hot and embedding modes have an input table"),
        };
        let x_leaf = Var::from_tensor(&input_table.index_select(&in_t, 0)?)?;
        let o = self.wy.index_select(&out_t, 0)?;
        let bias = self.by.index_select(&out_t, 0)?.flatten_all()?.to_vec1::<f32>()?;
        let y = self.layers_forward(x_leaf.as_tensor(), state, Some(dropout_rng))?;
        // The output layer by hand: scores, act, loss and their gradients in one
        // pass (`seqrec_kernels::loss`), then dO = dSᵀ·y and dy = dS·O. Autograd
        // only sees the GRU, through the surrogate Σ y ⊙ dy.
        let y_const = y.detach();
        let scores = y_const.matmul(&o.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        let spec = seqrec_kernels::loss::LossSpec {
            kind: kernel_kind(&cfg.loss),
            act: self.shape.final_act.kernel_act(),
            log_pop: match batch.log_pop {
                Some(lp) if cfg.logq > 0.0 => Some((lp, cfg.logq)),
                _ => None,
            },
            batch_size: cfg.batch_size,
        };
        if cfg.batch_size == 0 {
            return Err(ModelError::Invalid("GRU4Rec step: batch size 0, expected the configured batch size".into()));
        }
        if let Some((lp, _)) = spec.log_pop {
            if lp.len() != n_out {
                let m = format!("GRU4Rec step: {} log popularities for {n_out} output columns", lp.len());
                return Err(ModelError::Invalid(m));
            }
        }
        let mut d_scores = vec![0f32; rows * n_out];
        let value = seqrec_kernels::loss::sampled_loss_cpu(&spec, &scores, &bias, n_out, &mut d_scores) as f32;
        let mut d_bias = vec![0f32; n_out];
        for row in d_scores.chunks(n_out) {
            for (acc, &g) in d_bias.iter_mut().zip(row) {
                *acc += g;
            }
        }
        let d_scores = Tensor::from_vec(d_scores, (rows, n_out), &self.device)?;
        let d_o = d_scores.t()?.matmul(&y_const)?;
        let d_y = d_scores.matmul(&o)?;
        let grads = (y * d_y)?.sum_all()?.backward()?;
        opt.begin_step();
        let d_x = grads.get(x_leaf.as_tensor());
        match self.shape.input() {
            Input::Constrained => {
                let mut ids = batch.inputs.to_vec();
                ids.extend_from_slice(&out_ids);
                let g = match d_x {
                    Some(dx) => Tensor::cat(&[dx, &d_o], 0)?,
                    None => Tensor::cat(&[&Tensor::zeros((rows, d_o.dim(1)?), DType::F32, &self.device)?, &d_o], 0)?,
                };
                opt.sparse("wy", &self.wy, &g, &ids)?;
            }
            input => {
                let name = if input == Input::OneHot { "layer0.wx" } else { "embedding" };
                if let Some(dx) = d_x {
                    opt.sparse(name, input_table, dx, batch.inputs)?;
                }
                opt.sparse("wy", &self.wy, &d_o, &out_ids)?;
            }
        }
        let d_bias = Tensor::from_vec(d_bias, (n_out, 1), &self.device)?;
        opt.sparse("by", &self.by, &d_bias, &out_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, var) in layer_vars(layer) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    opt.dense(&format!("layer{i}.{name}"), var.as_tensor(), g)?;
                }
            }
        }
        Ok(value)
    }

    /// Feeds `inputs` (one item per row of `state`) and returns the raw scores
    /// of every id, `[rows, n_ids]` (column 0, padding, is meaningless).
    ///
    /// # Errors
    /// Ids outside `1..n_ids` or a tensor error.
    pub fn score_all(&self, inputs: &[u32], state: &mut [Tensor]) -> Result<Tensor> {
        let h = self.step_state(inputs, state)?;
        Ok(h.matmul(&self.wy.t()?)?.broadcast_add(&self.by.t()?)?)
    }

    /// Feeds `inputs` without scoring (state only).
    ///
    /// # Errors
    /// As [`Gru4Rec::score_all`].
    pub fn feed(&self, inputs: &[u32], state: &mut [Tensor]) -> Result<()> {
        self.step_state(inputs, state).map(|_| ())
    }

    /// Feeds `inputs` without scoring; returns the last layer's output.
    fn step_state(&self, inputs: &[u32], state: &mut [Tensor]) -> Result<Tensor> {
        let ids = self.ids(inputs)?;
        let table = match self.shape.input() {
            Input::Constrained => &self.wy,
            _ => self.input.as_ref().expect("one-hot and embedding modes have an input table"),
        };
        let x0 = table.index_select(&ids, 0)?;
        self.layers_forward(&x0, state, None)
    }

    /// Every parameter by name (for checkpoints).
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        if let Some(t) = &self.input {
            let name = if self.shape.input() == Input::OneHot { "layer0.wx" } else { "embedding" };
            out.insert(name.to_owned(), t.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, var) in layer_vars(layer) {
                out.insert(format!("layer{i}.{name}"), var.as_tensor().clone());
            }
        }
        out.insert("wy".to_owned(), self.wy.clone());
        out.insert("by".to_owned(), self.by.clone());
        out
    }

    /// Overwrites every parameter with the tensors of `saved` (same names and shapes).
    ///
    /// # Errors
    /// A missing name or a shape that differs, naming both.
    pub fn load_tensors(&mut self, saved: &BTreeMap<String, Tensor>, source: &Path) -> Result<()> {
        for (name, mine) in self.named_tensors() {
            let Some(t) = saved.get(&name) else {
                return Err(ModelError::Invalid(format!(
                    "{}: checkpoint lacks tensor `{name}`, expected the parameters of this model",
                    source.display()
                )));
            };
            if t.dims() != mine.dims() {
                return Err(ModelError::Invalid(format!(
                    "{}: tensor `{name}` has shape {:?}, expected {:?} (a checkpoint of another dataset or model shape?)",
                    source.display(),
                    t.dims(),
                    mine.dims()
                )));
            }
            let t = t.to_device(&self.device)?.to_dtype(DType::F32)?;
            // in place, so every clone of the parameter sees the loaded values.
            mine.slice_set(&t, 0, 0)?;
        }
        Ok(())
    }

    /// Copies rows of `other` (same shape except the number of ids) into this
    /// network: `map[new_id] = Some(old_id)` copies that item's rows; dense
    /// weights are copied whole. For retraining on a grown vocabulary.
    ///
    /// # Errors
    /// Different layer shapes or a tensor error.
    pub fn copy_from(&mut self, other: &Gru4Rec, map: &[Option<u32>]) -> Result<()> {
        if other.shape != self.shape {
            return Err(ModelError::Invalid("retraining: the saved model has another shape".into()));
        }
        let (new_rows, old_rows): (Vec<u32>, Vec<u32>) =
            map.iter().enumerate().filter_map(|(n, o)| o.map(|o| (n as u32, o))).unzip();
        let mine = self.named_tensors();
        for (name, theirs) in other.named_tensors() {
            let dst = &mine[&name];
            if theirs.dims() == dst.dims() && !is_item_table(&name) {
                dst.slice_set(&theirs, 0, 0)?;
            } else if !new_rows.is_empty() {
                let old = Tensor::from_slice(&old_rows, old_rows.len(), &self.device)?;
                let rows = theirs.index_select(&old, 0)?;
                let new = Tensor::from_slice(&new_rows, new_rows.len(), &self.device)?;
                let updated = dst.index_add(&new, &(rows - dst.index_select(&new, 0)?)?, 0)?;
                dst.slice_set(&updated, 0, 0)?;
            }
        }
        Ok(())
    }
}

fn is_item_table(name: &str) -> bool {
    matches!(name, "wy" | "by" | "embedding" | "layer0.wx")
}

fn layer_vars(layer: &Layer) -> Vec<(&'static str, &Var)> {
    let mut v = Vec::with_capacity(4);
    if let Some(wx) = &layer.wx {
        v.push(("wx", wx));
    }
    v.push(("wrz", &layer.wrz));
    v.push(("wh", &layer.wh));
    v.push(("b", &layer.b));
    v
}

/// Hidden-state bookkeeping of session-parallel batches: zero the rows that
/// start a session, keep the rows that continue.
///
/// # Errors
/// A tensor error.
pub fn adjust_state(state: &mut [Tensor], keep: Option<&[usize]>, reset: &[usize]) -> Result<()> {
    for s in state.iter_mut() {
        if let Some(keep) = keep {
            let dev = s.device().clone();
            let idx: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
            *s = s.index_select(&Tensor::from_slice(&idx, idx.len(), &dev)?, 0)?;
        }
        if !reset.is_empty() {
            let rows = s.dim(0)?;
            let mut mask = vec![1f32; rows];
            for &r in reset {
                mask[r] = 0.0;
            }
            let mask = Tensor::from_vec(mask, (rows, 1), s.device())?;
            *s = s.broadcast_mul(&mask)?;
        }
    }
    Ok(())
}

/// A trained GRU4Rec as a [`SessionScorer`] for the full-ranking evaluation
/// and for `recommend`.
#[derive(Debug)]
pub struct Gru4RecScorer<'a> {
    model: &'a Gru4Rec,
    state: Vec<Tensor>,
}

impl<'a> Gru4RecScorer<'a> {
    /// A scorer over `model` (no slots until [`SessionScorer::start`]).
    pub fn new(model: &'a Gru4Rec) -> Self {
        Gru4RecScorer { model, state: Vec::new() }
    }
}

impl SessionScorer for Gru4RecScorer<'_> {
    type Score = f32;
    type Error = ModelError;

    fn n_ids(&self) -> usize {
        self.model.n_ids
    }

    fn start(&mut self, rows: usize) -> Result<()> {
        self.state = self.model.zero_state(rows)?;
        Ok(())
    }

    fn gather(&mut self, keep: &[usize]) -> Result<()> {
        adjust_state(&mut self.state, Some(keep), &[])
    }

    fn reset(&mut self, rows: &[usize]) -> Result<()> {
        adjust_state(&mut self.state, None, rows)
    }

    fn step(&mut self, inputs: &[u32], scores: &mut [f32]) -> Result<()> {
        let s = self.model.score_all(inputs, &mut self.state)?;
        let v = s.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != scores.len() {
            return Err(ModelError::Invalid(format!("GRU4Rec scorer: {} scores for a buffer of {}", v.len(), scores.len())));
        }
        scores.copy_from_slice(&v);
        Ok(())
    }
}
