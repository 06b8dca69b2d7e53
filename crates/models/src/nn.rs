//! Building blocks of the autograd models (BST, MF): named, seeded
//! parameters and the layers PyTorch users know, written as candle tensor
//! ops so that candle's autograd differentiates them.
//!
//! Initialisation follows PyTorch's defaults so that settings carry over:
//! linear layers `U(−1/√fan_in, 1/√fan_in)` for weight and bias, embeddings
//! `N(0, 1)`, attention input projections Glorot-uniform with zero bias,
//! layer and batch norms `γ = 1, β = 0`. Every draw comes from a seeded
//! [`Rng`], so a model is a pure function of its seed (candle's own random
//! tensors are not seedable on CPU).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use seqrec_data::rng::Rng;

use crate::error::{ModelError, Result};

/// Trainable parameters by name, plus non-trainable buffers (batch-norm
/// running statistics), both saved in checkpoints.
#[derive(Debug, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Tensor>,
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Params::default()
    }

    fn insert(&mut self, name: &str, values: Vec<f32>, shape: &[usize], dev: &Device) -> Result<Tensor> {
        if self.vars.contains_key(name) {
            return Err(ModelError::Invalid(format!("parameter `{name}` defined twice")));
        }
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_owned(), var);
        Ok(t)
    }

    /// A parameter drawn uniformly from `[−bound, bound]`.
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let v = (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
        self.insert(name, v, shape, dev)
    }

    /// A parameter drawn from `N(0, std²)`.
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let v = (0..n).map(|_| (rng.normal() * std) as f32).collect();
        self.insert(name, v, shape, dev)
    }

    /// A parameter filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32, dev: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        self.insert(name, vec![value; n], shape, dev)
    }

    /// A non-trainable buffer filled with `value`.
    pub fn buffer(&mut self, name: &str, shape: &[usize], value: f32, dev: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = Tensor::from_vec(vec![value; n], shape, dev)?;
        self.buffers.insert(name.to_owned(), t.clone());
        Ok(t)
    }

    /// The trainable parameters by name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Every tensor (parameters and buffers) by name, for checkpoints.
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> =
            self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        out.extend(self.buffers.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Overwrites every parameter and buffer in place from `tensors`; names
    /// and shapes must match exactly.
    ///
    /// # Errors
    /// A missing, extra or differently shaped tensor, named.
    pub fn load(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let ours = self.vars.len() + self.buffers.len();
        if tensors.len() != ours {
            let extra: Vec<&String> =
                tensors.keys().filter(|k| !self.vars.contains_key(*k) && !self.buffers.contains_key(*k)).collect();
            return Err(ModelError::Invalid(format!(
                "checkpoint has {} tensors, the model {ours} (not in the model: {extra:?})",
                tensors.len()
            )));
        }
        for (name, var) in &self.vars {
            var.set(&checked(tensors, name, var.as_tensor())?)?;
        }
        for (name, buf) in self.buffers.iter_mut() {
            *buf = checked(tensors, name, buf)?;
        }
        Ok(())
    }

    /// A buffer by name.
    pub fn get_buffer(&self, name: &str) -> Option<&Tensor> {
        self.buffers.get(name)
    }

    /// Replaces a buffer (batch-norm running statistics after a step).
    pub fn set_buffer(&mut self, name: &str, value: Tensor) {
        self.buffers.insert(name.to_owned(), value);
    }
}

fn checked(tensors: &BTreeMap<String, Tensor>, name: &str, like: &Tensor) -> Result<Tensor> {
    let t = tensors.get(name).ok_or_else(|| ModelError::Invalid(format!("checkpoint lacks tensor `{name}`")))?;
    if t.dims() != like.dims() {
        return Err(ModelError::Invalid(format!(
            "checkpoint tensor `{name}` has shape {:?}, the model {:?} (another dataset or setting?)",
            t.dims(),
            like.dims()
        )));
    }
    Ok(t.to_dtype(DType::F32)?.to_device(like.device())?.copy()?)
}

/// A dense layer `y = x Wᵀ + b` (`W: [out, in]`), PyTorch-initialised.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    /// Registers `name.weight` and `name.bias`.
    pub fn new(p: &mut Params, name: &str, fan_in: usize, fan_out: usize, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w = p.uniform(&format!("{name}.weight"), &[fan_out, fan_in], bound, rng, dev)?;
        let b = p.uniform(&format!("{name}.bias"), &[fan_out], bound, rng, dev)?;
        Ok(Linear { w, b })
    }

    /// From given tensors.
    pub fn from_tensors(w: Tensor, b: Tensor) -> Self {
        Linear { w, b }
    }

    /// The weight `W` (`[out, in]`).
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// The bias `b` (`[out]`).
    pub fn bias(&self) -> &Tensor {
        &self.b
    }

    /// Applies the layer over the last dimension of `x` (any leading dims).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let fan_in = *dims.last().ok_or_else(|| ModelError::Invalid("linear layer on a scalar".into()))?;
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = (x.reshape((rows, fan_in))?.matmul(&self.w.t()?)? + rows_of(&self.b, rows)?)?;
        let mut out = dims;
        *out.last_mut().expect("non-empty") = self.w.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

