//! SASRec (Kang & McAuley 2018, "Self-Attentive Sequential
//! Recommendation", arXiv:1808.09781): causal self-attention over the last
//! `len` items.
//!
//! Embedding: item rows scaled by `√d` plus a learned position row (the
//! window is left-padded, so the latest item always sits at position
//! `len − 1`), dropout, padding positions zeroed. Each block, as the
//! authors' code: `q = LN(x)`; `x = q + MHA(q, x, x)` with a causal,
//! padding-key mask and dropout on the attention weights; `x = LN(x)`;
//! `x = x + dropout(W₂ dropout(relu(W₁ x)))`; padding positions zeroed
//! again. A final layer norm gives the hidden vector of each position; its
//! score for item `i` is the dot product with item `i`'s (shared) embedding.

use candle_core::{Device, Tensor};
use seqrec_data::batch::WindowBatch;
use seqrec_data::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{self, LayerNorm, Linear, Params};
use crate::seq::{attention_mask, check_window_width, output_loss, real_column, Objective, SeqBatch, WindowModel};
use crate::window_eval::WindowScorer;

/// SASRec's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SasRecShape {
    /// Number of ids, padding id 0 included.
    pub n_ids: usize,
    /// Window width (maximum sequence length).
    pub len: usize,
    /// Embedding / hidden width `d`.
    pub embedding: usize,
    /// Self-attention blocks.
    pub blocks: usize,
    /// Attention heads (dividing `d`).
    pub heads: usize,
    /// Inner width of the point-wise feed-forward layers (the paper: `d`).
    pub ffn_dim: usize,
    /// Drop probability of every dropout.
    pub dropout: f32,
}

