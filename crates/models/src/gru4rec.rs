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
//! - **Backward by hand**: the state is detached after every step, so one
//!   step's graph is short and fixed; the gradients are written out
//!   ([`Gru4Rec::gradients`], checked against finite differences) instead of
//!   taken from candle's autograd, which allocated and summed a zero tensor
//!   per node (a third of a step at 480 units).
//! - **Sparse updates**: gradients of item tables are only the gathered rows,
//!   so a step's gradient never has the catalogue's size;
//!   [`Optimizer::sparse`] updates only those rows, repeated ids summed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use seqrec_data::rng::Rng;
use seqrec_kernels::act::{sigmoid, tanh};
use seqrec_kernels::matmul::{
    add_to_rows, column_sums, gather_rows, matmul as mm, matmul_pair, product_rows, scores_rows, scores_rows_append,
};
use seqrec_kernels::optim::{dense_step_outer, dense_step_outer_product, Rule};
use seqrec_kernels::{gru, probe};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::loss::{kernel_kind, Loss};
use crate::next_item::{SessionScorer, TargetCounts};
use crate::nn::dropout_mask;
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
    /// Apply the reset gate after the recurrent product, `c = tanh(x·Wc +
    /// r ⊙ (h·Uc + b'))`, as `torch.nn.GRUCell` (which the authors' PyTorch
    /// port uses for every layer except a one-hot first layer). Off: the
    /// original form.
    #[serde(default)]
    pub reset_after: bool,
}

impl Gru4RecShape {
    /// Checks the sizes and drop probabilities; the error names the key.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for the first bad key.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.layers.is_empty() || self.layers.contains(&0) {
            return bad(format!("key `layers`: found {:?}, expected one or more positive sizes", self.layers));
        }
        for (key, p) in [("dropout_p_embed", self.dropout_p_embed), ("dropout_p_hidden", self.dropout_p_hidden)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("key `{key}`: found {p}, expected a drop probability in [0, 1)"));
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
    wx: Option<Tensor>,
    /// `[h, 2h]` recurrent weights of the reset and update gates.
    wrz: Tensor,
    /// `[h, h]` recurrent weights of the candidate.
    wh: Tensor,
    /// `[3h]` biases `[c | r | z]`.
    b: Tensor,
    /// `[h]` bias inside the reset product (`reset_after` only).
    bhn: Option<Tensor>,
    /// `[2h]` recurrent biases `[r | z]` (`reset_after` only), added to
    /// `b`'s: `torch.nn.GRUCell` has a bias on each side of the gates, each
    /// stepped by the optimiser, which moves their sum twice as far as one
    /// bias would; kept so that the form is theirs step for step.
    brz: Option<Tensor>,
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
    /// The device path: the loss on the device
    /// ([`seqrec_kernels::loss::sampled_loss_grad`]) and rank counts in
    /// evaluation; on by default off the CPU, where it saves host copies.
    /// (The fused GRU stages of `seqrec_kernels::gru` run on every device.)
    device_ops: bool,
    /// Whether CPU training steps defer the GRU weights' updates ([`Deferred`]).
    defer_updates: bool,
    /// The GRU weight updates the last training step left to the next one.
    deferred: Mutex<Option<Deferred>>,
}

/// The dense GRU weight updates of a CPU training step, held over to the
/// next step's forward pass: there each weight is stepped a block of rows at
/// a time and the block multiplied into the forward product at once
/// (`seqrec_kernels::optim::dense_step_outer_product`), so the weights come
/// from memory once for both instead of once each (≈ −3% of a
/// setting (b) step, see docs/benchmarks.md). Anything else that reads the
/// weights first applies them ([`Gru4Rec::settle`]), so no caller sees
/// weights a step behind. The parameters are the same as updating at once
/// (the same blocks, rule and state); the forward products differ from an
/// undeferred step's in the order of their sums only.
#[derive(Debug)]
struct Deferred {
    /// The rule of the step that computed the gradients (its learning rate
    /// and Adam's step number).
    rule: Rule,
    /// Parameter name → its optimiser state and gradient `aᵀ·b` as `(a, b)`.
    /// The factors share storage with the step's cached activations and
    /// hidden states, which nothing writes in place (`adjust_state` builds
    /// new tensors); an in-place write to a state between steps would
    /// change a held gradient.
    grads: BTreeMap<String, DeferredGrad>,
}

/// One deferred update: the parameter's optimiser state and its gradient in product form.
#[derive(Debug)]
struct DeferredGrad {
    state: Tensor,
    a: Tensor,
    b: Tensor,
}

impl Deferred {
    /// Applies the updates not applied yet (each once: they leave the map
    /// as they are applied, so after an error the rest are still held).
    fn apply_all(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        while let Some((name, g)) = self.grads.pop_first() {
            let Some(param) = params.get(&name) else {
                return Err(ModelError::Invalid(format!("GRU4Rec: no parameter `{name}`")));
            };
            dense_step_outer(self.rule, param, &g.state, &g.a, &g.b)?;
        }
        Ok(())
    }
}

