//! The embedding-GRU next-product model: item embedding (padding id 0
//! masked) → one or more GRU layers over the look-back window (optionally
//! bidirectional) → a dense layer over every item → softmax.
//!
//! The GRU is PyTorch's/Keras' (`reset_after`) form:
//! `r = σ(W_r x + b_ir + U_r h + b_hr)`, `z = σ(W_z x + b_iz + U_z h + b_hz)`,
//! `n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn))`, `h' = (1 − z) ⊙ n + z ⊙ h`.
//! Windows are left-padded; a padding step keeps the state (Keras masking),
//! so the forward direction starts from zero at the first real item and
//! the backward direction's last steps over the padding change nothing.
//! The window's summary is the forward direction's last state, concatenated
//! with the backward direction's state after reading back to the window's
//! start (Keras' `Bidirectional(GRU(..))` without sequences).
//!
//! Dropout (drop probabilities): `dropout` on each layer's input (the
//! embeddings for the first), `recurrent_dropout` on the state entering the
//! recurrent product, one mask per window for the whole window (Gal &
//! Ghahramani, as Keras does). Initialisation: embeddings `U(−0.05, 0.05)`
//! (Keras), GRU and dense weights PyTorch's `U(−1/√fan, 1/√fan)`.

use candle_core::{Device, Tensor};
use seqrec_data::batch::WindowBatch;
use seqrec_data::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{self, Linear, Params};
use crate::seq::{check_window_width, output_loss, Objective, SeqBatch, WindowModel};
use crate::window_eval::WindowScorer;

/// The embedding-GRU's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbGruShape {
    /// Number of ids, padding id 0 included.
    pub n_ids: usize,
    /// Look-back window width.
    pub len: usize,
    /// Item embedding width.
    pub embedding: usize,
    /// Hidden width of each stacked GRU layer (per direction).
    pub layers: Vec<usize>,
    /// Read the window in both directions.
    pub bidirectional: bool,
    /// Drop probability on each layer's input.
    pub dropout: f32,
    /// Drop probability on the recurrent state.
    pub recurrent_dropout: f32,
}

impl EmbGruShape {
    /// Checks the settings, naming the config key at fault.
    ///
    /// # Errors
    /// [`ModelError::Invalid`].
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.n_ids < 2 {
            return bad(format!("embedding-GRU: {} ids, expected padding and at least one item", self.n_ids));
        }
        if self.len == 0 {
            return bad("key `len`: found 0, expected a window of at least 1 event".into());
        }
        if self.embedding == 0 {
            return bad("key `embedding`: found 0, expected a positive width".into());
        }
        if self.layers.is_empty() || self.layers.contains(&0) {
            return bad(format!("key `layers`: found {:?}, expected one or more positive widths", self.layers));
        }
        for (key, p) in [("dropout", self.dropout), ("recurrent_dropout", self.recurrent_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("key `{key}`: found {p}, expected a probability in [0, 1)"));
            }
        }
        Ok(())
    }

    fn directions(&self) -> usize {
        1 + usize::from(self.bidirectional)
    }

    /// Width of the window summary fed to the output layer.
    pub fn summary_width(&self) -> usize {
        self.layers.last().copied().unwrap_or(0) * self.directions()
    }
}

#[derive(Debug)]
struct Direction {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    hidden: usize,
}

/// The embedding-GRU model.
#[derive(Debug)]
pub struct EmbGru {
    shape: EmbGruShape,
    params: Params,
    items: Tensor,
    /// `layers × directions`.
    gru: Vec<Vec<Direction>>,
    out: Linear,
    dev: Device,
}

/// What a GRU layer returns: every step's state (time order) and the final one.
struct LayerOut {
    steps: Vec<Tensor>,
    last: Tensor,
}

