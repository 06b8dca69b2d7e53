//! The Behaviour Sequence Transformer for ratings (Chen et al. 2019,
//! arXiv 1905.06874), in the form used to compare it with matrix
//! factorisation on MovieLens.
//!
//! For a rating event with `h = len − 1` earlier events of the same user:
//!
//! - history position `j`: movie embedding + embedding of the rating given +
//!   learned position embedding `j` (padding positions: movie and rating
//!   embeddings are zero and get no gradient, as PyTorch's `padding_idx`);
//! - target position: the target movie's embedding alone (no rating, no
//!   position);
//! - `layers` post-norm transformer encoder layers (PyTorch's
//!   `TransformerEncoderLayer`: multi-head self-attention with padding keys
//!   masked, residual, layer norm; feed-forward `d → ffn_dim → d` with GELU,
//!   residual, layer norm; dropout on attention weights and both branches);
//! - the `len × d` output flattened and concatenated with the user
//!   features (user id embedding, one small embedding per categorical user
//!   feature, optionally the mean genre embedding of the target movie);
//! - an MLP of hidden layers (default 1024 → 512 → 256), each linear →
//!   batch norm → Mish, dropout after the second, then a linear layer to one
//!   score → `σ·(hi − lo) + lo`.

use candle_core::{Device, Tensor};
use seqrec_data::rng::Rng;

use crate::error::{ModelError, Result};
use crate::nn::{self, BatchNorm, LayerNorm, Linear, Params};
use crate::rating::{OutputRange, RatingBatch, RatingModel};

/// Sizes and settings of a BST.
#[derive(Debug, Clone, PartialEq)]
pub struct BstShape {
    /// User ids (largest id + 1).
    pub n_users: usize,
    /// Item ids (largest id + 1; 0 is padding).
    pub n_items: usize,
    /// Rating-value ids (distinct rating values + 1; 0 is padding).
    pub n_ratings: usize,
    /// Positions: `len − 1` history events plus the target.
    pub len: usize,
    /// Embedding size `d` (model width).
    pub embedding: usize,
    /// Attention heads (must divide `d`).
    pub heads: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Width of the feed-forward block.
    pub ffn_dim: usize,
    /// Dropout inside the encoder.
    pub dropout: f32,
    /// Hidden widths of the MLP.
    pub mlp: Vec<usize>,
    /// Dropout after the MLP's second hidden layer.
    pub mlp_dropout: f32,
    /// Ids of each categorical user feature (values + 1; 0 = missing).
    pub user_features: Vec<usize>,
    /// Genre ids of the target movie's genre bag (0: no genre feature).
    pub n_genres: usize,
    /// Output range.
    pub range: OutputRange,
}