fn glorot_blocks(rng: &mut Rng, rows: usize, fan_in: usize, h: usize, blocks: usize, dev: &Device) -> Result<Tensor> {
    let bound = (6.0 / (fan_in + h) as f64).sqrt();
    let mut v = Vec::with_capacity(rows * h * blocks);
    for _ in 0..rows * h * blocks {
        v.push(((rng.uniform() * 2.0 - 1.0) * bound) as f32);
    }
    Ok(Tensor::from_vec(v, (rows, h * blocks), dev)?)
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

/// What the backward pass of one layer needs from its forward pass.
#[derive(Debug)]
struct LayerCache {
    x: Tensor,
    prev: Tensor,
    r: Tensor,
    z: Tensor,
    rh: Tensor,
    c: Tensor,
    mask: Option<Tensor>,
    /// The fused GRU ops' `[r | z | rh | h]` and `[c | out]` (original form).
    fused: Option<(Tensor, Tensor)>,
}

/// The gradient of one parameter from [`Gru4Rec::gradients`].
#[derive(Debug, Clone)]
pub struct ParamGrad {
    /// Parameter name (as in [`Gru4Rec::named_tensors`]).
    pub name: String,
    /// Dense: the whole gradient; sparse: one row per entry of `rows`.
    pub grad: Tensor,
    /// Sparse parameters: the row id of each gradient row (repeats allowed).
    pub rows: Option<Vec<u32>>,
}

/// A parameter's gradient as the backward pass leaves it: materialised, or
/// (on the CPU, for [`Gru4Rec::train_step`]) in product form for the
/// optimiser to compute a block at a time (`seqrec_kernels::optim::OuterGrad`).
#[derive(Debug)]
enum Grad {
    /// Dense: the whole gradient; sparse: one row per id.
    Full(Tensor),
    /// Dense: `aᵀ·b`.
    Product(Tensor, Tensor),
    /// Sparse: the rows `[given ‖ aᵀ·b]`.
    RowsThenProduct(Tensor, Tensor, Tensor),
}

impl Grad {
    fn materialise(self) -> Result<Tensor> {
        Ok(match self {
            Grad::Full(t) => t,
            Grad::Product(a, b) => mm(&a.t()?, &b)?,
            Grad::RowsThenProduct(given, a, b) => Tensor::cat(&[&given, &mm(&a.t()?, &b)?], 0)?,
        })
    }
}

/// A [`Grad`] with its parameter's name and, for item tables, row ids.
#[derive(Debug)]
struct PendingGrad {
    name: String,
    grad: Grad,
    rows: Option<Vec<u32>>,
}

impl PendingGrad {
    fn dense(name: String, grad: Grad) -> Self {
        PendingGrad { name, grad, rows: None }
    }
}

/// The reset-before GRU's `Wh` gradient `rhᵀ·dac` (materialised or in
/// product form) and `dac·Whᵀ`, the gradient of `rh`.
fn wh_and_rh_grads(rh: &Tensor, dac: &Tensor, wh: &Tensor, product_form: bool) -> Result<(Grad, Tensor)> {
    if product_form {
        return Ok((Grad::Product(rh.clone(), dac.clone()), mm(dac, &wh.t()?)?));
    }
    let (d_wh, d_rh) = matmul_pair(&rh.t()?, dac, dac, &wh.t()?)?;
    Ok((Grad::Full(d_wh), d_rh))
}

/// `aᵀ·b`, materialised or left in product form.
fn weight_grad(a: &Tensor, b: &Tensor, product_form: bool) -> Result<Grad> {
    Ok(if product_form { Grad::Product(a.clone(), b.clone()) } else { Grad::Full(mm(&a.t()?, b)?) })
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
            return Err(ModelError::Invalid(format!(
                "GRU4Rec: found {n_ids} ids, expected padding and one item at least"
            )));
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
                Some(glorot_blocks(&mut rng, fan_in, fan_in, h, 3, dev)?)
            };
            let wrz = glorot_blocks(&mut rng, h, h, h, 2, dev)?;
            let wh = glorot_blocks(&mut rng, h, h, h, 1, dev)?;
            let b = Tensor::zeros(3 * h, DType::F32, dev)?;
            // As the authors' port: a one-hot first layer keeps the original form.
            let one_hot_first = i == 0 && shape.input() == Input::OneHot;
            let (bhn, brz) = if shape.reset_after && !one_hot_first {
                (Some(Tensor::zeros(h, DType::F32, dev)?), Some(Tensor::zeros(2 * h, DType::F32, dev)?))
            } else {
                (None, None)
            };
            layers.push(Layer { wx, wrz, wh, b, bhn, brz, size: h });
            fan_in = h;
        }
        let wy = glorot_blocks(&mut rng, n_ids, n_ids, d_out, 1, dev)?;
        let by = Tensor::zeros((n_ids, 1), DType::F32, dev)?;
        Ok(Gru4Rec {
            shape,
            n_ids,
            device: dev.clone(),
            input,
            layers,
            wy,
            by,
            device_ops: !dev.is_cpu(),
            defer_updates: true,
            deferred: Mutex::new(None),
        })
    }

    /// Runs the device path (the loss as a device op, rank counts in
    /// evaluation) whatever the device: the path CUDA takes, testable on the
    /// CPU against the CPU path.
    pub fn set_device_ops(&mut self, on: bool) {
        self.device_ops = on;
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

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&x| x == 0 || x as usize >= self.n_ids) {
            Some(&bad) => Err(ModelError::Invalid(format!("GRU4Rec: item id {bad}, expected 1..{}", self.n_ids))),
            None => Ok(()),
        }
    }

    /// Runs the layers on the input representation `x0` (gathered rows),
    /// replacing `state` with the new outputs; returns the last output.
    fn layers_forward(&self, x0: &Tensor, state: &mut [Tensor], dropout: Option<&mut Rng>) -> Result<Tensor> {
        Ok(self.forward_cached(x0, state, dropout, false, None)?.0)
    }

    /// The layers' forward pass; with `keep`, also what the backward pass needs.
    fn forward_cached(
        &self,
        x0: &Tensor,
        state: &mut [Tensor],
        mut dropout: Option<&mut Rng>,
        keep: bool,
        mut deferred: Option<&mut Deferred>,
    ) -> Result<(Tensor, Option<Tensor>, Vec<LayerCache>)> {
        let has_deferred = deferred.is_some();
        // `lhs · w`, stepping `w` first when its update was deferred.
        let mut product = |name: String, w: &Tensor, lhs: &Tensor| -> Result<Tensor> {
            if let Some(d) = deferred.as_mut() {
                if let Some(g) = d.grads.remove(&name) {
                    return Ok(dense_step_outer_product(d.rule, w, &g.state, (&g.a, &g.b), lhs)?);
                }
            }
            Ok(mm(lhs, w)?)
        };
        let rows = x0.dim(0)?;
        let one_hot = self.shape.input() == Input::OneHot;
        let mut x = x0.clone();
        let mut embed_mask = None;
        if !one_hot && self.shape.dropout_p_embed > 0.0 {
            if let Some(rng) = dropout.as_deref_mut() {
                let m = dropout_mask(rng, &[rows, x0.dim(1)?], self.shape.dropout_p_embed, &self.device)?;
                x = (x * &m)?;
                embed_mask = Some(m);
            }
        }
        let mut caches = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.size;
            let prev = state[i].clone();
            // x·Wx and h·Wrz are independent: one product per thread when small.
            let (vx, vrz) = match &layer.wx {
                Some(wx) if !has_deferred => matmul_pair(&x, wx, &prev, &layer.wrz)?,
                Some(wx) => {
                    (product(format!("layer{i}.wx"), wx, &x)?, product(format!("layer{i}.wrz"), &layer.wrz, &prev)?)
                }
                None => (x.clone(), product(format!("layer{i}.wrz"), &layer.wrz, &prev)?),
            };
            let vx = add_to_rows(&vx, &layer.b)?;
            let (r, z, rh, c, mut out, fused) = match &layer.bhn {
                // The original form: one kernel per element-wise stage
                // instead of ~10 generic ops (seqrec_kernels::gru), on every
                // device. On the CPU they compute what the generic ops did
                // (the same σ and tanh of seqrec_kernels::act, the same
                // operations in the same order: the bench's loss and metrics
                // did not move) and save ≈ 100 µs of small single-threaded
                // ops and allocations per step at 480 units.
                None => {
                    let gates = gru::forward_a(&vx, &vrz, &prev)?;
                    let rh = gates.narrow(1, 2 * h, h)?.contiguous()?;
                    let co = gru::forward_b(&vx, &product(format!("layer{i}.wh"), &layer.wh, &rh)?, &gates)?;
                    let (r, z) = (gates.narrow(1, 0, h)?, gates.narrow(1, h, h)?);
                    let (c, out) = (co.narrow(1, 0, h)?, co.narrow(1, h, h)?.contiguous()?);
                    (r, z, rh, c, out, Some((gates, co)))
                }
                // Reset after the product: rh holds h·Uc + b'.
                Some(bhn) => {
                    let vrz = match &layer.brz {
                        Some(brz) => vrz.broadcast_add(brz)?,
                        None => vrz,
                    };
                    let r = sigmoid(&(vx.narrow(1, h, h)? + vrz.narrow(1, 0, h)?)?)?;
                    let z = sigmoid(&(vx.narrow(1, 2 * h, h)? + vrz.narrow(1, h, h)?)?)?;
                    let vhn = product(format!("layer{i}.wh"), &layer.wh, &prev)?.broadcast_add(bhn)?;
                    let c = tanh(&((&r * &vhn)? + vx.narrow(1, 0, h)?)?)?;
                    let out = (&prev + (&z * (&c - &prev)?)?)?;
                    (r, z, vhn, c, out, None)
                }
            };
            let p = if i == 0 && one_hot { self.shape.dropout_p_embed } else { self.shape.dropout_p_hidden };
            let mut mask = None;
            if p > 0.0 {
                if let Some(rng) = dropout.as_deref_mut() {
                    let m = dropout_mask(rng, &[rows, h], p, &self.device)?;
                    out = (out * &m)?;
                    mask = Some(m);
                }
            }
            state[i] = out.clone();
            if keep {
                caches.push(LayerCache { x: x.clone(), prev, r, z, rh, c, mask, fused });
            }
            x = out;
        }
        if let Some(d) = deferred {
            // Weights no product above read (none in the current layer forms).
            d.apply_all(&self.params())?;
        }
        Ok((x, embed_mask, caches))
    }

    /// The backward pass through the layers by hand (the state is detached,
    /// so nothing flows into the previous step): from `d_y`, the gradient of
    /// the last output, to every layer's weights and the input rows.
    fn backward_layers(
        &self,
        caches: &[LayerCache],
        embed_mask: Option<&Tensor>,
        d_y: Tensor,
        product_form: bool,
        out: &mut Vec<PendingGrad>,
    ) -> Result<Tensor> {
        let mut d = d_y;
        for (i, (layer, cache)) in self.layers.iter().zip(caches).enumerate().rev() {
            let h = layer.size;
            if let Some(m) = &cache.mask {
                d = (d * m)?;
            }
            let (dac, dar, daz) = match (&cache.fused, &layer.bhn) {
                (Some((gates, co)), _) => {
                    let bb = gru::backward_b(&d, gates, co)?;
                    let (dac, daz) = (bb.narrow(1, 0, h)?.contiguous()?, bb.narrow(1, h, h)?.contiguous()?);
                    let (d_wh, d_rh) = wh_and_rh_grads(&cache.rh, &dac, &layer.wh, product_form)?;
                    out.push(PendingGrad::dense(format!("layer{i}.wh"), d_wh));
                    (dac, gru::backward_a(&d_rh, gates)?, daz)
                }
                // Reset after the product: cache.rh is h·Uc + b'.
                (None, Some(_)) => {
                    let dz = (&d * (&cache.c - &cache.prev)?)?;
                    let dc = (&d * &cache.z)?;
                    let dac = (&dc * (1.0 - cache.c.sqr()?)?)?;
                    let dvhn = (&dac * &cache.r)?;
                    out.push(PendingGrad::dense(
                        format!("layer{i}.wh"),
                        weight_grad(&cache.prev, &dvhn, product_form)?,
                    ));
                    out.push(PendingGrad::dense(format!("layer{i}.bhn"), Grad::Full(column_sums(&dvhn)?)));
                    let dr = (&dac * &cache.rh)?;
                    let dar = (dr * (&cache.r * (1.0 - &cache.r)?)?)?;
                    let daz = (dz * (&cache.z * (1.0 - &cache.z)?)?)?;
                    (dac, dar, daz)
                }
                (None, None) => {
                    return Err(ModelError::Invalid(format!(
                        "GRU4Rec: layer {i} in the original form lacks its fused stages' cache"
                    )))
                }
            };
            let d_rz = Tensor::cat(&[&dar, &daz], 1)?;
            if layer.brz.is_some() {
                out.push(PendingGrad::dense(format!("layer{i}.brz"), Grad::Full(column_sums(&d_rz)?)));
            }
            let dvx = Tensor::cat(&[&dac, &d_rz], 1)?;
            out.push(PendingGrad::dense(format!("layer{i}.b"), Grad::Full(column_sums(&dvx)?)));
            d = match &layer.wx {
                Some(wx) => {
                    let (d_wrz, d_wx) = if product_form {
                        (Grad::Product(cache.prev.clone(), d_rz), Grad::Product(cache.x.clone(), dvx.clone()))
                    } else {
                        let (d_wrz, d_wx) = matmul_pair(&cache.prev.t()?, &d_rz, &cache.x.t()?, &dvx)?;
                        (Grad::Full(d_wrz), Grad::Full(d_wx))
                    };
                    out.push(PendingGrad::dense(format!("layer{i}.wrz"), d_wrz));
                    out.push(PendingGrad::dense(format!("layer{i}.wx"), d_wx));
                    mm(&dvx, &wx.t()?)?
                }
                None => {
                    out.push(PendingGrad::dense(
                        format!("layer{i}.wrz"),
                        weight_grad(&cache.prev, &d_rz, product_form)?,
                    ));
                    dvx
                }
            };
        }
        if let Some(m) = embed_mask {
            d = (d * m)?;
        }
        Ok(d)
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
        // On the CPU the weight gradients stay in product form (`xᵀ·d`): the
        // optimiser computes them a block at a time and steps each block while
        // it is in cache, instead of writing ≈ 9 MB of gradients per step at
        // 480 units and reading them back. The same parameters (tested).
        probe::begin();
        let cpu = self.device.is_cpu();
        let mut deferred = self.deferred.get_mut().map_err(|_| poisoned())?.take();
        let pass = self.backward_pass(batch, state, cfg, dropout_rng, cpu, deferred.as_mut());
        let (value, grads) = match pass {
            Ok(done) => done,
            Err(e) => {
                // A rejected batch or a failed op: what the forward pass did
                // not apply yet stays held, none of it lost.
                *self.deferred.get_mut().map_err(|_| poisoned())? = deferred.filter(|d| !d.grads.is_empty());
                return Err(e);
            }
        };
        opt.begin_step();
        let params = self.params();
        // Nadam has no rule to defer: its updates run at once.
        let mut next = match opt.rule_now() {
            Some(rule) if cpu && self.defer_updates => Some(Deferred { rule, grads: BTreeMap::new() }),
            _ => None,
        };
        let deferring = next.is_some();
        // Run as a closure so that what is held so far is stored even when an update fails.
        let update_all = || -> Result<()> {
            let param_of = |name: &str| {
                params.get(name).ok_or_else(|| ModelError::Invalid(format!("GRU4Rec: no parameter `{name}`")))
            };
            let mut grads = grads.into_iter().peekable();
            while let Some(g) = grads.next() {
                let param = param_of(&g.name)?;
                if let (Some(d), Grad::Product(a, b), None) = (next.as_mut(), &g.grad, &g.rows) {
                    // Every dense product-form gradient is a GRU weight's; one the
                    // next forward pass does not multiply is applied at its end.
                    let state = opt.dense_state(&g.name, param)?;
                    d.grads.insert(g.name.clone(), DeferredGrad { state, a: a.clone(), b: b.clone() });
                    continue;
                }
                match (&g.grad, &g.rows) {
                    (Grad::Full(grad), Some(ids)) => opt.sparse(&g.name, param, grad, ids)?,
                    (Grad::Full(grad), None) => opt.dense(&g.name, param, grad)?,
                    (Grad::Product(a, b), None) => opt.dense_outer(&g.name, param, a, b)?,
                    (Grad::RowsThenProduct(given, a, b), Some(ids)) => {
                        // A bias whose rows are the product part's (the output
                        // bias) is stepped in the same pass over the rows.
                        let m = a.dim(1)?;
                        let bias = grads.next_if(|next| match (&next.grad, &next.rows) {
                            (Grad::Full(_), Some(tail)) => tail.len() == m && ids.ends_with(tail),
                            _ => false,
                        });
                        match bias {
                            Some(PendingGrad { name, grad: Grad::Full(bias_grad), .. }) => {
                                let bias = (name.as_str(), param_of(&name)?, &bias_grad);
                                opt.sparse_outer_with_bias((&g.name, param), given, (a, b), ids, bias)?;
                                probe::mark("update: output table and bias");
                                continue;
                            }
                            // The condition above takes full gradients only.
                            Some(other) => {
                                return Err(ModelError::Invalid(format!(
                                    "GRU4Rec: gradient of `{}` taken as a bias but not a full gradient",
                                    other.name
                                )))
                            }
                            None => opt.sparse_outer(&g.name, param, given, (a, b), ids)?,
                        }
                    }
                    (grad, rows) => {
                        return Err(ModelError::Invalid(format!(
                            "GRU4Rec: gradient of `{}` in a form that does not fit its rows ({grad:?}, {rows:?})",
                            g.name
                        )))
                    }
                }
                probe::mark(match (g.name.as_str(), &g.rows) {
                    ("wy", _) => "update: output table",
                    ("by", _) => "update: output bias",
                    (_, Some(_)) => "update: input rows",
                    (_, None) if deferring => "update: GRU biases",
                    (_, None) => "update: GRU weights",
                });
            }
            Ok(())
        };
        let updated = update_all();
        *self.deferred.get_mut().map_err(|_| poisoned())? = next.filter(|d| !d.grads.is_empty());
        updated?;
        probe::end();
        Ok(value)
    }

    /// Whether CPU training steps hold the GRU weights' updates over to the
    /// next step's forward pass (on by default; see [`Deferred`]). Turning
    /// it off applies any update held.
    ///
    /// # Errors
    /// A tensor error while applying.
    pub fn set_deferred_updates(&mut self, on: bool) -> Result<()> {
        self.defer_updates = on;
        self.settle()
    }

    /// Applies the GRU weight updates the last training step held over
    /// ([`Deferred`]); every method that reads the weights calls it first.
    /// Concurrent readers wait for the one applying them.
    ///
    /// # Errors
    /// A tensor error.
    pub fn settle(&self) -> Result<()> {
        let mut held = self.deferred.lock().map_err(|_| poisoned())?;
        if let Some(d) = held.as_mut() {
            // Emptied as it goes: after an error the rest stays held.
            d.apply_all(&self.params())?;
            *held = None;
        }
        Ok(())
    }

    /// The loss of one mini-batch and the gradient of every parameter it
    /// touches (item tables: only the gathered rows, `rows` naming them,
    /// repeats not yet summed). `state` is replaced by the new states.
    ///
    /// # Errors
    /// As [`Gru4Rec::train_step`].
    pub fn gradients(
        &self,
        batch: TrainBatch<'_>,
        state: &mut [Tensor],
        cfg: &StepConfig,
        dropout_rng: &mut Rng,
    ) -> Result<(f32, Vec<ParamGrad>)> {
        self.settle()?;
        let (value, grads) = self.backward_pass(batch, state, cfg, dropout_rng, false, None)?;
        let grads = grads
            .into_iter()
            .map(|g| Ok(ParamGrad { name: g.name, grad: g.grad.materialise()?, rows: g.rows }))
            .collect::<Result<Vec<_>>>()?;
        Ok((value, grads))
    }

    /// [`Gru4Rec::gradients`], with the weight gradients in product form when asked.
    fn backward_pass(
        &self,
        batch: TrainBatch<'_>,
        state: &mut [Tensor],
        cfg: &StepConfig,
        dropout_rng: &mut Rng,
        product_form: bool,
        deferred: Option<&mut Deferred>,
    ) -> Result<(f32, Vec<PendingGrad>)> {
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
        self.check_ids(batch.inputs)?;
        self.check_ids(&out_ids)?;
        let n_out = out_ids.len();
        // A sampled item may repeat (several samples, or a sample that is also
        // a target): its columns hold the same scores. The products run over
        // the distinct items (`o_ids`, `col` mapping each of the `n_out`
        // columns to one), the loss over all columns as the authors define
        // it, and the columns' gradients are summed per item before dO, dy
        // and the bias gradient (the sums the optimiser would otherwise do).
        let (o_ids, col) = distinct(&out_ids, self.n_ids);
        probe::mark("ids");
        let n_distinct = o_ids.len();
        // Whether the distinct columns are the output columns themselves (no
        // repeats, and the ids already ascending): then the loss needs no map.
        let in_order = col.iter().enumerate().all(|(i, &c)| c as usize == i);
        // The gathered input rows are an autograd leaf: their gradient has the batch's size.
        let input_table = match self.shape.input() {
            Input::Constrained => &self.wy,
            _ => self.input.as_ref().expect("one-hot and embedding modes have an input table"),
        };
        let x0 = gather_rows(input_table, batch.inputs)?;
        // The output rows are read in place by the products below (no gathered copy).
        let bias = gather_rows(&self.by, &o_ids)?;
        probe::mark("gather rows");
        let held_over = deferred.is_some();
        let (y, embed_mask, caches) = self.forward_cached(&x0, state, Some(dropout_rng), true, deferred)?;
        probe::mark(if held_over { "forward: GRU layers + held-over updates" } else { "forward: GRU layers" });
        // Backward by hand: scores, act, loss and their gradients in one pass
        // (`seqrec_kernels::loss`), dO = dSᵀ·y, dy = dS·O, then the layers.
        let kind = kernel_kind(&cfg.loss);
        let act = self.shape.final_act.kernel_act();
        let log_pop = batch.log_pop.filter(|_| cfg.logq > 0.0);
        let (value, d_scores) = if !self.device_ops {
            // Written straight into the loss's input (no tensor copied out).
            let mut distinct_scores = Vec::with_capacity(rows * n_distinct);
            scores_rows_append(&y, &self.wy, &o_ids, &mut distinct_scores)?;
            probe::mark("forward: scores");
            let distinct_bias = bias.flatten_all()?.to_vec1::<f32>()?;
            let spec = seqrec_kernels::loss::LossSpec {
                kind,
                act,
                log_pop: log_pop.map(|lp| (lp, cfg.logq)),
                batch_size: cfg.batch_size,
            };
            let mut d_scores = vec![0f32; rows * n_distinct];
            let value = if in_order {
                seqrec_kernels::loss::sampled_loss_cpu(&spec, &distinct_scores, &distinct_bias, n_out, &mut d_scores)?
            } else {
                seqrec_kernels::loss::sampled_loss_distinct_cpu(
                    &spec,
                    &distinct_scores,
                    &distinct_bias,
                    &col,
                    &mut d_scores,
                )?
            } as f32;
            (value, Tensor::from_vec(d_scores, (rows, n_distinct), &self.device)?)
        } else {
            // On the device: the fused loss kernel, no score matrix through the host.
            let lp = log_pop.map(|lp| Tensor::from_slice(lp, lp.len(), &self.device)).transpose()?;
            let col = Tensor::from_slice(&col, n_out, &self.device)?;
            let (value, d_scores) = seqrec_kernels::loss::sampled_loss_grad(
                kind,
                act,
                cfg.batch_size,
                &scores_rows(&y, &self.wy, &o_ids)?.index_select(&col, 1)?,
                &bias.index_select(&col, 0)?,
                lp.as_ref().map(|lp| (lp, cfg.logq)),
            )?;
            let d_scores = if in_order {
                d_scores
            } else {
                Tensor::zeros((rows, n_distinct), DType::F32, &self.device)?.index_add(&col, &d_scores, 1)?
            };
            (value as f32, d_scores)
        };
        probe::mark("loss");
        let d_bias = column_sums(&d_scores)?.reshape((n_distinct, 1))?;
        let constrained = self.shape.input() == Input::Constrained;
        let mut out = Vec::new();
        if product_form {
            // dO = dSᵀ·y stays in product form for the optimiser.
            let d_y = product_rows(&d_scores, &self.wy, &o_ids)?;
            probe::mark("backward: dS·O");
            let dx = self.backward_layers(&caches, embed_mask.as_ref(), d_y, true, &mut out)?;
            probe::mark("backward: GRU layers");
            let (given, ids) = if constrained {
                let mut ids = batch.inputs.to_vec();
                ids.extend_from_slice(&o_ids);
                (dx, ids)
            } else {
                let name = if self.shape.input() == Input::OneHot { "layer0.wx" } else { "embedding" };
                out.push(PendingGrad { name: name.into(), grad: Grad::Full(dx), rows: Some(batch.inputs.to_vec()) });
                (Tensor::zeros((0, y.dim(1)?), DType::F32, &self.device)?, o_ids.clone())
            };
            out.push(PendingGrad {
                name: "wy".into(),
                grad: Grad::RowsThenProduct(given, d_scores, y),
                rows: Some(ids),
            });
            out.push(PendingGrad { name: "by".into(), grad: Grad::Full(d_bias), rows: Some(o_ids) });
            return Ok((value, out));
        }
        // Materialised (`gradients`, and training on other devices).
        let (d_o, d_y) = (mm(&d_scores.t()?, &y)?, product_rows(&d_scores, &self.wy, &o_ids)?);
        let dx = self.backward_layers(&caches, embed_mask.as_ref(), d_y, false, &mut out)?;
        match self.shape.input() {
            Input::Constrained => {
                let mut ids = batch.inputs.to_vec();
                ids.extend_from_slice(&o_ids);
                let grad = Tensor::cat(&[&dx, &d_o], 0)?;
                out.push(PendingGrad { name: "wy".into(), grad: Grad::Full(grad), rows: Some(ids) });
            }
            input => {
                let name = if input == Input::OneHot { "layer0.wx" } else { "embedding" };
                out.push(PendingGrad { name: name.into(), grad: Grad::Full(dx), rows: Some(batch.inputs.to_vec()) });
                out.push(PendingGrad { name: "wy".into(), grad: Grad::Full(d_o), rows: Some(o_ids.clone()) });
            }
        }
        out.push(PendingGrad { name: "by".into(), grad: Grad::Full(d_bias), rows: Some(o_ids) });
        Ok((value, out))
    }

    /// Feeds `inputs` (one item per row of `state`) and returns the raw scores
    /// of every id, `[rows, n_ids]` (column 0, padding, is meaningless).
    ///
    /// # Errors
    /// Ids outside `1..n_ids` or a tensor error.
    pub fn score_all(&self, inputs: &[u32], state: &mut [Tensor]) -> Result<Tensor> {
        let h = self.step_state(inputs, state)?;
        Ok(mm(&h, &self.wy.t()?)?.broadcast_add(&self.by.t()?)?)
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
        self.check_ids(inputs)?;
        self.settle()?;
        let table = match self.shape.input() {
            Input::Constrained => &self.wy,
            _ => self.input.as_ref().expect("one-hot and embedding modes have an input table"),
        };
        let x0 = gather_rows(table, inputs)?;
        self.layers_forward(&x0, state, None)
    }

    /// Every parameter by name (for checkpoints), with any update held over applied.
    ///
    /// # Errors
    /// A tensor error while applying it.
    pub fn named_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.settle()?;
        Ok(self.params())
    }

    /// Every parameter by name, as they are (updates held over not applied).
    fn params(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        if let Some(t) = &self.input {
            let name = if self.shape.input() == Input::OneHot { "layer0.wx" } else { "embedding" };
            out.insert(name.to_owned(), t.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, var) in layer_vars(layer) {
                out.insert(format!("layer{i}.{name}"), var.clone());
            }
        }
        out.insert("wy".to_owned(), self.wy.clone());
        out.insert("by".to_owned(), self.by.clone());
        out
    }

    /// Overwrites every parameter with the tensors of `saved` (same names and shapes).
    ///
    /// A reset-after checkpoint written before the second gate bias
    /// (`layer{i}.brz`) existed loads with that bias zero: the same function
    /// it was saved as.
    ///
    /// # Errors
    /// A missing name or a shape that differs, naming both.
    pub fn load_tensors(&mut self, saved: &BTreeMap<String, Tensor>, source: &Path) -> Result<()> {
        for (name, mine) in self.named_tensors()? {
            if name.ends_with(".brz") && !saved.contains_key(&name) {
                mine.slice_set(&mine.zeros_like()?, 0, 0)?;
                continue;
            }
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
}

/// The error of a lock a panicking thread left.
fn poisoned() -> ModelError {
    ModelError::Invalid("GRU4Rec: a thread panicked while updating the weights".into())
}

/// The distinct ids of `ids` in ascending order, and for each position of
/// `ids` the index of its id among them. Ids are below `n_ids` (checked by
/// the caller). Ascending, so that the products and the optimiser's step
/// (which takes rows in id order) split the rows between the threads alike
/// and walk the table in address order: paired A/B at setting (b), 40,000
/// items, ≈ 100 µs less in the step of the output table than in order of
/// first appearance (twenty-first session).
fn distinct(ids: &[u32], n_ids: usize) -> (Vec<u32>, Vec<u32>) {
    thread_local! {
        // slot[id]: the id's index among the distinct ones; seen: one bit per
        // id. Both are returned to u32::MAX / 0 before returning.
        static SCRATCH: std::cell::RefCell<(Vec<u32>, Vec<u64>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with(|scratch| {
        let (slot, seen) = &mut *scratch.borrow_mut();
        if slot.len() < n_ids {
            slot.resize(n_ids, u32::MAX);
            seen.resize(n_ids.div_ceil(64), 0);
        }
        let mut count = 0;
        for &id in ids {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            count += usize::from(seen[word] & bit == 0);
            seen[word] |= bit;
        }
        let mut uniq = Vec::with_capacity(count);
        let words = n_ids.div_ceil(64);
        if words <= 8 * ids.len() {
            // Ascending by a scan of the bits (GRU4Rec: 625 words for 40,000
            // items against ≈ 2,000 ids; a sort was ≈ 20 µs of the step).
            for (w, word) in seen[..words].iter_mut().enumerate() {
                let mut bits = std::mem::take(word);
                while bits != 0 {
                    uniq.push((w * 64) as u32 + bits.trailing_zeros());
                    bits &= bits - 1;
                }
            }
        } else {
            for &id in ids {
                let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
                if seen[word] & bit != 0 {
                    seen[word] &= !bit;
                    uniq.push(id);
                }
            }
            uniq.sort_unstable();
        }
        for (i, &id) in uniq.iter().enumerate() {
            slot[id as usize] = i as u32;
        }
        let col = ids.iter().map(|&id| slot[id as usize]).collect();
        for &id in &uniq {
            slot[id as usize] = u32::MAX;
        }
        (uniq, col)
    })
}

fn layer_vars(layer: &Layer) -> Vec<(&'static str, &Tensor)> {
    let mut v = Vec::with_capacity(4);
    if let Some(wx) = &layer.wx {
        v.push(("wx", wx));
    }
    v.push(("wrz", &layer.wrz));
    v.push(("wh", &layer.wh));
    v.push(("b", &layer.b));
    if let Some(bhn) = &layer.bhn {
        v.push(("bhn", bhn));
    }
    if let Some(brz) = &layer.brz {
        v.push(("brz", brz));
    }
    v
}

/// Fixes the thread count candle's CPU matmul asks for (`RAYON_NUM_THREADS`)
/// when unset. Without it candle 0.11 counts the physical cores by reading
/// `/proc/cpuinfo` on every matrix product, which cost a fifth of a GRU4Rec
/// training step on a 2-core machine.
///
/// Also keeps candle's element-wise ops on the calling thread
/// (`CANDLE_NUM_THREADS=1`) when unset: candle 0.11 splits any op over 64k
/// values across a spinning barrier pool of its own beside rayon's, and on
/// 2 cores the two pools fight (half of an RRNCF step was the main thread
/// spinning for a descheduled pool worker; one thread made it 3.7× faster).
/// Must run before candle's first parallel op (the pool is built once).
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
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
        let want = inputs.len() * self.model.n_ids;
        if scores.len() != want {
            return Err(ModelError::Invalid(format!("GRU4Rec scorer: {want} scores for a buffer of {}", scores.len())));
        }
        if self.model.device.is_cpu() {
            // Straight into the caller's rows: no [rows, n_ids] temporaries.
            let h = self.model.step_state(inputs, &mut self.state)?;
            seqrec_kernels::matmul::scores_into(&h, &self.model.wy, &self.model.by, scores)?;
            return Ok(());
        }
        let s = self.model.score_all(inputs, &mut self.state)?;
        scores.copy_from_slice(&s.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    /// On the device path: the rank-count kernel over the output table
    /// (`seqrec_kernels::rank`), no `[rows, n_ids]` score matrix.
    fn step_counts(&mut self, inputs: &[u32], targets: &[u32]) -> Result<Option<Vec<TargetCounts>>> {
        if !self.model.device_ops {
            return Ok(None);
        }
        let h = self.model.step_state(inputs, &mut self.state)?;
        let counts = seqrec_kernels::rank::rank_counts(&h, &self.model.wy, &self.model.by, targets)?;
        Ok(Some(
            counts
                .iter()
                .map(|c| TargetCounts {
                    greater: c.greater as usize,
                    equal: c.equal as usize,
                    target_nan: c.target_score.is_nan(),
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::next_item::{evaluate_sessions, EvalConfig};
    use seqrec_data::split::Part;

    fn shape(layers: Vec<usize>, embedding: usize, constrained: bool) -> Gru4RecShape {
        Gru4RecShape {
            layers,
            embedding,
            constrained_embedding: constrained,
            dropout_p_embed: 0.0,
            dropout_p_hidden: 0.0,
            final_act: FinalAct::Linear,
            reset_after: false,
        }
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
    }

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn gru_step_is_the_original_form_with_reset_before_the_recurrent_product() {
        let h = 3usize;
        let model = Gru4Rec::new(shape(vec![h], 0, false), 6, 9, &Device::Cpu).unwrap();
        // non-zero biases so every term matters.
        let b: Vec<f32> = (0..3 * h).map(|j| 0.1 * j as f32 - 0.3).collect();
        model.layers[0].b.slice_set(&Tensor::from_vec(b, 3 * h, &Device::Cpu).unwrap(), 0, 0).unwrap();
        let p = model.named_tensors().unwrap();
        let (wx0, wrz, wh, bias) =
            (values(&p["layer0.wx"]), values(&p["layer0.wrz"]), values(&p["layer0.wh"]), values(&p["layer0.b"]));
        let h0 = [0.5f32, -0.25, 0.75];
        let mut state = vec![Tensor::from_vec(h0.to_vec(), (1, h), &Device::Cpu).unwrap()];
        let item = 4usize;
        model.feed(&[item as u32], &mut state).unwrap();
        let got = values(&state[0]);
        let hp: Vec<f64> = h0.iter().map(|&x| f64::from(x)).collect();
        let vx = |g: usize, j: usize| wx0[item * 3 * h + g * h + j] + bias[g * h + j];
        let uh = |g: usize, j: usize| (0..h).map(|k| hp[k] * wrz[k * 2 * h + g * h + j]).sum::<f64>();
        let r: Vec<f64> = (0..h).map(|j| sig(vx(1, j) + uh(0, j))).collect();
        let z: Vec<f64> = (0..h).map(|j| sig(vx(2, j) + uh(1, j))).collect();
        for j in 0..h {
            let rec: f64 = (0..h).map(|k| r[k] * hp[k] * wh[k * h + j]).sum();
            let c = (vx(0, j) + rec).tanh();
            let want = (1.0 - z[j]) * hp[j] + z[j] * c;
            assert!((got[j] - want).abs() < 1e-5, "unit {j}: {} vs {want}", got[j]);
        }
    }

    #[test]
    fn glorot_bounds_are_per_gate_block() {
        let model = Gru4Rec::new(shape(vec![8], 0, false), 40, 1, &Device::Cpu).unwrap();
        let p = model.named_tensors().unwrap();
        let max_abs = |t: &Tensor| values(t).iter().fold(0f64, |m, x| m.max(x.abs()));
        // input table: [40, 3·8] in blocks of [40, 8] → ±√(6 / 48)
        let bound = (6.0f64 / 48.0).sqrt();
        assert!(max_abs(&p["layer0.wx"]) <= bound && max_abs(&p["layer0.wx"]) > 0.8 * bound);
        // recurrent blocks [8, 8] → ±√(6 / 16)
        let bound = (6.0f64 / 16.0).sqrt();
        assert!(max_abs(&p["layer0.wrz"]) <= bound && max_abs(&p["layer0.wrz"]) > 0.7 * bound);
        assert_eq!(values(&p["by"]).iter().filter(|&&x| x != 0.0).count(), 0);
    }

    /// Loss of a batch with the model's current parameters (no update).
    fn loss_of(model: &Gru4Rec, batch: TrainBatch<'_>, state: &[Tensor], cfg: &StepConfig) -> f64 {
        let mut s = state.to_vec();
        f64::from(model.gradients(batch, &mut s, cfg, &mut Rng::new(1)).unwrap().0)
    }

    fn perturb(model: &Gru4Rec, name: &str, index: usize, delta: f32) {
        let t = model.named_tensors().unwrap()[name].clone();
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[index] += delta;
        t.slice_set(&Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap(), 0, 0).unwrap();
    }

    #[test]
    fn distinct_ids_are_ascending_and_mapped_back() {
        let (uniq, col) = distinct(&[4, 1, 4, 7, 1, 4], 9);
        assert_eq!(uniq, [1, 4, 7]);
        assert_eq!(col, [1, 0, 1, 2, 0, 1]);
        // the scratch slots are cleared: a second call sees nothing of the first
        assert_eq!(distinct(&[7, 7], 9), (vec![7], vec![0, 0]));
        // a catalogue much larger than the ids: sorted instead of scanned
        let ids = [70_000u32, 5, 130_000, 5, 64, 63];
        assert_eq!(distinct(&ids, 200_000), (vec![5, 63, 64, 70_000, 130_000], vec![3, 0, 4, 0, 2, 1]));
        assert_eq!(distinct(&[64, 63, 64], 200_000), (vec![63, 64], vec![1, 0, 1]));
    }

    /// The training loss is the cross-entropy of the full scores (`score_all`,
    /// computed apart from the training path) at the batch's columns
    /// `[targets ‖ samples]`, the positive of row i in column i, recomputed
    /// in f64 here: with ids in no particular order, with and without
    /// repeated columns, on the CPU path and the device path.
    #[test]
    fn the_training_loss_is_the_cross_entropy_of_the_full_scores() {
        let n_ids = 12usize;
        for device_ops in [false, true] {
            for (targets, samples) in
                [([9u32, 3, 5], vec![11u32, 2, 7, 4]), ([9, 3, 5], vec![11, 3, 2, 11, 9]), ([6, 6, 1], vec![])]
            {
                let mut model = Gru4Rec::new(shape(vec![5], 0, true), n_ids, 4, &Device::Cpu).unwrap();
                model.set_device_ops(device_ops);
                let inputs = [8u32, 1, 10];
                let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size: 4 };
                let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: None };
                let got = loss_of(&model, batch, &model.zero_state(3).unwrap(), &cfg);
                let mut state = model.zero_state(3).unwrap();
                let full = model.score_all(&inputs, &mut state).unwrap().to_vec2::<f32>().unwrap();
                let cols: Vec<u32> = targets.iter().chain(&samples).copied().collect();
                let want: f64 = (0..3)
                    .map(|i| {
                        let s: Vec<f64> = cols.iter().map(|&c| f64::from(full[i][c as usize])).collect();
                        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                        -((s[i] - max).exp() / z + seqrec_kernels::loss::LOG_EPSILON).ln()
                    })
                    .sum::<f64>()
                    / 4.0;
                assert!((got - want).abs() < 1e-5, "{targets:?} {samples:?}, device ops {device_ops}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_in_every_input_mode() {
        let n_ids = 9usize;
        for (layers, embedding, constrained, loss, reset_after) in [
            (vec![4], 0, false, Loss::CrossEntropy, false),
            (vec![4, 3], 5, false, Loss::BprMax { bpreg: 0.5 }, false),
            (vec![3], 0, true, Loss::Top1Max, false),
            (vec![3, 4], 0, true, Loss::CrossEntropy, true),
        ] {
            let sh = Gru4RecShape { reset_after, ..shape(layers.clone(), embedding, constrained) };
            let model = Gru4Rec::new(sh, n_ids, 3, &Device::Cpu).unwrap();
            if reset_after {
                // non-zero b' so its path is exercised.
                model.named_tensors().unwrap()["layer0.bhn"]
                    .slice_set(&Tensor::new(&[0.2f32, -0.1, 0.3], &Device::Cpu).unwrap(), 0, 0)
                    .unwrap();
            }
            let state: Vec<Tensor> =
                model.zero_state(3).unwrap().iter().map(|z| (z.ones_like().unwrap() * 0.3).unwrap()).collect();
            // item 2 is an input, a target and a sample: its rows get summed gradients.
            let (inputs, targets, samples) = ([2u32, 5, 7], [3u32, 2, 8], [2u32, 6]);
            let lp: Vec<f32> = (0..5).map(|j| -(j as f32) * 0.3).collect();
            let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: Some(&lp) };
            let cfg = StepConfig { loss, logq: 0.5, batch_size: 4 };
            let mut s = state.clone();
            let (_, grads) = model.gradients(batch, &mut s, &cfg, &mut Rng::new(1)).unwrap();
            for g in &grads {
                let shape = model.named_tensors().unwrap()[&g.name].dims().to_vec();
                let width: usize = shape[1..].iter().product::<usize>().max(1);
                // dense gradient of the whole parameter, repeats summed.
                let mut dense = vec![0f64; shape.iter().product()];
                let gv = values(&g.grad);
                match &g.rows {
                    Some(ids) => {
                        for (k, &id) in ids.iter().enumerate() {
                            for j in 0..width {
                                dense[id as usize * width + j] += gv[k * width + j];
                            }
                        }
                    }
                    None => dense.copy_from_slice(&gv),
                }
                let checked: Vec<usize> = match &g.rows {
                    Some(_) => vec![2 * width, 2 * width + width - 1, 8 * width],
                    None => vec![0, dense.len() / 2, dense.len() - 1],
                };
                for index in checked {
                    let eps = 1e-2f32;
                    perturb(&model, &g.name, index, eps);
                    let up = loss_of(&model, batch, &state, &cfg);
                    perturb(&model, &g.name, index, -2.0 * eps);
                    let down = loss_of(&model, batch, &state, &cfg);
                    perturb(&model, &g.name, index, eps);
                    let fd = (up - down) / (2.0 * f64::from(eps));
                    let an = dense[index];
                    assert!(
                        (fd - an).abs() <= 1e-4 + 2e-2 * an.abs(),
                        "{layers:?} emb {embedding} constrained {constrained} {}[{index}]: analytic {an} vs numeric {fd}",
                        g.name
                    );
                }
            }
        }
    }

    /// With the phase timer on, a training step charges every phase of the
    /// CPU path (and nothing happens outside a step).
    #[test]
    fn a_training_step_marks_each_phase_for_the_phase_timer() {
        use crate::optim::OptimizerKind;
        let mut model = Gru4Rec::new(shape(vec![8], 0, true), 40, 1, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::Adagrad, 0.05, 0.0).unwrap();
        let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size: 3 };
        let mut state = model.zero_state(3).unwrap();
        let samples: Vec<u32> = (1..30).collect();
        let batch = TrainBatch { inputs: &[1, 2, 3], targets: &[4, 5, 6], samples: &samples, log_pop: None };
        probe::enable(true);
        let _ = probe::take();
        // Updates applied at once, then held over to the next step's forward pass.
        model.set_deferred_updates(false).unwrap();
        model.train_step(batch, &mut state, &cfg, &mut opt, &mut Rng::new(1)).unwrap();
        model.set_deferred_updates(true).unwrap();
        model.train_step(batch, &mut state, &cfg, &mut opt, &mut Rng::new(1)).unwrap();
        model.train_step(batch, &mut state, &cfg, &mut opt, &mut Rng::new(1)).unwrap();
        probe::enable(false);
        let totals = probe::take();
        // Other tests may step models meanwhile: at least these steps, every phase.
        assert!(totals.steps >= 3, "{totals:?}");
        let names: Vec<&str> = totals.phases.iter().map(|p| p.name).collect();
        for want in [
            "ids",
            "gather rows",
            "forward: GRU layers",
            "forward: GRU layers + held-over updates",
            "forward: scores",
            "loss",
            "backward: dS·O",
            "backward: GRU layers",
            "update: GRU weights",
            "update: GRU biases",
            "update: output table and bias",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(totals.phases.iter().all(|p| p.wall_ns > 0 || p.name == "ids"), "{totals:?}");
    }

    /// Updates held over to the next step's forward pass train the model the
    /// updates made at once do (the parameters equal up to the order of the
    /// forward products' sums), and whatever reads the weights between steps
    /// (scoring, the named tensors) sees them with the last step's update
    /// made: without it the GRU weights would be a step behind, off by a
    /// whole Adagrad step (≈ lr), far outside the tolerance.
    #[test]
    fn held_over_updates_train_as_updates_made_at_once() {
        use crate::optim::OptimizerKind;
        let close = |x: f32, y: f32, what: &str| {
            assert!((x - y).abs() <= 2e-5 + 2e-4 * y.abs(), "{what}: {x} vs {y}");
        };
        for (layers, embedding, constrained, reset_after, kind, momentum) in [
            (vec![50], 0, true, false, OptimizerKind::Adagrad, 0.0),
            (vec![30, 20], 0, false, false, OptimizerKind::Adagrad, 0.3),
            (vec![26], 5, false, true, OptimizerKind::Adam, 0.0),
        ] {
            let sh =
                Gru4RecShape { reset_after, dropout_p_hidden: 0.2, ..shape(layers.clone(), embedding, constrained) };
            let mut held = Gru4Rec::new(sh.clone(), 70, 3, &Device::Cpu).unwrap();
            let mut at_once = Gru4Rec::new(sh, 70, 3, &Device::Cpu).unwrap();
            at_once.set_deferred_updates(false).unwrap();
            let mut opts =
                [Optimizer::new(kind, 0.05, momentum).unwrap(), Optimizer::new(kind, 0.05, momentum).unwrap()];
            let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size: 4 };
            let mut states = [held.zero_state(3).unwrap(), at_once.zero_state(3).unwrap()];
            for step in 0..6u32 {
                let inputs = [2, 5 + step, 9];
                let targets = [3u32, 2, 8 + step];
                let samples: Vec<u32> = (0..40u32).map(|j| 1 + (j * 7 + step) % 69).collect();
                let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: None };
                let [sa, sb] = &mut states;
                let [oa, ob] = &mut opts;
                let la = held.train_step(batch, sa, &cfg, oa, &mut Rng::new(u64::from(step))).unwrap();
                let lb = at_once.train_step(batch, sb, &cfg, ob, &mut Rng::new(u64::from(step))).unwrap();
                close(la, lb, &format!("{layers:?} loss of step {step}"));
                if step == 2 {
                    // Scoring between steps settles the held-over update first.
                    let (mut qa, mut qb) = (held.zero_state(2).unwrap(), at_once.zero_state(2).unwrap());
                    let a = held.score_all(&[4, 7], &mut qa).unwrap();
                    let b = at_once.score_all(&[4, 7], &mut qb).unwrap();
                    for (x, y) in values(&a).iter().zip(values(&b)) {
                        close(*x as f32, y as f32, &format!("{layers:?} scores after step {step}"));
                    }
                }
            }
            let want = at_once.named_tensors().unwrap();
            for (name, t) in held.named_tensors().unwrap() {
                for (x, y) in values(&t).iter().zip(values(&want[&name])) {
                    close(*x as f32, y as f32, &format!("{layers:?} {name}"));
                }
            }
        }
    }

    /// A batch the step rejects (an id outside the vocabulary) leaves the
    /// update held from the step before: it is applied later, not lost.
    #[test]
    fn a_rejected_batch_keeps_the_held_over_update() {
        use crate::optim::OptimizerKind;
        let sh = shape(vec![30], 0, true);
        let mut held = Gru4Rec::new(sh.clone(), 40, 5, &Device::Cpu).unwrap();
        let mut at_once = Gru4Rec::new(sh, 40, 5, &Device::Cpu).unwrap();
        at_once.set_deferred_updates(false).unwrap();
        let mut opts = [
            Optimizer::new(OptimizerKind::Adagrad, 0.05, 0.0).unwrap(),
            Optimizer::new(OptimizerKind::Adagrad, 0.05, 0.0).unwrap(),
        ];
        let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size: 2 };
        let samples: Vec<u32> = (1..20).collect();
        let good = TrainBatch { inputs: &[1, 2], targets: &[3, 4], samples: &samples, log_pop: None };
        let bad = TrainBatch { inputs: &[1, 2], targets: &[3, 99], samples: &samples, log_pop: None };
        let (mut sa, mut sb) = (held.zero_state(2).unwrap(), at_once.zero_state(2).unwrap());
        held.train_step(good, &mut sa, &cfg, &mut opts[0], &mut Rng::new(1)).unwrap();
        at_once.train_step(good, &mut sb, &cfg, &mut opts[1], &mut Rng::new(1)).unwrap();
        let err = held.train_step(bad, &mut sa, &cfg, &mut opts[0], &mut Rng::new(2)).unwrap_err().to_string();
        assert!(err.contains("99"), "{err}");
        let want = at_once.named_tensors().unwrap();
        for (name, t) in held.named_tensors().unwrap() {
            // The same blocks and rule: equal to the last bit.
            assert_eq!(values(&t), values(&want[&name]), "{name}");
        }
    }

    /// `train_step` on the CPU hands the weight gradients to the optimiser in
    /// product form; the parameters must be those of the materialised
    /// gradients from `gradients` stepped one by one, to the last bit, in
    /// every input mode and for both GRU forms, plain Adagrad and with
    /// momentum, with an item that is an input, a target and a sample.
    #[test]
    fn training_steps_equal_the_materialised_gradients_stepped() {
        use crate::optim::OptimizerKind;
        for (layers, embedding, constrained, reset_after, momentum) in [
            (vec![6], 0, false, false, 0.0),
            (vec![5, 4], 3, false, false, 0.3),
            (vec![50], 0, true, false, 0.0),
            (vec![4, 3], 0, true, true, 0.3),
        ] {
            let sh =
                Gru4RecShape { reset_after, dropout_p_hidden: 0.2, ..shape(layers.clone(), embedding, constrained) };
            let mut stepped = Gru4Rec::new(sh.clone(), 70, 3, &Device::Cpu).unwrap();
            // Updates at once: deferred ones multiply in another order (next test).
            stepped.set_deferred_updates(false).unwrap();
            let by_hand = Gru4Rec::new(sh, 70, 3, &Device::Cpu).unwrap();
            let mut opts = [
                Optimizer::new(OptimizerKind::Adagrad, 0.05, momentum).unwrap(),
                Optimizer::new(OptimizerKind::Adagrad, 0.05, momentum).unwrap(),
            ];
            let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size: 4 };
            let mut states = [stepped.zero_state(3).unwrap(), by_hand.zero_state(3).unwrap()];
            let mut rngs = [Rng::new(9), Rng::new(9)];
            for step in 0..4u32 {
                let inputs = [2, 5 + step, 9];
                let targets = [3u32, 2, 8 + step];
                // more samples than one task of the sparse step (24 rows), repeats included
                let samples: Vec<u32> = (0..60u32).map(|j| 1 + (j * 7 + step) % 69).chain([2, 2]).collect();
                let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: None };
                let [sa, sb] = &mut states;
                let [ra, rb] = &mut rngs;
                let [oa, ob] = &mut opts;
                let la = stepped.train_step(batch, sa, &cfg, oa, ra).unwrap();
                let (lb, grads) = by_hand.gradients(batch, sb, &cfg, rb).unwrap();
                assert_eq!(la, lb, "step {step}");
                ob.begin_step();
                let params = by_hand.named_tensors().unwrap();
                for g in &grads {
                    match &g.rows {
                        Some(ids) => ob.sparse(&g.name, &params[&g.name], &g.grad, ids).unwrap(),
                        None => ob.dense(&g.name, &params[&g.name], &g.grad).unwrap(),
                    }
                }
            }
            for (name, t) in stepped.named_tensors().unwrap() {
                assert_eq!(values(&t), values(&by_hand.named_tensors().unwrap()[&name]), "{layers:?} {name}");
            }
        }
    }

    /// The path CUDA takes (the loss as a device op) run on the
    /// CPU gives the CPU path's losses, parameters and states after several
    /// training steps, in every input mode, with dropout, several losses and
    /// final activations (the optimiser's two-pass form is tested in
    /// `seqrec-kernels`; the kernels against these ops in its `tests/gpu.rs`).
    #[test]
    fn device_path_equals_the_cpu_path() {
        for (layers, embedding, constrained, loss, act, dropout) in [
            (vec![6], 0, false, Loss::CrossEntropy, FinalAct::Linear, 0.0),
            (vec![5, 4], 3, false, Loss::BprMax { bpreg: 0.5 }, FinalAct::Elu(0.5), 0.2),
            (vec![4], 0, true, Loss::Top1Max, FinalAct::Tanh, 0.0),
            (vec![4], 0, true, Loss::CrossEntropy, FinalAct::Linear, 0.25),
        ] {
            let sh =
                Gru4RecShape { final_act: act, dropout_p_hidden: dropout, ..shape(layers, embedding, constrained) };
            let mut plain = Gru4Rec::new(sh.clone(), 12, 3, &Device::Cpu).unwrap();
            let mut fused = Gru4Rec::new(sh, 12, 3, &Device::Cpu).unwrap();
            fused.set_device_ops(true);
            let mut opts = [
                Optimizer::new(crate::optim::OptimizerKind::Adagrad, 0.05, 0.3).unwrap(),
                Optimizer::new(crate::optim::OptimizerKind::Adagrad, 0.05, 0.3).unwrap(),
            ];
            let cfg = StepConfig { loss, logq: 0.5, batch_size: 4 };
            let lp: Vec<f32> = (0..7).map(|j| -(j as f32) * 0.2).collect();
            let mut states = [plain.zero_state(3).unwrap(), fused.zero_state(3).unwrap()];
            let mut rngs = [Rng::new(9), Rng::new(9)];
            for step in 0..4u32 {
                let inputs = [1 + step % 11, 5, 9];
                let (targets, samples) = ([3u32, 1 + (step + 4) % 11, 8], [2u32, 6, 11, 4]);
                let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: Some(&lp) };
                let [a, b] = &mut states;
                let [ra, rb] = &mut rngs;
                let [oa, ob] = &mut opts;
                let la = plain.train_step(batch, a, &cfg, oa, ra).unwrap();
                let lb = fused.train_step(batch, b, &cfg, ob, rb).unwrap();
                assert!((la - lb).abs() <= 1e-5 * (1.0 + la.abs()), "step {step}: loss {la} vs {lb}");
            }
            for (name, t) in plain.named_tensors().unwrap() {
                let (x, y) = (values(&t), values(&fused.named_tensors().unwrap()[&name]));
                for (k, (a, b)) in x.iter().zip(&y).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{name}[{k}]: cpu path {a} vs device path {b}");
                }
            }
            for (a, b) in states[0].iter().zip(&states[1]) {
                for (x, y) in values(a).iter().zip(&values(b)) {
                    assert!((x - y).abs() <= 1e-5, "state: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn evaluation_does_not_depend_on_the_batch_size() {
        let seqs: Vec<Vec<u32>> =
            (0..23u32).map(|s| (0..2 + s % 5).map(|i| 1 + (s * 7 + i * 3) % 11).collect()).collect();
        let parts: Vec<Vec<Part>> = seqs.iter().map(|q| vec![Part::Test; q.len()]).collect();
        let refs: Vec<(&[u32], &[Part])> = seqs.iter().zip(&parts).map(|(q, p)| (q.as_slice(), p.as_slice())).collect();
        let (store, parts) = crate::next_item::tests::store_of(&refs);
        let model = Gru4Rec::new(shape(vec![6], 0, false), 12, 5, &Device::Cpu).unwrap();
        let cfg = EvalConfig { ks: vec![1, 5], tie_mode: seqrec_eval::TieMode::Median };
        let results: Vec<_> = [1usize, 3, 64]
            .iter()
            .map(|&b| evaluate_sessions(&store, &parts, Part::Test, &mut Gru4RecScorer::new(&model), b, &cfg).unwrap())
            .collect();
        assert!(results[0].n > 0);
        // the device path (rank-count op instead of score rows) ranks alike.
        let mut counted = Gru4Rec::new(shape(vec![6], 0, false), 12, 5, &Device::Cpu).unwrap();
        counted.set_device_ops(true);
        let by_counts =
            evaluate_sessions(&store, &parts, Part::Test, &mut Gru4RecScorer::new(&counted), 3, &cfg).unwrap();
        for r in results[1..].iter().chain([&by_counts]) {
            assert_eq!(r.n, results[0].n);
            for (a, b) in r.at.iter().zip(&results[0].at) {
                assert!(
                    (a.recall - b.recall).abs() < 1e-9 && (a.mrr - b.mrr).abs() < 1e-9,
                    "{r:?} vs {:?}",
                    results[0]
                );
            }
        }
    }

    #[test]
    fn learns_a_deterministic_successor_and_resets_state_per_session() {
        // sessions walk i → i+1 (mod 10) from varied starts; after training the
        // model must rank the successor first.
        let n = 10u32;
        let mut model = Gru4Rec::new(shape(vec![16], 0, false), n as usize + 1, 2, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(crate::optim::OptimizerKind::Adagrad, 0.1, 0.0).unwrap();
        let cfg = StepConfig { loss: Loss::CrossEntropy, logq: 0.0, batch_size: 8 };
        let mut rng = Rng::new(4);
        for _ in 0..300 {
            let inputs: Vec<u32> = (0..8).map(|_| 1 + rng.below(u64::from(n)) as u32).collect();
            let targets: Vec<u32> = inputs.iter().map(|&i| 1 + i % n).collect();
            let samples: Vec<u32> = (1..=n).collect();
            let mut state = model.zero_state(8).unwrap();
            let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: None };
            model.train_step(batch, &mut state, &cfg, &mut opt, &mut rng).unwrap();
        }
        let mut state = model.zero_state(n as usize).unwrap();
        let inputs: Vec<u32> = (1..=n).collect();
        let scores = model.score_all(&inputs, &mut state).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in scores.iter().enumerate() {
            let best = (1..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(best as u32, 1 + inputs[r] % n, "after item {}", inputs[r]);
        }
    }

    #[test]
    fn adjust_state_zeroes_reset_rows_and_keeps_continuing_rows() {
        let s = Tensor::from_vec((1..=6).map(|x| x as f32).collect::<Vec<_>>(), (3, 2), &Device::Cpu).unwrap();
        let mut state = vec![s];
        adjust_state(&mut state, Some(&[0, 2]), &[1]).unwrap();
        assert_eq!(state[0].to_vec2::<f32>().unwrap(), vec![vec![1.0, 2.0], vec![0.0, 0.0]]);
    }

    #[test]
    fn checkpoint_of_another_shape_is_an_error_naming_the_tensor() {
        let a = Gru4Rec::new(shape(vec![4], 0, false), 9, 1, &Device::Cpu).unwrap();
        let mut b = Gru4Rec::new(shape(vec![4], 0, false), 12, 1, &Device::Cpu).unwrap();
        let err = b.load_tensors(&a.named_tensors().unwrap(), Path::new("best.safetensors")).unwrap_err().to_string();
        assert!(err.contains("best.safetensors") && err.contains("another dataset"), "{err}");
    }

    #[test]
    fn a_reset_after_checkpoint_without_the_second_gate_bias_loads_as_the_same_function() {
        let sh = Gru4RecShape { reset_after: true, ..shape(vec![4], 0, true) };
        let mut a = Gru4Rec::new(sh.clone(), 9, 1, &Device::Cpu).unwrap();
        // a trained-looking model: nonzero biases everywhere
        let mut saved: BTreeMap<String, Tensor> =
            a.named_tensors().unwrap().into_iter().map(|(k, t)| (k, t.copy().unwrap())).collect();
        for (name, t) in saved.iter_mut() {
            if name.ends_with(".b") || name.ends_with(".bhn") {
                *t = (t.ones_like().unwrap() * 0.3).unwrap();
            }
        }
        // written before `brz` existed
        saved.remove("layer0.brz");
        a.load_tensors(&saved, Path::new("old.safetensors")).unwrap();
        let mut b = Gru4Rec::new(sh, 9, 2, &Device::Cpu).unwrap();
        b.named_tensors().unwrap()["layer0.brz"]
            .slice_set(&Tensor::ones(8, DType::F32, &Device::Cpu).unwrap(), 0, 0)
            .unwrap();
        b.load_tensors(&saved, Path::new("old.safetensors")).unwrap();
        let brz = b.named_tensors().unwrap()["layer0.brz"].to_vec1::<f32>().unwrap();
        assert!(brz.iter().all(|&x| x == 0.0), "{brz:?}");
        let inputs = [1u32, 5, 8];
        let (mut sa, mut sb) = (a.zero_state(3).unwrap(), b.zero_state(3).unwrap());
        let (ya, yb) = (a.score_all(&inputs, &mut sa).unwrap(), b.score_all(&inputs, &mut sb).unwrap());
        assert_eq!(ya.to_vec2::<f32>().unwrap(), yb.to_vec2::<f32>().unwrap());
        // other missing tensors are still errors
        saved.remove("layer0.bhn");
        let err = b.load_tensors(&saved, Path::new("old.safetensors")).unwrap_err().to_string();
        assert!(err.contains("layer0.bhn"), "{err}");
    }

    #[test]
    fn final_acts_parse_and_print() {
        for s in ["linear", "relu", "tanh", "leaky-0.1", "elu-0.5", "elu-1"] {
            assert_eq!(FinalAct::parse(s).unwrap().name(), s);
        }
        assert!(FinalAct::parse("softmax").is_none() && FinalAct::parse("elu-x").is_none());
    }
}