impl EmbGru {
    /// A freshly initialised model.
    ///
    /// # Errors
    /// Bad settings ([`EmbGruShape::check`]) or a failing op.
    pub fn new(shape: &EmbGruShape, seed: u64, dev: &Device) -> Result<Self> {
        shape.check()?;
        let mut rng = Rng::fork(seed, 0x00E3_B6A0);
        let mut p = Params::new();
        let items = p.uniform("item_embedding", &[shape.n_ids, shape.embedding], 0.05, &mut rng, dev)?;
        let zeros = Tensor::zeros((1, shape.embedding), candle_core::DType::F32, dev)?;
        items.slice_set(&zeros, 0, 0)?;
        let mut gru = Vec::new();
        let mut fan_in = shape.embedding;
        for (l, &h) in shape.layers.iter().enumerate() {
            let bound = 1.0 / (h as f64).sqrt();
            let mut dirs = Vec::new();
            for dir in ["fwd", "bwd"].iter().take(shape.directions()) {
                let name = |s: &str| format!("gru{l}.{dir}.{s}");
                dirs.push(Direction {
                    w_ih: p.uniform(&name("weight_ih"), &[3 * h, fan_in], bound, &mut rng, dev)?,
                    w_hh: p.uniform(&name("weight_hh"), &[3 * h, h], bound, &mut rng, dev)?,
                    b_ih: p.uniform(&name("bias_ih"), &[3 * h], bound, &mut rng, dev)?,
                    b_hh: p.uniform(&name("bias_hh"), &[3 * h], bound, &mut rng, dev)?,
                    hidden: h,
                });
            }
            gru.push(dirs);
            fan_in = h * shape.directions();
        }
        let out = Linear::new(&mut p, "output", shape.summary_width(), shape.n_ids, &mut rng, dev)?;
        Ok(EmbGru { shape: shape.clone(), params: p, items, gru, out, dev: dev.clone() })
    }

    /// The model's settings.
    pub fn shape(&self) -> &EmbGruShape {
        &self.shape
    }

    /// One direction of one layer over the per-step inputs `xs` (each
    /// `[rows, fan_in]`, time order); `masks[t]` is 1 at rows whose step `t`
    /// is real and 0 at padding (`[rows, hidden]`).
    ///
    /// Written for candle's autograd on CPU: every step reads its own input
    /// tensor (narrowing one `[len, rows, ·]` tensor per step would make the
    /// backward pass pad each step's gradient to the full tensor, quadratic
    /// in `len`), gate weights are row blocks taken once, and every per-step
    /// op runs on contiguous, equal-shaped operands.
    fn run(
        &self,
        d: &Direction,
        xs: &[Tensor],
        masks: &[Tensor],
        reverse: bool,
        rng: &mut Option<&mut Rng>,
    ) -> Result<LayerOut> {
        let b = xs.first().map_or(Ok(0), |x| x.dim(0))?;
        let hd = d.hidden;
        let block = |w: &Tensor, g: usize| -> Result<Tensor> { Ok(w.narrow(0, g * hd, hd)?.t()?) };
        let (wr, wz, wn) = (block(&d.w_ih, 0)?, block(&d.w_ih, 1)?, block(&d.w_ih, 2)?);
        let (ur, uz, un) = (block(&d.w_hh, 0)?, block(&d.w_hh, 1)?, block(&d.w_hh, 2)?);
        let bias = |v: &Tensor, g: usize| -> Result<Tensor> { Ok(v.narrow(0, g * hd, hd)?) };
        // r and z: both biases add outside the reset product; b_hn stays inside it.
        let b_r = nn::rows_of(&(bias(&d.b_ih, 0)? + bias(&d.b_hh, 0)?)?, b)?;
        let b_z = nn::rows_of(&(bias(&d.b_ih, 1)? + bias(&d.b_hh, 1)?)?, b)?;
        let b_in = nn::rows_of(&bias(&d.b_ih, 2)?, b)?;
        let b_hn = nn::rows_of(&bias(&d.b_hh, 2)?, b)?;
        let rec_mask = match rng.as_deref_mut() {
            Some(r) if self.shape.recurrent_dropout > 0.0 => {
                Some(nn::dropout_mask(r, &[b, hd], self.shape.recurrent_dropout, &self.dev)?)
            }
            _ => None,
        };
        let mut h = Tensor::zeros((b, hd), candle_core::DType::F32, &self.dev)?;
        let l = xs.len();
        let mut steps = Vec::with_capacity(l);
        let order: Vec<usize> = if reverse { (0..l).rev().collect() } else { (0..l).collect() };
        for &t in &order {
            let x = &xs[t];
            let h_in = match &rec_mask {
                Some(m) => (&h * m)?,
                None => h.clone(),
            };
            let r = nn::sigmoid(&((x.matmul(&wr)? + h_in.matmul(&ur)?)? + &b_r)?)?;
            let z = nn::sigmoid(&((x.matmul(&wz)? + h_in.matmul(&uz)?)? + &b_z)?)?;
            let n = ((x.matmul(&wn)? + &b_in)? + (r * (h_in.matmul(&un)? + &b_hn)?)?)?.tanh()?;
            let new = (&n + (z * (&h - &n)?)?)?;
            // padding steps keep the state.
            h = (&h + ((new - &h)? * &masks[t])?)?;
            steps.push(h.clone());
        }
        if reverse {
            steps.reverse();
        }
        Ok(LayerOut { steps, last: h })
    }