impl SasRecShape {
    /// Checks the settings, naming the config key at fault.
    ///
    /// # Errors
    /// [`ModelError::Invalid`].
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.n_ids < 2 {
            return bad(format!("SASRec: {} ids, expected padding and at least one item", self.n_ids));
        }
        if self.len == 0 {
            return bad("key `len`: found 0, expected a window of at least 1 event".into());
        }
        for (key, v) in
            [("embedding", self.embedding), ("blocks", self.blocks), ("heads", self.heads), ("ffn_dim", self.ffn_dim)]
        {
            if v == 0 {
                return bad(format!("key `{key}`: found 0, expected a positive number"));
            }
        }
        if !self.embedding.is_multiple_of(self.heads) {
            return bad(format!("key `heads`: {} does not divide the embedding {}", self.heads, self.embedding));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("key `dropout`: found {}, expected a probability in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Block {
    ln_attn: LayerNorm,
    q: Linear,
    kv: Linear,
    out: Linear,
    ln_ffn: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

/// The SASRec model.
#[derive(Debug)]
pub struct SasRec {
    shape: SasRecShape,
    params: Params,
    items: Tensor,
    positions: Tensor,
    blocks: Vec<Block>,
    ln_final: LayerNorm,
    dev: Device,
}

impl SasRec {
    /// A freshly initialised model: embeddings Glorot-uniform, linear layers
    /// PyTorch's default, layer norms `γ = 1, β = 0`.
    ///
    /// # Errors
    /// Bad settings ([`SasRecShape::check`]) or a failing op.
    pub fn new(shape: &SasRecShape, seed: u64, dev: &Device) -> Result<Self> {
        shape.check()?;
        let mut rng = Rng::fork(seed, 0x05A5_12EC);
        let mut p = Params::new();
        let d = shape.embedding;
        let glorot = |rows: usize| (6.0 / (rows + d) as f64).sqrt();
        let items = p.uniform("item_embedding", &[shape.n_ids, d], glorot(shape.n_ids), &mut rng, dev)?;
        let positions = p.uniform("position_embedding", &[shape.len, d], glorot(shape.len), &mut rng, dev)?;
        let mut blocks = Vec::new();
        for l in 0..shape.blocks {
            let name = |s: &str| format!("block{l}.{s}");
            blocks.push(Block {
                ln_attn: LayerNorm::new(&mut p, &name("attn_norm"), d, dev)?,
                q: Linear::new(&mut p, &name("attn.q"), d, d, &mut rng, dev)?,
                kv: Linear::new(&mut p, &name("attn.kv"), d, 2 * d, &mut rng, dev)?,
                out: Linear::new(&mut p, &name("attn.out"), d, d, &mut rng, dev)?,
                ln_ffn: LayerNorm::new(&mut p, &name("ffn_norm"), d, dev)?,
                ff1: Linear::new(&mut p, &name("ffn1"), d, shape.ffn_dim, &mut rng, dev)?,
                ff2: Linear::new(&mut p, &name("ffn2"), shape.ffn_dim, d, &mut rng, dev)?,
            });
        }
        let ln_final = LayerNorm::new(&mut p, "final_norm", d, dev)?;
        Ok(SasRec { shape: shape.clone(), params: p, items, positions, blocks, ln_final, dev: dev.clone() })
    }

    /// The model's settings.
    pub fn shape(&self) -> &SasRecShape {
        &self.shape
    }

    /// `[rows · len, d]` hidden vectors of every position of `inputs`
    /// (`rows × len`, left-padded); dropout when `rng` is given.
    ///
    /// # Errors
    /// A failing op.
    pub fn hidden(&self, inputs: &[u32], mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let (l, d, heads) = (self.shape.len, self.shape.embedding, self.shape.heads);
        let b = inputs.len() / l;
        let dev = &self.dev;
        let p = self.shape.dropout;
        let real = real_column(inputs, dev)?;
        let ids = Tensor::from_slice(inputs, b * l, dev)?;
        let pos = nn::rows_of(&self.positions.flatten_all()?, b)?.reshape((b * l, d))?;
        let x = ((self.items.index_select(&ids, 0)? * (d as f64).sqrt())? + pos)?;
        let mut x = nn::dropout(&x, p, rng.as_deref_mut())?.broadcast_mul(&real)?;
        let mask = attention_mask(inputs, l, true, dev)?;
        let dh = d / heads;
        let split = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((b, l, heads, dh))?.transpose(1, 2)?.contiguous()?) };
        for blk in &self.blocks {
            let q_in = blk.ln_attn.forward(&x)?;
            let q = split(&blk.q.forward(&q_in)?)?;
            let kv = blk.kv.forward(&x)?;
            let k = split(&kv.narrow(1, 0, d)?)?;
            let v = split(&kv.narrow(1, d, d)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?.broadcast_add(&mask)?;
            let attn = nn::dropout(&nn::softmax_last(&scores)?, p, rng.as_deref_mut())?;
            let ctx = attn.matmul(&v)?.transpose(1, 2)?.reshape((b * l, d))?;
            let a = blk.out.forward(&ctx)?;
            let y = blk.ln_ffn.forward(&(q_in + a)?)?;
            let f = nn::dropout(&blk.ff1.forward(&y)?.relu()?, p, rng.as_deref_mut())?;
            let f = nn::dropout(&blk.ff2.forward(&f)?, p, rng.as_deref_mut())?;
            x = (y + f)?.broadcast_mul(&real)?;
        }
        self.ln_final.forward(&x)
    }

    /// `[rows, n_ids]` scores of every id after each window of `inputs`.
    ///
    /// # Errors
    /// A failing op.
    pub fn score_all(&self, inputs: &[u32]) -> Result<Tensor> {
        let l = self.shape.len;
        let b = inputs.len() / l;
        let last: Vec<u32> = (0..b as u32).map(|r| r * l as u32 + l as u32 - 1).collect();
        let h = self.hidden(inputs, None)?.index_select(&Tensor::from_vec(last, b, &self.dev)?, 0)?;
        Ok(h.matmul(&self.items.t()?)?)
    }
}

impl WindowScorer for SasRec {
    fn n_ids(&self) -> usize {
        self.shape.n_ids
    }

    fn window_len(&self) -> usize {
        self.shape.len
    }

    fn score_windows(&mut self, batch: &WindowBatch, scores: &mut Vec<f32>) -> Result<()> {
        check_window_width(batch, "SASRec", self.shape.len)?;
        *scores = self.score_all(&batch.history)?.flatten_all()?.to_vec1()?;
        Ok(())
    }
}

impl WindowModel for SasRec {
    fn loss(&mut self, batch: &SeqBatch, objective: Objective, rng: &mut Rng) -> Result<Tensor> {
        let (at, targets) = batch.checked_targets("SASRec", self.shape.n_ids, self.shape.len)?;
        let h = self.hidden(&batch.inputs, Some(rng))?;
        let h = h.index_select(&Tensor::from_vec(at, targets.len(), &self.dev)?, 0)?;
        output_loss(&h, &self.items, None, &targets, objective)
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

    fn shape() -> SasRecShape {
        SasRecShape { n_ids: 12, len: 5, embedding: 8, blocks: 2, heads: 2, ffn_dim: 16, dropout: 0.0 }
    }

    #[test]
    fn a_position_sees_neither_the_future_nor_the_padding() {
        let m = SasRec::new(&shape(), 1, &Device::Cpu).unwrap();
        let a = m.hidden(&[0, 0, 3, 4, 5], None).unwrap();
        // change the future of position 3 and the padding's ids cannot matter
        // (padding is id 0 by definition; here the later item changes).
        let b = m.hidden(&[0, 0, 3, 4, 9], None).unwrap();
        let rows = |t: &Tensor, r: usize| t.narrow(0, r, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(rows(&a, 3), rows(&b, 3));
        assert_eq!(rows(&a, 2), rows(&b, 2));
        assert_ne!(rows(&a, 4), rows(&b, 4));
        // a shorter history padded further left gives the same last vector as
        // long as the real items and their positions are the same.
        let c = m.hidden(&[0, 7, 3, 4, 5], None).unwrap();
        assert_ne!(rows(&a, 4), rows(&c, 4), "an earlier item must matter");
        let pad = m.hidden(&[0, 0, 3, 4, 5, 0, 0, 0, 0, 5], None).unwrap();
        let close = |x: Vec<f32>, y: Vec<f32>| x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close(rows(&pad, 4), rows(&a, 4)), "rows of a batch are independent");
    }

    #[test]
    fn padding_embedding_gets_no_gradient_and_loss_is_finite() {
        let mut m = SasRec::new(&SasRecShape { dropout: 0.2, ..shape() }, 2, &Device::Cpu).unwrap();
        let batch = SeqBatch {
            len: 5,
            inputs: vec![0, 0, 3, 4, 5, 1, 2, 3, 4, 5],
            targets: vec![0, 0, 4, 5, 6, 2, 3, 4, 5, 6],
        };
        let loss = m.loss(&batch, Objective::Full, &mut Rng::new(1)).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite());
        let grads = loss.backward().unwrap();
        let g = grads.get(&m.items).unwrap();
        let row0: Vec<f32> = g.narrow(0, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(row0.iter().all(|&x| x == 0.0), "{row0:?}");
        let row6: Vec<f32> = g.narrow(0, 6, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(row6.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let err = SasRec::new(&SasRecShape { heads: 3, ..shape() }, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("key `heads`"), "{err}");
        let err = SasRec::new(&SasRecShape { len: 0, ..shape() }, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("key `len`"), "{err}");
    }
}
