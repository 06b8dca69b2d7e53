//! Optimisers over named parameters: GRU4Rec's Adagrad with momentum and
//! Adam, dense or sparse (only the rows of an item table a step touched),
//! running the in-place ops of [`seqrec_kernels::optim`].

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use seqrec_kernels::optim::{
    dense_step, dense_step_outer, sparse_step, sparse_step_outer, sparse_step_outer_with_bias, RowGroups, Rule,
};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Which optimiser, with its settings; serde as `optimizer = "adagrad"` plus keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adagrad with momentum (GRU4Rec's; accumulator from 0, ε = 1e-6).
    Adagrad,
    /// Adam (β1 0.9, β2 0.999, ε 1e-8), lazy on sparse rows.
    Adam,
    /// AdamW: Adam with decoupled weight decay (PyTorch's default 0.01,
    /// [`Optimizer::with_weight_decay`]).
    #[serde(rename = "adamw")]
    AdamW,
    /// Nadam (Dozat 2016, as Keras without the momentum schedule): Adam with a
    /// Nesterov look-ahead, `m̂ = β1·m_t/(1−β1^(t+1)) + (1−β1)·g/(1−β1^t)`.
    /// Dense parameters only.
    Nadam,
}

/// Optimiser state: one state tensor per parameter name.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f32,
    momentum: f32,
    beta1: f32,
    weight_decay: f32,
    step: u64,
    states: BTreeMap<String, Tensor>,
    /// The row groups of the last sparse update (the output table and its
    /// bias share their ids every step: grouped once).
    last_groups: Option<(Vec<u32>, RowGroups)>,
}

impl Optimizer {
    /// A fresh optimiser (every state zero).
    ///
    /// # Errors
    /// A learning rate that is not positive and finite, or a momentum outside `[0, 1)`.
    pub fn new(kind: OptimizerKind, lr: f32, momentum: f32) -> Result<Self> {
        Self::check_settings(lr, momentum)?;
        let weight_decay = if kind == OptimizerKind::AdamW { 0.01 } else { 0.0 };
        Ok(Optimizer {
            kind,
            lr,
            momentum,
            beta1: 0.9,
            weight_decay,
            step: 0,
            states: BTreeMap::new(),
            last_groups: None,
        })
    }