    /// The GRU stack over `inputs` (`rows × len`): the summary of each window
    /// (`[rows, summary_width]`) and, when `all` (one direction only), every
    /// position's last-layer state (`[rows · len, width]`, row-major).
    fn encode(&self, inputs: &[u32], all: bool, mut rng: Option<&mut Rng>) -> Result<(Tensor, Option<Tensor>)> {
        let l = self.shape.len;
        let b = inputs.len() / l;
        let column = |t: usize| -> Vec<u32> { (0..b).map(|r| inputs[r * l + t]).collect() };
        let mask_of = |width: usize| -> Result<Vec<Tensor>> {
            (0..l)
                .map(|t| {
                    let v: Vec<f32> = column(t)
                        .iter()
                        .flat_map(|&x| std::iter::repeat_n(f32::from(u8::from(x != 0)), width))
                        .collect();
                    Ok(Tensor::from_vec(v, (b, width), &self.dev)?)
                })
                .collect()
        };
        let mut xs: Vec<Tensor> = (0..l)
            .map(|t| Ok(self.items.index_select(&Tensor::from_vec(column(t), b, &self.dev)?, 0)?))
            .collect::<Result<_>>()?;
        let mut summary = None;
        let mut steps_out = None;
        for (li, dirs) in self.gru.iter().enumerate() {
            let x_in: Vec<Tensor> =
                xs.iter().map(|x| nn::dropout(x, self.shape.dropout, rng.as_deref_mut())).collect::<Result<_>>()?;
            let masks = mask_of(dirs[0].hidden)?;
            let mut outs = Vec::new();
            for (di, d) in dirs.iter().enumerate() {
                outs.push(self.run(d, &x_in, &masks, di == 1, &mut rng)?);
            }
            if li + 1 == self.gru.len() {
                let lasts: Vec<&Tensor> = outs.iter().map(|o| &o.last).collect();
                summary = Some(Tensor::cat(&lasts, 1)?);
                if all {
                    let st = Tensor::stack(&outs[0].steps, 1)?; // [rows, len, h]
                    steps_out = Some(st.reshape((b * l, dirs[0].hidden))?);
                }
            } else if outs.len() == 1 {
                xs = outs.swap_remove(0).steps;
            } else {
                xs = (0..l)
                    .map(|t| Tensor::cat(&outs.iter().map(|o| &o.steps[t]).collect::<Vec<_>>(), 1))
                    .collect::<candle_core::Result<_>>()?;
            }
        }
        let summary = summary.ok_or_else(|| ModelError::Invalid("embedding-GRU without layers".into()))?;
        Ok((summary, steps_out))
    }

    /// `[rows, n_ids]` scores of every id after each window of `inputs`.
    ///
    /// # Errors
    /// A failing op.
    pub fn score_all(&self, inputs: &[u32]) -> Result<Tensor> {
        let (s, _) = self.encode(inputs, false, None)?;
        self.out.forward(&s)
    }
}

impl WindowScorer for EmbGru {
    fn n_ids(&self) -> usize {
        self.shape.n_ids
    }

    fn window_len(&self) -> usize {
        self.shape.len
    }

    fn score_windows(&mut self, batch: &WindowBatch, scores: &mut Vec<f32>) -> Result<()> {
        check_window_width(batch, "embedding-GRU", self.shape.len)?;
        *scores = self.score_all(&batch.history)?.flatten_all()?.to_vec1()?;
        Ok(())
    }
}