/// Layer normalisation over the last dimension (ε as PyTorch's 1e-5).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    /// Registers `name.weight` (1) and `name.bias` (0).
    pub fn new(p: &mut Params, name: &str, width: usize, dev: &Device) -> Result<Self> {
        let gamma = p.constant(&format!("{name}.weight"), &[width], 1.0, dev)?;
        let beta = p.constant(&format!("{name}.bias"), &[width], 0.0, dev)?;
        Ok(LayerNorm { gamma, beta })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.dim(D::Minus1)? as f64;
        let centred = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / width)?)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / width)?;
        let normed = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        let dims = normed.dims().to_vec();
        let rows = normed.elem_count() / self.gamma.elem_count();
        let flat = normed.reshape((rows, self.gamma.elem_count()))?;
        let y = ((flat * rows_of(&self.gamma, rows)?)? + rows_of(&self.beta, rows)?)?;
        Ok(y.reshape(dims)?)
    }
}

/// Batch normalisation of `[rows, width]` inputs (PyTorch's `BatchNorm1d`:
/// ε 1e-5, running-statistics momentum 0.1, unbiased running variance).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    name: String,
    gamma: Tensor,
    beta: Tensor,
}

impl BatchNorm {
    /// Registers `name.weight`, `name.bias` and the buffers
    /// `name.running_mean` (0) and `name.running_var` (1).
    pub fn new(p: &mut Params, name: &str, width: usize, dev: &Device) -> Result<Self> {
        let gamma = p.constant(&format!("{name}.weight"), &[width], 1.0, dev)?;
        let beta = p.constant(&format!("{name}.bias"), &[width], 0.0, dev)?;
        p.buffer(&format!("{name}.running_mean"), &[width], 0.0, dev)?;
        p.buffer(&format!("{name}.running_var"), &[width], 1.0, dev)?;
        Ok(BatchNorm { name: name.to_owned(), gamma, beta })
    }

    /// Training mode normalises with the batch's statistics and returns the
    /// updated running statistics (for [`BatchNorm::commit`]); evaluation
    /// uses the running statistics.
    pub fn forward(&self, p: &Params, x: &Tensor, train: bool) -> Result<(Tensor, Option<[Tensor; 2]>)> {
        let mean_name = format!("{}.running_mean", self.name);
        let var_name = format!("{}.running_var", self.name);
        let (rm, rv) = match (p.get_buffer(&mean_name), p.get_buffer(&var_name)) {
            (Some(m), Some(v)) => (m, v),
            _ => return Err(ModelError::Invalid(format!("batch norm `{}` has no running statistics", self.name))),
        };
        if train {
            let n = x.dim(0)?;
            if n < 2 {
                return Err(ModelError::Invalid("batch norm in training needs at least 2 rows".into()));
            }
            let mean = x.mean_keepdim(0)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(0)?;
            let y = centred.broadcast_div(&(&var + 1e-5)?.sqrt()?)?;
            let y = ((y * rows_of(&self.gamma, n)?)? + rows_of(&self.beta, n)?)?;
            let unbiased = (var.detach().squeeze(0)? * (n as f64 / (n - 1) as f64))?;
            let new_mean = ((rm * 0.9)? + (mean.detach().squeeze(0)? * 0.1)?)?;
            let new_var = ((rv * 0.9)? + (unbiased * 0.1)?)?;
            Ok((y, Some([new_mean, new_var])))
        } else {
            let y = x.broadcast_sub(rm)?.broadcast_div(&(rv + 1e-5)?.sqrt()?)?;
            Ok((y.broadcast_mul(&self.gamma)?.broadcast_add(&self.beta)?, None))
        }
    }

    /// Stores running statistics returned by a training forward pass.
    pub fn commit(&self, p: &mut Params, stats: [Tensor; 2]) {
        let [m, v] = stats;
        p.set_buffer(&format!("{}.running_mean", self.name), m);
        p.set_buffer(&format!("{}.running_var", self.name), v);
    }
}

/// `v` (`[C]`) repeated as the `rows` rows of a `[rows, C]` tensor, as the
/// outer product `1 · vᵀ`. Autograd then sums its gradient over the rows
/// with a matrix product; candle's generic reduction over a leading
/// dimension (what a `broadcast_add` backward does) cost a tenth of a BST
/// step.
pub fn rows_of(v: &Tensor, rows: usize) -> Result<Tensor> {
    let c = v.elem_count();
    let ones = Tensor::ones((rows, 1), v.dtype(), v.device())?;
    Ok(ones.matmul(&v.reshape((1, c))?)?)
}

/// σ(x) (`seqrec_kernels::act::sigmoid`: vectorised on the CPU; finite for any finite x).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(seqrec_kernels::act::sigmoid(x)?)
}