impl BstShape {
    /// Checks the settings; the message names the config key.
    ///
    /// # Errors
    /// [`ModelError::Invalid`].
    pub fn check(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(ModelError::Invalid(format!("key `{key}`: {msg}")));
        if self.len < 2 {
            return bad("len", format!("found {}, expected at least 2 (history and target)", self.len));
        }
        if self.embedding == 0 || self.heads == 0 || !self.embedding.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!("{} heads must divide the embedding size {} (both > 0)", self.heads, self.embedding),
            );
        }
        if self.layers == 0 || self.ffn_dim == 0 {
            return bad("layers", "layers and ffn_dim must be at least 1".into());
        }
        for (key, p) in [("dropout", self.dropout), ("mlp_dropout", self.mlp_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return bad(key, format!("found {p}, expected a drop probability in [0, 1)"));
            }
        }
        if self.mlp.is_empty() || self.mlp.contains(&0) {
            return bad("mlp", format!("found {:?}, expected one or more widths > 0", self.mlp));
        }
        if self.range.lo.partial_cmp(&self.range.hi) != Some(std::cmp::Ordering::Less) {
            return bad("output_range", format!("[{}, {}] is empty", self.range.lo, self.range.hi));
        }
        Ok(())
    }

    /// Width of the embedding of a categorical feature with `ids` ids.
    pub fn feature_width(ids: usize) -> usize {
        (ids / 2).clamp(1, 32)
    }

    fn genre_width(&self) -> usize {
        if self.n_genres > 0 {
            Self::feature_width(self.n_genres).max(8)
        } else {
            0
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    qkv: Linear,
    out: Linear,
    ln1: LayerNorm,
    ff1: Linear,
    ff2: Linear,
    ln2: LayerNorm,
}

/// The BST model.
#[derive(Debug)]
pub struct Bst {
    shape: BstShape,
    params: Params,
    items: Tensor,
    ratings: Tensor,
    positions: Tensor,
    users: Tensor,
    features: Vec<Tensor>,
    genres: Option<Tensor>,
    encoder: Vec<EncoderLayer>,
    hidden: Vec<(Linear, BatchNorm)>,
    head: Linear,
}

impl Bst {
    /// A freshly initialised model (PyTorch's default initialisation).
    ///
    /// # Errors
    /// Bad settings ([`BstShape::check`]) or a failing op.
    pub fn new(shape: &BstShape, seed: u64, dev: &Device) -> Result<Self> {
        shape.check()?;
        let mut rng = Rng::fork(seed, 0x0042_5354);
        let mut p = Params::new();
        let d = shape.embedding;
        let items = p.normal("item_embedding", &[shape.n_items.max(1), d], 1.0, &mut rng, dev)?;
        let ratings = p.normal("rating_embedding", &[shape.n_ratings.max(1), d], 1.0, &mut rng, dev)?;
        let positions = p.normal("position_embedding", &[shape.len - 1, d], 1.0, &mut rng, dev)?;
        let users = p.normal("user_embedding", &[shape.n_users.max(1), d], 1.0, &mut rng, dev)?;
        let mut features = Vec::new();
        for (f, &ids) in shape.user_features.iter().enumerate() {
            let w = BstShape::feature_width(ids);
            features.push(p.normal(&format!("user_feature{f}"), &[ids.max(1), w], 1.0, &mut rng, dev)?);
        }
        let genres = if shape.n_genres > 0 {
            Some(p.normal("genre_embedding", &[shape.n_genres, shape.genre_width()], 1.0, &mut rng, dev)?)
        } else {
            None
        };
        let mut encoder = Vec::new();
        for l in 0..shape.layers {
            let name = |s: &str| format!("encoder{l}.{s}");
            let bound = (6.0 / (d + 3 * d) as f64).sqrt();
            let w = p.uniform(&name("attn.in_proj.weight"), &[3 * d, d], bound, &mut rng, dev)?;
            let b = p.constant(&name("attn.in_proj.bias"), &[3 * d], 0.0, dev)?;
            let ow = p.uniform(&name("attn.out_proj.weight"), &[d, d], 1.0 / (d as f64).sqrt(), &mut rng, dev)?;
            let ob = p.constant(&name("attn.out_proj.bias"), &[d], 0.0, dev)?;
            encoder.push(EncoderLayer {
                qkv: Linear::from_tensors(w, b),
                out: Linear::from_tensors(ow, ob),
                ln1: LayerNorm::new(&mut p, &name("norm1"), d, dev)?,
                ff1: Linear::new(&mut p, &name("linear1"), d, shape.ffn_dim, &mut rng, dev)?,
                ff2: Linear::new(&mut p, &name("linear2"), shape.ffn_dim, d, &mut rng, dev)?,
                ln2: LayerNorm::new(&mut p, &name("norm2"), d, dev)?,
            });
        }
        let user_width: usize = d + shape.user_features.iter().map(|&n| BstShape::feature_width(n)).sum::<usize>();
        let mut width = shape.len * d + user_width + shape.genre_width();
        let mut hidden = Vec::new();
        for (i, &w) in shape.mlp.iter().enumerate() {
            let lin = Linear::new(&mut p, &format!("mlp{i}"), width, w, &mut rng, dev)?;
            let bn = BatchNorm::new(&mut p, &format!("mlp{i}.bn"), w, dev)?;
            hidden.push((lin, bn));
            width = w;
        }
        let head = Linear::new(&mut p, "head", width, 1, &mut rng, dev)?;
        // padding_idx: the padding rows start at zero (and get no gradient, see `embed_history`).
        zero_row0(&items)?;
        zero_row0(&ratings)?;
        Ok(Bst {
            shape: shape.clone(),
            params: p,
            items,
            ratings,
            positions,
            users,
            features,
            genres,
            encoder,
            hidden,
            head,
        })
    }

    /// The model's settings.
    pub fn shape(&self) -> &BstShape {
        &self.shape
    }

    /// `[B, h, d]` history embeddings: (movie + rating) masked at padding, plus positions.
    fn embed_history(&self, batch: &RatingBatch, dev: &Device) -> Result<Tensor> {
        let (b, h, d) = (batch.rows(), batch.history_len, self.shape.embedding);
        let hist = Tensor::from_slice(&batch.history, b * h, dev)?;
        let rats = Tensor::from_slice(&batch.history_ratings, b * h, dev)?;
        let real: Vec<f32> = batch.history.iter().map(|&i| f32::from(u8::from(i != 0))).collect();
        let real = Tensor::from_vec(real, (b * h, 1), dev)?;
        let x = (self.items.index_select(&hist, 0)? + self.ratings.index_select(&rats, 0)?)?.broadcast_mul(&real)?;
        let pos = nn::rows_of(&self.positions.flatten_all()?, b)?;
        Ok((x.reshape((b, h * d))? + pos)?.reshape((b, h, d))?)
    }

    fn attention(&self, layer: &EncoderLayer, x: &Tensor, mask: &Tensor, rng: &mut Option<&mut Rng>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let heads = self.shape.heads;
        let dh = d / heads;
        let qkv = layer.qkv.forward(x)?;
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv.narrow(2, i * d, d)?.reshape((b, l, heads, dh))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?.broadcast_add(mask)?;
        let attn = nn::softmax_last(&scores)?;
        let attn = nn::dropout(&attn, self.shape.dropout, rng.as_deref_mut())?;
        let ctx = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        layer.out.forward(&ctx)
    }
}

fn zero_row0(t: &Tensor) -> Result<()> {
    let width = t.dim(1)?;
    let zeros = Tensor::zeros((1, width), t.dtype(), t.device())?;
    Ok(t.slice_set(&zeros, 0, 0)?)
}

impl RatingModel for Bst {
    fn predict(&mut self, batch: &RatingBatch, mut train: Option<&mut Rng>) -> Result<Tensor> {
        batch.check()?;
        let s = &self.shape;
        if batch.history_len != s.len - 1 {
            return Err(ModelError::Invalid(format!(
                "BST: batch history of {} events, the model reads {}",
                batch.history_len,
                s.len - 1
            )));
        }
        if batch.user_features.len() != s.user_features.len() {
            return Err(ModelError::Invalid(format!(
                "BST: batch has {} user features, the model {}",
                batch.user_features.len(),
                s.user_features.len()
            )));
        }
        let dev = self.items.device().clone();
        let (b, l, d) = (batch.rows(), s.len, s.embedding);
        let hist = self.embed_history(batch, &dev)?;
        let target = self.items.index_select(&Tensor::from_slice(&batch.targets, b, &dev)?, 0)?.unsqueeze(1)?;
        let mut x = Tensor::cat(&[&hist, &target], 1)?;
        // Additive key mask: −1e9 at padding keys (the target key is never padding).
        let mut mask = Vec::with_capacity(b * l);
        for row in batch.history.chunks(l - 1) {
            mask.extend(row.iter().map(|&i| if i == 0 { -1e9f32 } else { 0.0 }));
            mask.push(0.0);
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, l), &dev)?;
        for layer in &self.encoder {
            let a = self.attention(layer, &x, &mask, &mut train)?;
            let a = nn::dropout(&a, s.dropout, train.as_deref_mut())?;
            x = layer.ln1.forward(&(x + a)?)?;
            let f = layer.ff1.forward(&x)?.gelu_erf()?;
            let f = nn::dropout(&f, s.dropout, train.as_deref_mut())?;
            let f = nn::dropout(&layer.ff2.forward(&f)?, s.dropout, train.as_deref_mut())?;
            x = layer.ln2.forward(&(x + f)?)?;
        }
        let mut parts = vec![x.reshape((b, l * d))?];
        parts.push(self.users.index_select(&Tensor::from_slice(&batch.users, b, &dev)?, 0)?);
        for (table, ids) in self.features.iter().zip(&batch.user_features) {
            parts.push(table.index_select(&Tensor::from_slice(ids, b, &dev)?, 0)?);
        }
        if let Some(g) = &self.genres {
            let n = self.shape.n_genres;
            if batch.genres.len() != b * n {
                return Err(ModelError::Invalid(format!(
                    "BST: batch genre weights {} for {b} rows × {n} genres",
                    batch.genres.len()
                )));
            }
            parts.push(Tensor::from_slice(&batch.genres, (b, n), &dev)?.matmul(g)?);
        }
        let mut h = Tensor::cat(&parts, 1)?;
        let training = train.is_some();
        let mut stats = Vec::new();
        for (i, (lin, bn)) in self.hidden.iter().enumerate() {
            let (y, st) = bn.forward(&self.params, &lin.forward(&h)?, training)?;
            stats.push(st);
            h = nn::mish(&y)?;
            if i == 1 {
                h = nn::dropout(&h, s.mlp_dropout, train.as_deref_mut())?;
            }
        }
        for ((_, bn), st) in self.hidden.iter().zip(stats) {
            if let Some(st) = st {
                bn.commit(&mut self.params, st);
            }
        }
        let score = self.head.forward(&h)?.squeeze(1)?;
        s.range.apply(&score)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> BstShape {
        BstShape {
            n_users: 4,
            n_items: 6,
            n_ratings: 6,
            len: 4,
            embedding: 8,
            heads: 2,
            layers: 1,
            ffn_dim: 16,
            dropout: 0.1,
            mlp: vec![16, 8, 4],
            mlp_dropout: 0.2,
            user_features: vec![3, 5],
            n_genres: 4,
            range: OutputRange { lo: 0.5, hi: 5.5 },
        }
    }

    fn batch() -> RatingBatch {
        RatingBatch {
            users: vec![1, 2, 3],
            user_features: vec![vec![1, 2, 0], vec![4, 1, 2]],
            history_len: 3,
            history: vec![0, 0, 2, 1, 2, 3, 0, 4, 5],
            history_ratings: vec![0, 0, 5, 3, 4, 1, 0, 2, 2],
            targets: vec![3, 4, 1],
            genres: vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
            ratings: vec![4.0, 2.0, 5.0],
        }
    }

    #[test]
    fn predictions_lie_in_the_range_and_padding_does_not_leak() {
        let dev = Device::Cpu;
        let mut m = Bst::new(&shape(), 3, &dev).unwrap();
        let b = batch();
        let p: Vec<f32> = m.predict(&b, None).unwrap().to_vec1().unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|x| (0.5..=5.5).contains(x)), "{p:?}");
        // Whatever sits at a padded position must not change the prediction:
        // padding rows are zero and padded keys are masked; only the
        // position embedding (as in PyTorch) reaches the padded query rows.
        let mut b2 = b.clone();
        b2.history_ratings[0] = 4;
        b2.history_ratings[6] = 3;
        let p2: Vec<f32> = m.predict(&b2, None).unwrap().to_vec1().unwrap();
        assert_eq!(p, p2);
        // A real history event does change it.
        let mut b3 = b.clone();
        b3.history_ratings[2] = 1;
        let p3: Vec<f32> = m.predict(&b3, None).unwrap().to_vec1().unwrap();
        assert_ne!(p[0], p3[0]);
        assert_eq!(p[1..], p3[1..]);
    }

    #[test]
    fn padding_rows_get_no_gradient_and_training_mode_updates_batch_norm() {
        let dev = Device::Cpu;
        let mut m = Bst::new(&shape(), 3, &dev).unwrap();
        let before = m.params().get_buffer("mlp0.bn.running_mean").unwrap().to_vec1::<f32>().unwrap();
        let b = batch();
        let mut rng = Rng::new(1);
        let pred = m.predict(&b, Some(&mut rng)).unwrap();
        let target = Tensor::new(b.ratings.as_slice(), &dev).unwrap();
        let loss = (pred - target).unwrap().sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(m.params().vars()["item_embedding"].as_tensor()).unwrap();
        let rows: Vec<Vec<f32>> = g.to_vec2().unwrap();
        assert!(rows[0].iter().all(|&x| x == 0.0), "padding row has a gradient");
        assert!(rows[2].iter().any(|&x| x != 0.0), "a history item has none");
        let gr: Vec<Vec<f32>> =
            grads.get(m.params().vars()["rating_embedding"].as_tensor()).unwrap().to_vec2().unwrap();
        assert!(gr[0].iter().all(|&x| x == 0.0));
        let after = m.params().get_buffer("mlp0.bn.running_mean").unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(before, after);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Evaluation mode (no dropout, running statistics) is a smooth function
        // of the parameters; compare autograd with central differences in f64.
        let dev = Device::Cpu;
        let mut s = shape();
        s.dropout = 0.0;
        s.mlp_dropout = 0.0;
        let mut m = Bst::new(&s, 5, &dev).unwrap();
        let b = batch();
        let target = Tensor::new(b.ratings.as_slice(), &dev).unwrap();
        let loss_of = |m: &mut Bst| -> f64 {
            let p = m.predict(&b, None).unwrap();
            f64::from((p - &target).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap())
        };
        let p = m.predict(&b, None).unwrap();
        let grads = (p - &target).unwrap().sqr().unwrap().mean_all().unwrap().backward().unwrap();
        let names = ["encoder0.attn.in_proj.weight", "encoder0.linear1.weight", "mlp1.weight", "user_feature1"];
        for name in names {
            let var = m.params().vars()[name].clone();
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for idx in [0, base.len() / 3, base.len() - 1] {
                let eps = 1e-2f32;
                let mut at = |delta: f32| {
                    let mut v = base.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap()).unwrap();
                    loss_of(&mut m)
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap()).unwrap();
                let a = f64::from(g[idx]);
                assert!((a - fd).abs() < 2e-3 + 0.05 * fd.abs(), "{name}[{idx}]: autograd {a}, finite difference {fd}");
            }
        }
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut s = shape();
        s.heads = 3;
        assert!(s.check().unwrap_err().to_string().contains("`heads`"));
        let mut s = shape();
        s.len = 1;
        assert!(s.check().unwrap_err().to_string().contains("`len`"));
    }
}