impl WindowModel for EmbGru {
    fn loss(&mut self, batch: &SeqBatch, objective: Objective, rng: &mut Rng) -> Result<Tensor> {
        let (at, targets) = batch.checked_targets("embedding-GRU", self.shape.n_ids, self.shape.len)?;
        let l = self.shape.len as u32;
        let h = if batch.last_only() {
            let (s, _) = self.encode(&batch.inputs, false, Some(rng))?;
            let rows: Vec<u32> = at.iter().map(|&i| i / l).collect();
            s.index_select(&Tensor::from_vec(rows, targets.len(), &self.dev)?, 0)?
        } else {
            if self.shape.bidirectional {
                return Err(ModelError::Invalid(
                    "embedding-GRU: a bidirectional model cannot train on shifted windows (a position would read \
                     its own target); use one window per target (key `train_windows = \"every\"`)"
                        .into(),
                ));
            }
            let (_, all) = self.encode(&batch.inputs, true, Some(rng))?;
            let all = all.ok_or_else(|| ModelError::Invalid("embedding-GRU: no per-position states".into()))?;
            all.index_select(&Tensor::from_vec(at, targets.len(), &self.dev)?, 0)?
        };
        output_loss(&h, self.out.weight(), Some(self.out.bias()), &targets, objective)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    fn device(&self) -> &Device {
        &self.dev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(bidirectional: bool) -> EmbGruShape {
        EmbGruShape {
            n_ids: 9,
            len: 4,
            embedding: 3,
            layers: vec![5, 4],
            bidirectional,
            dropout: 0.0,
            recurrent_dropout: 0.0,
        }
    }

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn mat(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_vec2::<f32>().unwrap().into_iter().map(|r| r.into_iter().map(f64::from).collect()).collect()
    }

    fn vec1(t: &Tensor) -> Vec<f64> {
        t.to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    /// The GRU recurrence written out in f64 for one direction.
    fn reference_layer(d: &Direction, xs: &[Vec<f64>]) -> Vec<f64> {
        let (wi, wh, bi, bh) = (mat(&d.w_ih), mat(&d.w_hh), vec1(&d.b_ih), vec1(&d.b_hh));
        let h_n = d.hidden;
        let mut h = vec![0f64; h_n];
        for x in xs {
            let gi: Vec<f64> =
                (0..3 * h_n).map(|j| bi[j] + wi[j].iter().zip(x).map(|(a, b)| a * b).sum::<f64>()).collect();
            let gh: Vec<f64> =
                (0..3 * h_n).map(|j| bh[j] + wh[j].iter().zip(&h).map(|(a, b)| a * b).sum::<f64>()).collect();
            h = (0..h_n)
                .map(|k| {
                    let r = sig(gi[k] + gh[k]);
                    let z = sig(gi[h_n + k] + gh[h_n + k]);
                    let n = (gi[2 * h_n + k] + r * gh[2 * h_n + k]).tanh();
                    (1.0 - z) * n + z * h[k]
                })
                .collect();
        }
        h
    }

    #[test]
    fn one_layer_matches_the_recurrence_and_padding_keeps_the_state() {
        let s = EmbGruShape { layers: vec![5], ..shape(true) };
        let m = EmbGru::new(&s, 3, &Device::Cpu).unwrap();
        let emb = mat(&m.items);
        let (summary, _) = m.encode(&[0, 0, 4, 7], false, None).unwrap();
        let got = mat(&summary)[0].clone();
        let fwd = reference_layer(&m.gru[0][0], &[emb[4].clone(), emb[7].clone()]);
        let bwd = reference_layer(&m.gru[0][1], &[emb[7].clone(), emb[4].clone()]);
        let want: Vec<f64> = fwd.into_iter().chain(bwd).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn shifted_training_refuses_bidirectional_and_windows_train_both() {
        let batch = SeqBatch { len: 4, inputs: vec![0, 1, 2, 3, 5, 6, 7, 8], targets: vec![0, 2, 3, 4, 6, 7, 8, 1] };
        let mut bi = EmbGru::new(&shape(true), 1, &Device::Cpu).unwrap();
        let err = bi.loss(&batch, Objective::Full, &mut Rng::new(0)).unwrap_err();
        assert!(err.to_string().contains("train_windows"), "{err}");
        let mut uni = EmbGru::new(&shape(false), 1, &Device::Cpu).unwrap();
        assert!(uni.loss(&batch, Objective::Full, &mut Rng::new(0)).is_ok());
        let last = SeqBatch { len: 4, inputs: vec![0, 1, 2, 3], targets: vec![0, 0, 0, 4] };
        let loss = bi.loss(&last, Objective::Full, &mut Rng::new(0)).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&bi.items).unwrap();
        let row0 = g.narrow(0, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(row0.iter().all(|&x| x == 0.0), "padding row got a gradient: {row0:?}");
    }

    #[test]
    fn per_position_states_agree_with_shorter_windows() {
        // the unidirectional state at position p of [a b c d] equals the
        // summary of the window [0 .. a b c] ending there.
        let m = EmbGru::new(&shape(false), 5, &Device::Cpu).unwrap();
        let (_, all) = m.encode(&[1, 2, 3, 4], true, None).unwrap();
        let all = mat(&all.unwrap());
        let (s, _) = m.encode(&[0, 1, 2, 3], false, None).unwrap();
        for (a, b) in all[2].iter().zip(&mat(&s)[0]) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_settings_name_the_key() {
        let err = EmbGru::new(&EmbGruShape { layers: vec![], ..shape(false) }, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("key `layers`"), "{err}");
        let err = EmbGru::new(&EmbGruShape { recurrent_dropout: 1.0, ..shape(false) }, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("key `recurrent_dropout`"), "{err}");
    }
}