/// softplus(x) = log(1 + eˣ), computed as `relu(x) + log(1 + e^−|x|)`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// Mish: `x · tanh(softplus(x))`.
pub fn mish(x: &Tensor) -> Result<Tensor> {
    Ok((x * softplus(x)?.tanh()?)?)
}

/// Softmax over the last dimension (max-shifted).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Inverted-dropout mask (`0` or `1 / (1 − p)`) of the given shape.
pub fn dropout_mask(rng: &mut Rng, shape: &[usize], p: f32, dev: &Device) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| if rng.uniform() < f64::from(p) { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// Dropout with drop probability `p` when `rng` is given (training), identity otherwise.
pub fn dropout(x: &Tensor, p: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => Ok((x * dropout_mask(rng, x.dims(), p, x.device())?)?),
        _ => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn vals(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn mish_and_softplus_match_their_definitions() {
        let xs = [-30.0f32, -2.0, -0.5, 0.0, 0.7, 3.0, 40.0];
        let got = vals(&mish(&t(&xs, &[7])).unwrap());
        for (x, g) in xs.iter().zip(got) {
            let x = f64::from(*x);
            let want = x * (x.exp().ln_1p()).tanh();
            assert!((f64::from(g) - want).abs() < 1e-5, "mish({x}) = {g}, want {want}");
        }
    }

    #[test]
    fn layer_norm_normalises_each_row() {
        let mut p = Params::new();
        let ln = LayerNorm::new(&mut p, "ln", 4, &Device::Cpu).unwrap();
        let y = vals(&ln.forward(&t(&[1.0, 2.0, 3.0, 4.0, -1.0, -1.0, 1.0, 1.0], &[2, 4])).unwrap());
        // Row 1: mean 2.5, biased variance 1.25.
        let s = (1.25f64 + 1e-5).sqrt();
        let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, -1.0, -1.0, 1.0, 1.0];
        for (g, w) in y.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{y:?}");
        }
    }

    #[test]
    fn batch_norm_uses_batch_statistics_in_training_and_running_ones_after() {
        let dev = Device::Cpu;
        let mut p = Params::new();
        let bn = BatchNorm::new(&mut p, "bn", 2, &dev).unwrap();
        let x = t(&[1.0, 10.0, 3.0, 10.0, 5.0, 10.0], &[3, 2]);
        let (y, stats) = bn.forward(&p, &x, true).unwrap();
        let y = vals(&y);
        // Column 0: mean 3, biased variance 8/3; column 1 is constant → 0.
        let s = (8.0f64 / 3.0 + 1e-5).sqrt();
        for (g, w) in y.iter().zip([-2.0 / s, 0.0, 0.0, 0.0, 2.0 / s, 0.0]) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{y:?}");
        }
        bn.commit(&mut p, stats.unwrap());
        // Running: mean 0.9·0 + 0.1·3; variance 0.9·1 + 0.1·4 (unbiased 8/2).
        assert!((vals(p.get_buffer("bn.running_mean").unwrap())[0] - 0.3).abs() < 1e-6);
        assert!((vals(p.get_buffer("bn.running_var").unwrap())[0] - 1.3).abs() < 1e-6);
        assert!((vals(p.get_buffer("bn.running_var").unwrap())[1] - 0.9).abs() < 1e-6);
        let (e, none) = bn.forward(&p, &t(&[0.3, 1.0], &[1, 2]), false).unwrap();
        assert!(none.is_none());
        assert!(vals(&e)[0].abs() < 1e-6, "running mean maps to 0");
        assert!(bn.forward(&p, &t(&[0.3, 1.0], &[1, 2]), true).is_err(), "one row cannot be batch-normalised");
    }

    #[test]
    fn params_are_a_function_of_the_seed_and_reload_checks_shapes() {
        let dev = Device::Cpu;
        let build = |seed| {
            let mut p = Params::new();
            let mut rng = Rng::new(seed);
            Linear::new(&mut p, "l", 3, 2, &mut rng, &dev).unwrap();
            p
        };
        let (a, b, c) = (build(1), build(1), build(2));
        let va = vals(a.vars()["l.weight"].as_tensor());
        assert_eq!(va, vals(b.vars()["l.weight"].as_tensor()));
        assert_ne!(va, vals(c.vars()["l.weight"].as_tensor()));
        assert!(va.iter().all(|x| x.abs() <= 1.0 / 3f32.sqrt()));
        let mut d = build(3);
        d.load(&a.named_tensors()).unwrap();
        assert_eq!(vals(d.vars()["l.weight"].as_tensor()), va);
        let mut wrong = a.named_tensors();
        wrong.insert("l.bias".into(), Tensor::zeros(5, DType::F32, &dev).unwrap());
        let e = d.load(&wrong).unwrap_err().to_string();
        assert!(e.contains("l.bias") && e.contains("shape"), "{e}");
    }
}