    /// Sets AdamW's decoupled weight decay (ignored by the other kinds).
    ///
    /// # Errors
    /// A negative or non-finite value.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Result<Self> {
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(ModelError::Invalid(format!(
                "key `weight_decay`: found {weight_decay}, expected a number >= 0"
            )));
        }
        if self.kind == OptimizerKind::AdamW {
            self.weight_decay = weight_decay;
        }
        Ok(self)
    }

    /// Changes the learning rate (schedules).
    pub fn set_learning_rate(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// Changes Adam's β1 (one-cycle schedules cycle it as momentum).
    pub fn set_beta1(&mut self, beta1: f32) {
        self.beta1 = beta1;
    }

    /// Checks a learning rate and a momentum; the error names the key.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for a learning rate that is not positive and
    /// finite, or a momentum outside `[0, 1)`.
    pub fn check_settings(lr: f32, momentum: f32) -> Result<()> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(ModelError::Invalid(format!("key `learning_rate`: found {lr}, expected a positive number")));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(ModelError::Invalid(format!("key `momentum`: found {momentum}, expected a value in [0, 1)")));
        }
        Ok(())
    }

    /// Starts a step (Adam's bias correction counts steps).
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Number of steps begun.
    pub fn steps(&self) -> u64 {
        self.step
    }

    fn rule(&self) -> Rule {
        match self.kind {
            OptimizerKind::Adagrad => Rule::AdagradM { lr: self.lr, momentum: self.momentum, eps: 1e-6 },
            OptimizerKind::Adam | OptimizerKind::AdamW | OptimizerKind::Nadam => Rule::Adam {
                lr: self.lr,
                beta1: self.beta1,
                beta2: 0.999,
                eps: 1e-8,
                t: self.step.max(1),
                weight_decay: self.weight_decay,
            },
        }
    }

    fn state(&mut self, name: &str, param: &Tensor, sparse: bool) -> Result<Tensor> {
        if let Some(s) = self.states.get(name) {
            return Ok(s.clone());
        }
        let shape: candle_core::Shape = if sparse {
            let (rows, width) = param.dims2()?;
            (rows, 2 * width).into()
        } else {
            (2 * param.elem_count()).into()
        };
        let state = if param.device().is_cpu() {
            // Zeros written, not calloc's untouched pages: a sparse step reads
            // a row's accumulator before writing it, so an untouched page was
            // first mapped to the shared zero page and faulted again on the
            // write, which shoots down the other cores' TLB entries (an
            // interrupt to each). Before: ≈ 37,000 such faults in an epoch at
            // 40,000 items × 480 units, in the middle of the steps.
            let mut zeros = Vec::with_capacity(shape.elem_count());
            zeros.resize(shape.elem_count(), 0f32);
            Tensor::from_vec(zeros, shape, param.device())?
        } else {
            Tensor::zeros(shape, DType::F32, param.device())?
        };
        self.states.insert(name.to_owned(), state.clone());
        Ok(state)
    }

    /// Updates a dense parameter from its gradient.
    ///
    /// # Errors
    /// Shape mismatches or a failing op.
    pub fn dense(&mut self, name: &str, param: &Tensor, grad: &Tensor) -> Result<()> {
        if self.kind == OptimizerKind::Nadam {
            return self.nadam(name, param, grad);
        }
        let state = self.state(name, param, false)?;
        Ok(dense_step(self.rule(), param, &state, &grad.contiguous()?)?)
    }

    /// Updates the rows of `param` named by `ids` (repeats summed) from the gradient rows `grad`.
    ///
    /// # Errors
    /// Shape mismatches, ids out of range or a failing op.
    pub fn sparse(&mut self, name: &str, param: &Tensor, grad: &Tensor, ids: &[u32]) -> Result<()> {
        let grad = grad.contiguous()?;
        self.sparse_with(name, param, ids, |rule, state, groups| sparse_step(rule, param, state, &grad, groups))
    }

    /// A sparse step of `param`'s rows `ids` by `step`, given the rule, the
    /// state and the grouped ids (regrouped only when `ids` changed since the
    /// last sparse step: a step's output table and bias share them; when
    /// `ids` are the tail of the last ones, as the bias rows are of the
    /// constrained output table's, the tail's grouping is taken from them).
    fn sparse_with(
        &mut self,
        name: &str,
        param: &Tensor,
        ids: &[u32],
        step: impl FnOnce(Rule, &Tensor, &RowGroups) -> candle_core::Result<()>,
    ) -> Result<()> {
        if self.kind == OptimizerKind::Nadam {
            return Err(ModelError::Invalid(format!(
                "key `optimizer`: nadam updates dense parameters only; `{name}` is updated sparsely (use adam)"
            )));
        }
        let state = self.state(name, param, true)?;
        let rule = self.rule();
        let groups = match self.last_groups.take() {
            Some((last, groups)) if last == ids => (last, groups),
            // The tail of the last ids (the bias rows after the output table's).
            Some((last, groups)) if last.len() >= ids.len() && last[last.len() - ids.len()..] == *ids => {
                (ids.to_vec(), groups.suffix(last.len() - ids.len()))
            }
            _ => (ids.to_vec(), RowGroups::new(ids)),
        };
        let done = step(rule, &state, &groups.1);
        self.last_groups = Some(groups);
        Ok(done?)
    }

    /// [`Optimizer::dense`] with the gradient `aᵀ·b` (`a` `[k, rows]`, `b`
    /// `[k, cols]`), computed by the update a block at a time on the CPU
    /// ([`seqrec_kernels::optim::dense_step_outer`]); the same parameters.
    ///
    /// # Errors
    /// As [`Optimizer::dense`].
    pub fn dense_outer(&mut self, name: &str, param: &Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
        if self.kind == OptimizerKind::Nadam {
            let grad = a.t()?.matmul(b)?.reshape(param.shape())?;
            return self.nadam(name, param, &grad);
        }
        let state = self.state(name, param, false)?;
        Ok(dense_step_outer(self.rule(), param, &state, a, b)?)
    }

    /// The rule a step taken now would use (its learning rate and Adam's
    /// step number), for an update applied later with
    /// `seqrec_kernels::optim`'s steps; `None` for Nadam, whose steps are
    /// not one of those rules.
    pub fn rule_now(&self) -> Option<Rule> {
        (self.kind != OptimizerKind::Nadam).then(|| self.rule())
    }

    /// The state of the dense parameter `name` (created zeroed at first
    /// use), for an update applied later with the rule of [`Optimizer::rule_now`].
    ///
    /// # Errors
    /// A tensor error.
    pub fn dense_state(&mut self, name: &str, param: &Tensor) -> Result<Tensor> {
        self.state(name, param, false)
    }

    /// [`Optimizer::sparse`] with the gradient rows `[given ‖ aᵀ·b]` and
    /// `ids` naming those rows in that order
    /// ([`seqrec_kernels::optim::sparse_step_outer`]); the same parameters.
    ///
    /// # Errors
    /// As [`Optimizer::sparse`].
    pub fn sparse_outer(
        &mut self,
        name: &str,
        param: &Tensor,
        given: &Tensor,
        (a, b): (&Tensor, &Tensor),
        ids: &[u32],
    ) -> Result<()> {
        let given = given.contiguous()?;
        self.sparse_with(name, param, ids, |rule, state, groups| {
            sparse_step_outer(rule, param, state, &given, (a, b), groups)
        })
    }

    /// [`Optimizer::sparse_outer`] and the sparse step of the bias table
    /// `bias` (`[rows, 1]`, state named `bias_name`) in the same pass over the
    /// rows ([`seqrec_kernels::optim::sparse_step_outer_with_bias`]): the
    /// bias gradient `bias_grad` has one value per product row, so its ids
    /// are the tail of `ids`. The parameters of `sparse_outer` followed by
    /// `sparse(bias_name, bias, bias_grad, tail of ids)`.
    ///
    /// # Errors
    /// As [`Optimizer::sparse`].
    pub fn sparse_outer_with_bias(
        &mut self,
        (name, param): (&str, &Tensor),
        given: &Tensor,
        (a, b): (&Tensor, &Tensor),
        ids: &[u32],
        (bias_name, bias, bias_grad): (&str, &Tensor, &Tensor),
    ) -> Result<()> {
        let given = given.contiguous()?;
        let bias_grad = bias_grad.contiguous()?;
        let bias_state = self.state(bias_name, bias, true)?;
        self.sparse_with(name, param, ids, |rule, state, groups| {
            sparse_step_outer_with_bias(rule, (param, state), &given, (a, b), groups, (bias, &bias_state, &bias_grad))
        })
    }

    /// Nadam's dense step, as tensor ops (the state is `[m ‖ v]` like Adam's).
    fn nadam(&mut self, name: &str, param: &Tensor, grad: &Tensor) -> Result<()> {
        let (b1, b2, eps, lr) = (f64::from(self.beta1), 0.999f64, 1e-8f64, f64::from(self.lr));
        let t = self.step.max(1).min(i32::MAX as u64) as i32;
        let state = self.state(name, param, false)?;
        let n = param.elem_count();
        let g = grad.flatten_all()?;
        let m = ((state.narrow(0, 0, n)? * b1)? + (&g * (1.0 - b1))?)?;
        let v = ((state.narrow(0, n, n)? * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let num = ((&m * (b1 / (1.0 - b1.powi(t + 1))))? + (&g * ((1.0 - b1) / (1.0 - b1.powi(t))))?)?;
        let den = ((&v / (1.0 - b2.powi(t)))?.sqrt()? + eps)?;
        let p = (param.flatten_all()? - ((num / den)? * lr)?)?;
        param.slice_set(&p.reshape(param.shape())?, 0, 0)?;
        state.slice_set(&Tensor::cat(&[&m, &v], 0)?, 0, 0)?;
        Ok(())
    }

    /// The state tensors by parameter name, and the step count (for checkpoints).
    pub fn states(&self) -> (&BTreeMap<String, Tensor>, u64) {
        (&self.states, self.step)
    }

    /// Restores states and the step count saved by [`Optimizer::states`].
    pub fn restore(&mut self, states: BTreeMap<String, Tensor>, step: u64) {
        self.states = states;
        self.step = step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nadam_matches_its_definition() {
        use candle_core::Device;
        let init = [0.5f64, -0.25, 1.0];
        let p = Tensor::from_vec(init.iter().map(|&x| x as f32).collect::<Vec<_>>(), 3, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::Nadam, 0.01, 0.0).unwrap();
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.01f64);
        let (mut want, mut m, mut v) = (init.to_vec(), [0f64; 3], [0f64; 3]);
        for t in 1..=4i32 {
            let g = [0.3 * f64::from(t), -0.7, 0.1 / f64::from(t)];
            opt.begin_step();
            let gt = Tensor::from_vec(g.iter().map(|&x| x as f32).collect::<Vec<_>>(), 3, &Device::Cpu).unwrap();
            opt.dense("p", &p, &gt).unwrap();
            for j in 0..3 {
                m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                let mh = b1 * m[j] / (1.0 - b1.powi(t + 1)) + (1.0 - b1) * g[j] / (1.0 - b1.powi(t));
                want[j] -= lr * mh / ((v[j] / (1.0 - b2.powi(t))).sqrt() + eps);
            }
        }
        for (g, w) in p.to_vec1::<f32>().unwrap().iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
        }
        let table = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let rows = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
        let err = opt.sparse("e", &table, &rows, &[1]).unwrap_err();
        assert!(err.to_string().contains("dense parameters only"), "{err}");
    }
}
