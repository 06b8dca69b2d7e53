//! Knowledge tracing: NCF (He et al. 2017) and RRNCF, predicting whether a
//! learner answers the current question correctly.
//!
//! Both models share the NCF head. A learner vector `u` and the question's
//! embeddings meet in
//! - GMF: `u_g ⊙ q_g`,
//! - MLP: `[u_m ‖ q_m]` → ReLU tower,
//! - NeuMF: `[GMF ‖ MLP]` → one logistic unit (GMF or MLP alone: the one
//!   part → one logistic unit), plus a per-question bias (a question's
//!   difficulty; NCF's implicit-feedback form has none, here it is the
//!   strongest single signal).
//!
//! **NCF** takes `u_g`, `u_m` from learner-id embeddings. **RRNCF** replaces
//! them with projections of an LSTM state that read the learner's history
//! up to (not including) the current question's bundle: every past event
//! enters as `[q ⊙ c, q ⊙ w, t ⊙ c, t ⊙ w, t ⊙ l, c, w, l, gap, explained]`
//! where `q` is the question's input embedding, `t` the mean embedding of
//! its tags (a lecture's own tag), `c`/`w`/`l` flag a correct answer, a
//! wrong answer, a lecture (a lecture has question id 0 and no answer),
//! `gap` the normalised time gap and `explained` whether the previous
//! bundle's explanation was seen. Optionally a learner-id embedding is added
//! to the projections.
//!
//! **Bundles.** Questions of one task container are answered together and
//! their answers become visible after the whole bundle, so a question is
//! predicted from the state before its bundle's first event. The LSTM's
//! states of a chunk are laid out as `[open, before 0, after 0, …, after
//! len−1]` per row; [`KtBatch::visible`] picks each position's state
//! (`open` = the state before a bundle that began in an earlier chunk,
//! carried over like the recurrent state).
//!
//! **Truncated BPTT.** Histories arrive in consecutive chunks of a lane; the
//! state `(h, c, open)` is carried from one chunk to the next (detached) and
//! zeroed where a lane starts a new learner, so no event is dropped.
//!
//! The LSTM is PyTorch's: `i, f, o = σ(·)`, `g = tanh(·)`,
//! `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')` (gate blocks in the order
//! `i, f, o, g`), run by the fused op of `seqrec_kernels::lstm`. Initialisation follows
//! PyTorch (`U(±1/√fan)` for the LSTM and linear layers) and NCF's `N(0,
//! 0.01)` for the embeddings.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use seqrec_data::batch::ChunkStep;
use seqrec_data::rng::Rng;
use seqrec_data::table::KIND_LECTURE;
use seqrec_data::SequenceStore;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{self, Linear, Params};

/// Scalar event features per position in the LSTM input.
pub const N_EVENT_FEATURES: usize = 5;

/// Which parts of NCF produce the logit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtHead {
    /// GMF and MLP, concatenated into the logistic unit.
    NeuMf,
    /// GMF only.
    Gmf,
    /// MLP only.
    Mlp,
}

impl KtHead {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "neumf" => Some(KtHead::NeuMf),
            "gmf" => Some(KtHead::Gmf),
            "mlp" => Some(KtHead::Mlp),
            _ => None,
        }
    }

    fn gmf(self) -> bool {
        self != KtHead::Mlp
    }

    fn mlp(self) -> bool {
        self != KtHead::Gmf
    }
}

/// The settings of a knowledge-tracing model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KtShape {
    /// Question ids, padding 0 included.
    pub n_questions: usize,
    /// Tag ids (questions' and lectures' tags in one vocabulary), padding 0 included.
    pub n_tags: usize,
    /// Tags per event in [`KtBatch::tags`].
    pub max_tags: usize,
    /// Learner ids, padding 0 included.
    pub n_learners: usize,
    /// Width of the GMF and MLP embeddings (learner and question).
    pub embedding: usize,
    /// Which NCF parts produce the logit.
    pub head: KtHead,
    /// Widths of the MLP tower's hidden layers (its output is the last).
    pub mlp: Vec<usize>,
    /// RRNCF: the learner vector comes from an LSTM over the history.
    pub history: bool,
    /// LSTM width.
    pub hidden: usize,
    /// Width of the question embedding in the LSTM input.
    pub input_embedding: usize,
    /// Width of the tag embedding in the LSTM input.
    pub tag_embedding: usize,
    /// RRNCF: add a learner-id embedding to the history's projections.
    pub learner_embedding: bool,
    /// Drop probability on the learner vectors and the MLP's hidden layers.
    pub dropout: f32,
}

impl KtShape {
    /// Checks the settings, naming the config key at fault.
    ///
    /// # Errors
    /// [`ModelError::Invalid`].
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.n_questions < 2 {
            return bad(format!(
                "knowledge tracing: {} question ids, expected padding and at least one",
                self.n_questions
            ));
        }
        let widths = [("embedding", self.embedding)];
        for (key, w) in widths {
            if w == 0 {
                return bad(format!("key `{key}`: found 0, expected a positive width"));
            }
        }
        if self.head.mlp() && (self.mlp.is_empty() || self.mlp.contains(&0)) {
            return bad(format!("key `mlp`: found {:?}, expected one or more positive widths", self.mlp));
        }
        if self.history {
            for (key, w) in [
                ("hidden", self.hidden),
                ("input_embedding", self.input_embedding),
                ("tag_embedding", self.tag_embedding),
            ] {
                if w == 0 {
                    return bad(format!("key `{key}`: found 0, expected a positive width"));
                }
            }
            if self.n_tags == 0 || self.max_tags == 0 {
                return bad("knowledge tracing: the history encoder needs a tag vocabulary (padding included)".into());
            }
        }
        if (!self.history || self.learner_embedding) && self.n_learners < 2 {
            return bad(format!(
                "knowledge tracing: {} learner ids, expected padding and at least one",
                self.n_learners
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("key `dropout`: found {}, expected a probability in [0, 1)", self.dropout));
        }
        Ok(())
    }

    fn input_width(&self) -> usize {
        2 * self.input_embedding + 3 * self.tag_embedding + N_EVENT_FEATURES
    }
}

/// One chunk of learner histories, `rows × len` positions, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KtBatch {
    /// Rows (lanes).
    pub rows: usize,
    /// Positions per row.
    pub len: usize,
    /// Question id per position; 0 on lectures and padding.
    pub question: Vec<u32>,
    /// `rows × len × max_tags` tag ids (0 = none): a question's tags, a lecture's tag.
    pub tags: Vec<u32>,
    /// Learner id per row.
    pub learner: Vec<u32>,
    /// `rows × len × N_EVENT_FEATURES`: correct, wrong, lecture, gap, explained.
    pub features: Vec<f32>,
    /// Per position, the state it is predicted from: 0 the carried `open`
    /// state, `1 + r` the state before the row's position `r`.
    pub visible: Vec<u32>,
    /// 1 where the position's answer is a target (loss and metrics), else 0.
    pub target: Vec<f32>,
    /// Answered correctly (1/0) per position; anything where not a target.
    pub label: Vec<f32>,
    /// Per row: the lane starts a new learner (state zeroed).
    pub reset: Vec<bool>,
    /// Per row: the previous chunk's row whose state it continues.
    pub keep: Vec<usize>,
}

impl KtBatch {
    /// Checks every column's length and range against `shape`.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] naming the column.
    pub fn check(&self, shape: &KtShape) -> Result<()> {
        let n = self.rows * self.len;
        let lens = [
            ("question", self.question.len(), n),
            ("tags", self.tags.len(), n * shape.max_tags),
            ("learner", self.learner.len(), self.rows),
            ("features", self.features.len(), n * N_EVENT_FEATURES),
            ("visible", self.visible.len(), n),
            ("target", self.target.len(), n),
            ("label", self.label.len(), n),
            ("reset", self.reset.len(), self.rows),
            ("keep", self.keep.len(), self.rows),
        ];
        for (name, got, want) in lens {
            if got != want {
                return Err(ModelError::Invalid(format!(
                    "knowledge-tracing batch: `{name}` has {got} values, expected {want}"
                )));
            }
        }
        let over = |v: &[u32], n: usize| v.iter().copied().find(|&x| x as usize >= n);
        if let Some(q) = over(&self.question, shape.n_questions) {
            return Err(ModelError::Invalid(format!("question id {q} beyond the model's {} ids", shape.n_questions)));
        }
        if shape.history {
            if let Some(t) = over(&self.tags, shape.n_tags) {
                return Err(ModelError::Invalid(format!("tag id {t} beyond the model's {} ids", shape.n_tags)));
            }
        }
        if !shape.history || shape.learner_embedding {
            if let Some(l) = over(&self.learner, shape.n_learners) {
                return Err(ModelError::Invalid(format!("learner id {l} beyond the model's {} ids", shape.n_learners)));
            }
        }
        if let Some(v) = over(&self.visible, self.len + 1) {
            return Err(ModelError::Invalid(format!("visible state {v} beyond a chunk of {}", self.len)));
        }
        Ok(())
    }
}

/// The recurrent state carried between chunks.
#[derive(Debug, Clone, Default)]
pub struct KtState {
    h: Option<Tensor>,
    c: Option<Tensor>,
    open: Option<Tensor>,
}

impl KtState {
    /// A fresh state (every lane starts from zero).
    pub fn new() -> Self {
        KtState::default()
    }
}

#[derive(Debug)]
struct Lstm {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

#[derive(Debug)]
struct History {
    questions: Tensor,
    tags: Tensor,
    lstm: Lstm,
    to_gmf: Option<Linear>,
    to_mlp: Option<Linear>,
}

/// NCF or RRNCF.
#[derive(Debug)]
pub struct KtModel {
    shape: KtShape,
    params: Params,
    history: Option<History>,
    learner_gmf: Option<Tensor>,
    learner_mlp: Option<Tensor>,
    question_gmf: Option<Tensor>,
    question_mlp: Option<Tensor>,
    question_bias: Tensor,
    tower: Vec<Linear>,
    out: Linear,
    dev: Device,
}

impl KtModel {
    /// A freshly initialised model.
    ///
    /// # Errors
    /// Bad settings ([`KtShape::check`]) or a failing op.
    pub fn new(shape: &KtShape, seed: u64, dev: &Device) -> Result<Self> {
        shape.check()?;
        let mut rng = Rng::fork(seed, 0x00C7_0A11);
        let mut p = Params::new();
        let e = shape.embedding;
        let std = 0.01;
        let learners_needed = !shape.history || shape.learner_embedding;
        let (gmf, mlp) = (shape.head.gmf(), shape.head.mlp());
        let learner_gmf = if learners_needed && gmf {
            Some(p.normal("learner_gmf", &[shape.n_learners, e], std, &mut rng, dev)?)
        } else {
            None
        };
        let learner_mlp = if learners_needed && mlp {
            Some(p.normal("learner_mlp", &[shape.n_learners, e], std, &mut rng, dev)?)
        } else {
            None
        };
        let question_gmf =
            if gmf { Some(p.normal("question_gmf", &[shape.n_questions, e], std, &mut rng, dev)?) } else { None };
        let question_mlp =
            if mlp { Some(p.normal("question_mlp", &[shape.n_questions, e], std, &mut rng, dev)?) } else { None };
        let question_bias = p.constant("question_bias", &[shape.n_questions, 1], 0.0, dev)?;
        let history = if shape.history {
            let h = shape.hidden;
            let bound = 1.0 / (h as f64).sqrt();
            let fan_in = shape.input_width();
            Some(History {
                questions: p.normal(
                    "history.question",
                    &[shape.n_questions, shape.input_embedding],
                    0.1,
                    &mut rng,
                    dev,
                )?,
                tags: p.normal("history.tag", &[shape.n_tags, shape.tag_embedding], 0.1, &mut rng, dev)?,
                lstm: Lstm {
                    w_ih: p.uniform("lstm.weight_ih", &[4 * h, fan_in], bound, &mut rng, dev)?,
                    w_hh: p.uniform("lstm.weight_hh", &[4 * h, h], bound, &mut rng, dev)?,
                    b_ih: p.uniform("lstm.bias_ih", &[4 * h], bound, &mut rng, dev)?,
                    b_hh: p.uniform("lstm.bias_hh", &[4 * h], bound, &mut rng, dev)?,
                },
                to_gmf: if gmf { Some(Linear::new(&mut p, "history.to_gmf", h, e, &mut rng, dev)?) } else { None },
                to_mlp: if mlp { Some(Linear::new(&mut p, "history.to_mlp", h, e, &mut rng, dev)?) } else { None },
            })
        } else {
            None
        };
        let mut tower = Vec::new();
        let mut fan_in = 2 * e;
        if mlp {
            for (l, &w) in shape.mlp.iter().enumerate() {
                tower.push(Linear::new(&mut p, &format!("mlp{l}"), fan_in, w, &mut rng, dev)?);
                fan_in = w;
            }
        }
        let out_in = if gmf { e } else { 0 } + if mlp { fan_in } else { 0 };
        let out = Linear::new(&mut p, "out", out_in, 1, &mut rng, dev)?;
        Ok(KtModel {
            shape: shape.clone(),
            params: p,
            history,
            learner_gmf,
            learner_mlp,
            question_gmf,
            question_mlp,
            question_bias,
            tower,
            out,
            dev: dev.clone(),
        })
    }

    /// The settings.
    pub fn shape(&self) -> &KtShape {
        &self.shape
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The parameters, mutable (to load a checkpoint).
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// NeuMF's pre-training (He et al. 2017, §3.4.1): the GMF part (learner
    /// and question embeddings) from trained GMF weights, the MLP part
    /// (embeddings and tower) from trained MLP weights, and the output
    /// layer `[α·w_gmf ‖ (1 − α)·w_mlp]` with bias `α·b_gmf + (1 − α)·b_mlp`
    /// (the per-question bias likewise), so the NeuMF logit starts as
    /// `α·logit_gmf + (1 − α)·logit_mlp`. NCF (learner-id embeddings) with
    /// the NeuMF head only: RRNCF's two heads would come with two LSTMs.
    ///
    /// # Errors
    /// Another model or head, `α` outside `[0, 1]`, a missing tensor or one
    /// of another shape (named).
    pub fn load_neumf_pretrained(
        &mut self,
        gmf: &BTreeMap<String, Tensor>,
        mlp: &BTreeMap<String, Tensor>,
        alpha: f64,
    ) -> Result<()> {
        if self.shape.head != KtHead::NeuMf || self.shape.history {
            return Err(ModelError::Invalid(
                "NeuMF pre-training: the model must be NCF (learner-id embeddings) with the NeuMF head".into(),
            ));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(ModelError::Invalid(format!("NeuMF pre-training: alpha {alpha} is outside [0, 1]")));
        }
        let get = |from: &BTreeMap<String, Tensor>, what: &str, name: &str| -> Result<Tensor> {
            from.get(name).cloned().ok_or_else(|| {
                ModelError::Invalid(format!("NeuMF pre-training: the {what} weights lack tensor `{name}`"))
            })
        };
        let mut kept = BTreeMap::new();
        for name in ["learner_gmf", "question_gmf"] {
            kept.insert(name.to_owned(), get(gmf, "GMF", name)?);
        }
        for name in ["learner_mlp", "question_mlp"] {
            kept.insert(name.to_owned(), get(mlp, "MLP", name)?);
        }
        for l in 0..self.tower.len() {
            for part in ["weight", "bias"] {
                let name = format!("mlp{l}.{part}");
                kept.insert(name.clone(), get(mlp, "MLP", &name)?);
            }
        }
        let (a, b) = (alpha, 1.0 - alpha);
        let out_w = Tensor::cat(&[&(get(gmf, "GMF", "out.weight")? * a)?, &(get(mlp, "MLP", "out.weight")? * b)?], 1)?;
        kept.insert("out.weight".into(), out_w);
        for name in ["out.bias", "question_bias"] {
            let mixed = ((get(gmf, "GMF", name)? * a)? + (get(mlp, "MLP", name)? * b)?)?;
            kept.insert(name.into(), mixed);
        }
        self.params.load(&kept)
    }

    fn ids(&self, v: &[u32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(v, v.len(), &self.dev)?)
    }

    /// The carried `[rows, hidden]` state: last chunk's rows by `keep`,
    /// zeroed where a lane resets.
    fn carried(&self, prev: Option<&Tensor>, b: &KtBatch) -> Result<Tensor> {
        let h = self.shape.hidden;
        let Some(prev) = prev else {
            return Ok(Tensor::zeros((b.rows, h), DType::F32, &self.dev)?);
        };
        let keep: Vec<u32> = b.keep.iter().map(|&k| k as u32).collect();
        let rows = prev.index_select(&self.ids(&keep)?, 0)?;
        if b.reset.iter().any(|&r| r) {
            let mask: Vec<f32> = b.reset.iter().map(|&r| if r { 0.0 } else { 1.0 }).collect();
            Ok(rows.broadcast_mul(&Tensor::from_vec(mask, (b.rows, 1), &self.dev)?)?)
        } else {
            Ok(rows)
        }
    }

    /// The LSTM state each position is predicted from (`[rows·len, hidden]`),
    /// updating `state` to the chunk's end.
    fn history_states(&self, hist: &History, b: &KtBatch, state: &mut KtState) -> Result<Tensor> {
        let (rows, len, hd) = (b.rows, b.len, self.shape.hidden);
        let n = rows * len;
        let dev = &self.dev;
        let h0 = self.carried(state.h.as_ref(), b)?;
        let c0 = self.carried(state.c.as_ref(), b)?;
        let open = self.carried(state.open.as_ref(), b)?;

        let feats = Tensor::from_slice(&b.features, (n, N_EVENT_FEATURES), dev)?;
        let correct = feats.narrow(1, 0, 1)?;
        let wrong = feats.narrow(1, 1, 1)?;
        let lecture = feats.narrow(1, 2, 1)?;
        let q = hist.questions.index_select(&self.ids(&b.question)?, 0)?;
        let t = self.shape.max_tags;
        let tag_mask: Vec<f32> = b.tags.iter().map(|&g| f32::from(u8::from(g != 0))).collect();
        let counts: Vec<f32> = tag_mask.chunks(t).map(|m| 1.0 / m.iter().sum::<f32>().max(1.0)).collect::<Vec<f32>>();
        let tag_rows = hist.tags.index_select(&self.ids(&b.tags)?, 0)?.broadcast_mul(&Tensor::from_vec(
            tag_mask,
            (n * t, 1),
            dev,
        )?)?;
        let tags = tag_rows.reshape((n, t, self.shape.tag_embedding))?.sum(1)?.broadcast_mul(&Tensor::from_vec(
            counts,
            (n, 1),
            dev,
        )?)?;
        let x = Tensor::cat(
            &[
                &q.broadcast_mul(&correct)?,
                &q.broadcast_mul(&wrong)?,
                &tags.broadcast_mul(&correct)?,
                &tags.broadcast_mul(&wrong)?,
                &tags.broadcast_mul(&lecture)?,
                &feats,
            ],
            1,
        )?;
        let lstm = &hist.lstm;
        let bias = (&lstm.b_ih + &lstm.b_hh)?.reshape((1, 4 * hd))?;
        // Input pre-activations of every position at once, time-major.
        let xw = x.matmul(&lstm.w_ih.t()?)?.broadcast_add(&bias)?;
        let xw = xw.reshape((rows, len, 4 * hd))?.transpose(0, 1)?.contiguous()?;
        let out = seqrec_kernels::lstm::lstm_seq(&xw, &lstm.w_hh, &Tensor::cat(&[&h0, &c0], 1)?)?;
        let hs = out.narrow(2, 0, hd)?.transpose(0, 1)?;
        let c = out.get(len - 1)?.narrow(1, hd, hd)?.contiguous()?;
        let h = out.get(len - 1)?.narrow(1, 0, hd)?.contiguous()?;
        let all = Tensor::cat(&[&open.unsqueeze(1)?, &h0.unsqueeze(1)?, &hs], 1)?.reshape((rows * (len + 2), hd))?;
        let pick = |v: &dyn Fn(usize, usize) -> u32| -> Vec<u32> {
            (0..rows).flat_map(|r| (0..len).map(move |p| (r, p))).map(|(r, p)| v(r, p)).collect()
        };
        let index = pick(&|r, p| (r * (len + 2)) as u32 + b.visible[r * len + p]);
        let visible = all.index_select(&self.ids(&index)?, 0)?;
        let last: Vec<u32> = (0..rows).map(|r| (r * (len + 2)) as u32 + b.visible[r * len + len - 1]).collect();
        state.open = Some(all.index_select(&self.ids(&last)?, 0)?.detach());
        state.h = Some(h.detach());
        state.c = Some(c.detach());
        Ok(visible)
    }

    /// The logit of a correct answer at every position (`[rows·len]`);
    /// `state` moves to the chunk's end. Dropout when `rng` is given.
    ///
    /// # Errors
    /// A malformed batch or a failing op.
    pub fn forward(&self, b: &KtBatch, state: &mut KtState, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        b.check(&self.shape)?;
        let (rows, len) = (b.rows, b.len);
        let n = rows * len;
        let p = self.shape.dropout;
        let per_position: Vec<u32> = b.learner.iter().flat_map(|&l| std::iter::repeat_n(l, len)).collect();
        let learner_ids = self.ids(&per_position)?;
        let question_ids = self.ids(&b.question)?;
        let hist = match &self.history {
            Some(hist) => Some(self.history_states(hist, b, state)?),
            None => None,
        };
        let hist = match hist {
            Some(h) => Some(nn::dropout(&h, p, rng.as_deref_mut())?),
            None => None,
        };
        let learner_vec = |table: &Option<Tensor>, proj: Option<&Linear>| -> Result<Tensor> {
            let from_history = match (&hist, proj) {
                (Some(h), Some(l)) => Some(l.forward(h)?),
                _ => None,
            };
            let from_id = match table {
                Some(t) => Some(t.index_select(&learner_ids, 0)?),
                None => None,
            };
            match (from_history, from_id) {
                (Some(a), Some(b)) => Ok((a + b)?),
                (Some(a), None) | (None, Some(a)) => Ok(a),
                (None, None) => Err(ModelError::Invalid("knowledge tracing: no learner vector".into())),
            }
        };
        let mut parts = Vec::new();
        if let Some(qg) = &self.question_gmf {
            let u = learner_vec(&self.learner_gmf, self.history.as_ref().and_then(|h| h.to_gmf.as_ref()))?;
            parts.push((u * qg.index_select(&question_ids, 0)?)?);
        }
        if let Some(qm) = &self.question_mlp {
            let u = learner_vec(&self.learner_mlp, self.history.as_ref().and_then(|h| h.to_mlp.as_ref()))?;
            let mut x = Tensor::cat(&[&u, &qm.index_select(&question_ids, 0)?], 1)?;
            for layer in &self.tower {
                x = nn::dropout(&layer.forward(&x)?.relu()?, p, rng.as_deref_mut())?;
            }
            parts.push(x);
        }
        let joined = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? };
        let logit = (self.out.forward(&joined)? + self.question_bias.index_select(&question_ids, 0)?)?;
        Ok(logit.reshape(n)?)
    }

    /// Mean binary cross-entropy of the logits over the batch's targets
    /// (`softplus(z) − y·z`), and the number of targets.
    ///
    /// # Errors
    /// A failing op.
    pub fn loss(&self, logits: &Tensor, b: &KtBatch) -> Result<(Tensor, usize)> {
        let n = b.rows * b.len;
        let targets = b.target.iter().filter(|&&t| t > 0.0).count();
        let target = Tensor::from_slice(&b.target, n, &self.dev)?;
        let label = Tensor::from_slice(&b.label, n, &self.dev)?;
        let per = (nn::softplus(logits)? - (logits * label)?)?;
        let loss = ((per * target)?.sum_all()? / targets.max(1) as f64)?;
        Ok((loss, targets))
    }
}

/// `σ(z)` of every logit, as `f32`.
///
/// # Errors
/// A failing op.
pub fn probabilities(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(nn::sigmoid(logits)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Tags of every question and lecture id, `max_tags` per id (0 = none), in
/// one tag vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KtTags {
    /// Tags per id.
    pub max_tags: usize,
    /// Tag ids, padding 0 included.
    pub n_tags: usize,
    /// `n_question_ids × max_tags`.
    pub question: Vec<u32>,
    /// `n_lecture_ids × max_tags`.
    pub lecture: Vec<u32>,
}

impl KtTags {
    /// Builds the table from per-id tag lists (index = id; id 0 is padding).
    /// Tags beyond `max_tags` are an error naming the id.
    ///
    /// # Errors
    /// [`ModelError::Invalid`].
    pub fn new(question: &[Vec<u32>], lecture: &[Vec<u32>], n_tags: usize) -> Result<Self> {
        let max_tags = question.iter().chain(lecture).map(Vec::len).max().unwrap_or(0).max(1);
        let flat = |lists: &[Vec<u32>], what: &str| -> Result<Vec<u32>> {
            let mut out = vec![0u32; lists.len() * max_tags];
            for (id, l) in lists.iter().enumerate() {
                if let Some(&t) = l.iter().find(|&&t| t as usize >= n_tags) {
                    return Err(ModelError::Invalid(format!("{what} {id}: tag id {t} beyond {n_tags} tag ids")));
                }
                out[id * max_tags..id * max_tags + l.len()].copy_from_slice(l);
            }
            Ok(out)
        };
        Ok(KtTags { max_tags, n_tags, question: flat(question, "question")?, lecture: flat(lecture, "lecture")? })
    }
}

/// Event `e` of `store` is a lecture.
pub fn is_lecture(store: &SequenceStore, e: usize) -> bool {
    store.kinds.as_deref().is_some_and(|k| k[e] == KIND_LECTURE)
}

/// Event `e` of `store` is an answered question (label 0 or 1): a target.
pub fn is_answer(store: &SequenceStore, e: usize) -> bool {
    let label = store.labels.as_deref().map_or(-1, |l| l[e]);
    !is_lecture(store, e) && (label == 0 || label == 1)
}

/// What [`KtSource::fill`] reads per event, borrowed from a
/// [`SequenceStore`], plus each event's offset from its bundle's first event.
#[derive(Debug)]
pub struct KtSource<'a> {
    store: &'a SequenceStore,
    labels: &'a [i8],
    tags: &'a KtTags,
    /// Events since the first event of the event's bundle (0 at a bundle's start).
    back: Vec<u32>,
}

impl<'a> KtSource<'a> {
    /// Reads `store`'s labels, kinds, bundles (`groups`), gaps and
    /// explanation flags. A bundle is a run of consecutive questions of one
    /// learner with the same group; a lecture is an event of its own; without
    /// groups every event is its own bundle.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when the store has no labels, or an id lies
    /// beyond the tag table.
    pub fn new(store: &'a SequenceStore, tags: &'a KtTags) -> Result<Self> {
        let labels = store.labels.as_deref().ok_or_else(|| {
            ModelError::Invalid("knowledge tracing needs answered-correctly labels (map a `label` column)".into())
        })?;
        let t = tags.max_tags.max(1);
        let (nq, nl) = (tags.question.len() / t, tags.lecture.len() / t);
        for (e, &item) in store.items.iter().enumerate() {
            let lecture = is_lecture(store, e);
            let n = if lecture { nl } else { nq };
            if item as usize >= n {
                let what = if lecture { "lecture" } else { "question" };
                return Err(ModelError::Invalid(format!(
                    "event {e}: {what} id {item} beyond the {n} ids of the tag table"
                )));
            }
        }
        let mut back = vec![0u32; store.n_events()];
        let is_question = |e: usize| !is_lecture(store, e);
        if let Some(groups) = store.groups.as_deref() {
            for s in 0..store.n_seq() {
                let r = store.range(s);
                for e in r.start + 1..r.end {
                    if is_question(e) && is_question(e - 1) && groups[e] == groups[e - 1] {
                        back[e] = back[e - 1] + 1;
                    }
                }
            }
        }
        Ok(KtSource { store, labels, tags, back })
    }

    /// Events since the first event of each event's bundle.
    pub fn bundle_offsets(&self) -> &[u32] {
        &self.back
    }

    /// Fills `out` from one chunk step; a position is a target where it is a
    /// question with a 0/1 label and `select(event)` holds.
    pub fn fill(&self, step: &ChunkStep, select: &dyn Fn(usize) -> bool, out: &mut KtBatch) {
        let (rows, len, t) = (step.rows(), step.len, self.tags.max_tags);
        let store = self.store;
        out.rows = rows;
        out.len = len;
        out.question.clear();
        out.tags.clear();
        out.features.clear();
        out.visible.clear();
        out.target.clear();
        out.label.clear();
        out.learner.clear();
        out.learner.extend(step.seq_index.iter().map(|&s| store.seq_ids[s]));
        out.reset.clone_from(&step.reset);
        out.keep.clone_from(&step.keep);
        for r in 0..rows {
            let (start, valid) = (step.start[r], step.valid[r]);
            for p in 0..len {
                if p >= valid {
                    out.question.push(0);
                    out.tags.extend(std::iter::repeat_n(0, t));
                    out.features.extend([0.0; N_EVENT_FEATURES]);
                    out.visible.push(1);
                    out.target.push(0.0);
                    out.label.push(0.0);
                    continue;
                }
                let e = start + p;
                let item = store.items[e] as usize;
                let lecture = is_lecture(store, e);
                let label = self.labels[e];
                out.question.push(if lecture { 0 } else { item as u32 });
                let table = if lecture { &self.tags.lecture } else { &self.tags.question };
                out.tags.extend_from_slice(&table[item * t..(item + 1) * t]);
                let answered = is_answer(store, e);
                let gap = store.gaps.as_deref().map_or(0.0, |g| g[e]);
                let explained = store.explained.as_deref().map_or(0.0, |x| f32::from(u8::from(x[e] == 1)));
                out.features.extend([
                    f32::from(u8::from(answered && label == 1)),
                    f32::from(u8::from(answered && label == 0)),
                    f32::from(u8::from(lecture)),
                    if gap.is_finite() { gap } else { 0.0 },
                    explained,
                ]);
                let rel = p as i64 - i64::from(self.back[e]);
                out.visible.push(if rel >= 0 { 1 + rel as u32 } else { 0 });
                out.target.push(f32::from(u8::from(answered && select(e))));
                out.label.push(f32::from(u8::from(label == 1)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use seqrec_data::batch::{Chunks, ChunksConfig, Targets};
    use seqrec_data::store::Events;

    use super::*;

    /// `(learner, question or lecture id, kind, group, label)` per event, in time order.
    type Ev = (u32, u32, u8, i64, i8);

    fn store_of(events: &[Ev], bundles: bool) -> SequenceStore {
        let mut s = SequenceStore::from_events(Events {
            seq: events.iter().map(|e| e.0).collect(),
            items: events.iter().map(|e| e.1).collect(),
            times: (0..events.len() as i64).collect(),
            labels: Some(events.iter().map(|e| e.4).collect()),
            kinds: Some(events.iter().map(|e| e.2).collect()),
            groups: bundles.then(|| events.iter().map(|e| e.3).collect()),
            explained: Some(events.iter().enumerate().map(|(i, _)| (i % 3 == 1) as i8).collect()),
            ..Events::default()
        })
        .unwrap();
        s.gaps = Some((0..events.len()).map(|i| (i as f32 * 0.37).sin()).collect());
        s
    }

    /// Learner 1: a bundle straddling chunks, a lecture, a bundle of three;
    /// learner 2: four events.
    fn events() -> Vec<Ev> {
        vec![
            (1, 1, 0, 0, 1),
            (1, 2, 0, 1, 0),
            (1, 3, 0, 1, 1),
            (1, 1, 1, 2, -1),
            (1, 1, 0, 3, 1),
            (1, 2, 0, 3, 0),
            (1, 3, 0, 3, 1),
            (1, 2, 0, 4, 0),
            (1, 1, 0, 5, 1),
            (2, 3, 0, 0, 0),
            (2, 1, 0, 1, 1),
            (2, 2, 0, 1, 1),
            (2, 3, 0, 2, 0),
        ]
    }

    fn tags() -> KtTags {
        KtTags::new(&[vec![], vec![1], vec![1, 2], vec![]], &[vec![], vec![2]], 3).unwrap()
    }

    fn shape(history: bool) -> KtShape {
        KtShape {
            n_questions: 4,
            n_tags: 3,
            max_tags: 2,
            n_learners: 3,
            embedding: 2,
            head: KtHead::NeuMf,
            mlp: vec![3],
            history,
            hidden: 3,
            input_embedding: 2,
            tag_embedding: 2,
            learner_embedding: false,
            dropout: 0.0,
        }
    }

    /// Probability per event (NaN where not a target), chunked by `len`.
    fn predict(model: &KtModel, store: &SequenceStore, tags: &KtTags, len: usize) -> Vec<f32> {
        let src = KtSource::new(store, tags).unwrap();
        let order: Vec<usize> = (0..store.n_seq()).collect();
        let mut chunks = Chunks::new(store, order, Targets::All, &ChunksConfig { len, batch_size: 2 }).unwrap();
        let (mut state, mut b) = (KtState::new(), KtBatch::default());
        let mut out = vec![f32::NAN; store.n_events()];
        while let Some(step) = chunks.next_step() {
            src.fill(step, &|_| true, &mut b);
            let p = probabilities(&model.forward(&b, &mut state, None).unwrap()).unwrap();
            for r in 0..b.rows {
                for q in 0..step.valid[r] {
                    if b.target[r * len + q] > 0.0 {
                        out[step.start[r] + q] = p[r * len + q];
                    }
                }
            }
        }
        out
    }

    fn perturbed(model: &mut KtModel) {
        // Spread the parameters so that every input visibly moves the output.
        let mut rng = Rng::new(7);
        let tensors = model.params().named_tensors();
        let moved = tensors
            .iter()
            .map(|(k, t)| {
                let v: Vec<f32> = (0..t.elem_count()).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
                (k.clone(), Tensor::from_vec(v, t.shape(), t.device()).unwrap())
            })
            .collect();
        model.params_mut().load(&moved).unwrap();
    }

    #[test]
    fn bundles_are_runs_of_one_group() {
        let store = store_of(&events(), true);
        let t = tags();
        let src = KtSource::new(&store, &t).unwrap();
        assert_eq!(src.bundle_offsets(), [0, 0, 1, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn carrying_the_state_across_chunks_changes_nothing() {
        let store = store_of(&events(), true);
        let t = tags();
        let mut model = KtModel::new(&shape(true), 3, &Device::Cpu).unwrap();
        perturbed(&mut model);
        let whole = predict(&model, &store, &t, 16);
        for len in [1, 2, 3, 5] {
            let chunked = predict(&model, &store, &t, len);
            for (e, (a, b)) in whole.iter().zip(&chunked).enumerate() {
                assert!(a.is_nan() == b.is_nan(), "event {e}");
                assert!(a.is_nan() || (a - b).abs() < 1e-5, "len {len}, event {e}: {a} vs {b}");
            }
        }
        assert_eq!(whole.iter().filter(|p| !p.is_nan()).count(), 12, "every question is a target, the lecture not");
    }

    #[test]
    fn no_answer_of_the_own_bundle_or_later_leaks_in() {
        let evs = events();
        let t = tags();
        let mut model = KtModel::new(&shape(true), 5, &Device::Cpu).unwrap();
        perturbed(&mut model);
        let base = predict(&model, &store_of(&evs, true), &t, 2);
        let src_store = store_of(&evs, true);
        let back = KtSource::new(&src_store, &t).unwrap().bundle_offsets().to_vec();
        for e in 0..evs.len() {
            if evs[e].2 == 1 {
                continue;
            }
            let first = e - back[e] as usize;
            // Flip every answer from the event's bundle on: the prediction stays.
            let mut later = evs.clone();
            for x in later.iter_mut().skip(first).filter(|x| x.0 == evs[e].0 && x.4 >= 0) {
                x.4 = 1 - x.4;
            }
            let p = predict(&model, &store_of(&later, true), &t, 2);
            assert!((p[e] - base[e]).abs() < 1e-6, "event {e}: {} vs {}", p[e], base[e]);
            // Flip the answer just before the bundle (same learner): it moves.
            let prev = (0..first).rev().find(|&x| evs[x].0 == evs[e].0 && evs[x].4 >= 0);
            if let Some(x) = prev {
                let mut earlier = evs.clone();
                earlier[x].4 = 1 - earlier[x].4;
                let p = predict(&model, &store_of(&earlier, true), &t, 2);
                assert!((p[e] - base[e]).abs() > 1e-6, "event {e} ignores event {x}");
            }
        }
        // Without bundles, the question right before counts.
        let solo = predict(&model, &store_of(&evs, false), &t, 2);
        assert!((solo[2] - base[2]).abs() > 1e-6);
    }

    /// The LSTM recurrence written out in f64 over the documented inputs.
    #[test]
    fn history_states_follow_the_lstm_recurrence() {
        let evs = events()[..9].to_vec();
        let store = store_of(&evs, false);
        let t = tags();
        let sh = shape(true);
        let mut model = KtModel::new(&sh, 11, &Device::Cpu).unwrap();
        perturbed(&mut model);
        let src = KtSource::new(&store, &t).unwrap();
        let mut chunks = Chunks::new(&store, vec![0], Targets::All, &ChunksConfig { len: 9, batch_size: 1 }).unwrap();
        let mut b = KtBatch::default();
        src.fill(chunks.next_step().unwrap(), &|_| true, &mut b);
        let got: Vec<f32> = model
            .history_states(model.history.as_ref().unwrap(), &b, &mut KtState::new())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let p = model.params().named_tensors();
        let m = |name: &str| -> Vec<Vec<f64>> {
            let t = &p[name];
            let cols = t.dims().last().copied().unwrap();
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.chunks(cols).map(|r| r.iter().map(|&x| f64::from(x)).collect()).collect()
        };
        let (qe, te, wih, whh) = (m("history.question"), m("history.tag"), m("lstm.weight_ih"), m("lstm.weight_hh"));
        let (bih, bhh) = (m("lstm.bias_ih").concat(), m("lstm.bias_hh").concat());
        let hd = sh.hidden;
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (mut h, mut c) = (vec![0f64; hd], vec![0f64; hd]);
        for (e, ev) in evs.iter().enumerate() {
            // Position e is predicted from the state before it.
            for j in 0..hd {
                assert!((f64::from(got[e * hd + j]) - h[j]).abs() < 1e-5, "position {e}, unit {j}");
            }
            let lecture = ev.2 == 1;
            let (cr, wr) = if lecture { (0.0, 0.0) } else { (f64::from(ev.4 == 1), f64::from(ev.4 == 0)) };
            let list = if lecture { &t.lecture } else { &t.question };
            let ids: Vec<usize> = list[ev.1 as usize * 2..ev.1 as usize * 2 + 2]
                .iter()
                .filter(|&&g| g != 0)
                .map(|&g| g as usize)
                .collect();
            let mut tag = [0f64; 2];
            for &g in &ids {
                for k in 0..2 {
                    tag[k] += te[g][k] / ids.len() as f64;
                }
            }
            let q = &qe[ev.1 as usize];
            let mut x = Vec::new();
            x.extend(q.iter().map(|v| v * cr));
            x.extend(q.iter().map(|v| v * wr));
            x.extend(tag.iter().map(|v| v * cr));
            x.extend(tag.iter().map(|v| v * wr));
            x.extend(tag.iter().map(|v| v * f64::from(lecture)));
            let gap = f64::from((e as f32 * 0.37).sin());
            x.extend([cr, wr, f64::from(lecture), gap, f64::from(e % 3 == 1)]);
            let pre: Vec<f64> = (0..4 * hd)
                .map(|r| {
                    bih[r]
                        + bhh[r]
                        + wih[r].iter().zip(&x).map(|(w, v)| w * v).sum::<f64>()
                        + whh[r].iter().zip(&h).map(|(w, v)| w * v).sum::<f64>()
                })
                .collect();
            for j in 0..hd {
                let (i, f, o, g) = (sig(pre[j]), sig(pre[hd + j]), sig(pre[2 * hd + j]), pre[3 * hd + j].tanh());
                c[j] = f * c[j] + i * g;
                h[j] = o * c[j].tanh();
            }
        }
    }

    #[test]
    fn loss_is_the_mean_bce_over_targets() {
        let model = KtModel::new(&shape(false), 1, &Device::Cpu).unwrap();
        let b =
            KtBatch { rows: 1, len: 3, target: vec![1.0, 0.0, 1.0], label: vec![1.0, 1.0, 0.0], ..KtBatch::default() };
        let z = Tensor::new(&[0.3f32, -5.0, -1.2], &Device::Cpu).unwrap();
        let (loss, n) = model.loss(&z, &b).unwrap();
        let want = ((1.0 + (-0.3f64).exp()).ln() + (1.0 + (-1.2f64).exp()).ln()) / 2.0;
        assert_eq!(n, 2);
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
    }

    #[test]
    fn ncf_reads_the_learner_id_and_no_history() {
        let store = store_of(&events(), true);
        let t = tags();
        let mut model = KtModel::new(&shape(false), 2, &Device::Cpu).unwrap();
        perturbed(&mut model);
        let p = predict(&model, &store, &t, 4);
        // Same question, same learner: same prediction wherever it occurs.
        assert!((p[0] - p[4]).abs() < 1e-6 && (p[0] - p[8]).abs() < 1e-6);
        // Same question, other learner: differs.
        assert!((p[0] - p[10]).abs() > 1e-6);
    }

    #[test]
    fn pretrained_neumf_starts_as_the_mixture_of_gmf_and_mlp() {
        let store = store_of(&events(), true);
        let t = tags();
        let with_head = |head| KtShape { head, ..shape(false) };
        let mut gmf = KtModel::new(&with_head(KtHead::Gmf), 3, &Device::Cpu).unwrap();
        let mut mlp = KtModel::new(&with_head(KtHead::Mlp), 4, &Device::Cpu).unwrap();
        perturbed(&mut gmf);
        perturbed(&mut mlp);
        let logit = |p: f32| (f64::from(p) / (1.0 - f64::from(p))).ln();
        let (pg, pm) = (predict(&gmf, &store, &t, 4), predict(&mlp, &store, &t, 4));
        let mut neumf = KtModel::new(&shape(false), 5, &Device::Cpu).unwrap();
        let alpha = 0.3;
        neumf.load_neumf_pretrained(&gmf.params().named_tensors(), &mlp.params().named_tensors(), alpha).unwrap();
        let pn = predict(&neumf, &store, &t, 4);
        let mut scored = 0;
        for e in 0..store.n_events() {
            if pn[e].is_nan() {
                assert!(pg[e].is_nan() && pm[e].is_nan());
                continue;
            }
            let want = alpha * logit(pg[e]) + (1.0 - alpha) * logit(pm[e]);
            assert!((logit(pn[e]) - want).abs() < 1e-4, "event {e}: {} vs {want}", logit(pn[e]));
            scored += 1;
        }
        assert!(scored >= 8, "{scored} answers scored");
        // The heads really differ, so the mixture is not trivially either.
        assert!((0..store.n_events()).any(|e| !pg[e].is_nan() && (pg[e] - pm[e]).abs() > 1e-3));

        let (g, m) = (gmf.params().named_tensors(), mlp.params().named_tensors());
        let e = neumf.load_neumf_pretrained(&g, &m, 1.5).unwrap_err().to_string();
        assert!(e.contains("alpha 1.5"), "{e}");
        let mut no_tower = m.clone();
        no_tower.remove("mlp0.weight");
        let e = neumf.load_neumf_pretrained(&g, &no_tower, 0.5).unwrap_err().to_string();
        assert!(e.contains("MLP weights lack tensor `mlp0.weight`"), "{e}");
        let e = neumf.load_neumf_pretrained(&m, &g, 0.5).unwrap_err().to_string();
        assert!(e.contains("GMF weights lack"), "{e}");
        let mut rrncf = KtModel::new(&shape(true), 1, &Device::Cpu).unwrap();
        let e = rrncf.load_neumf_pretrained(&g, &m, 0.5).unwrap_err().to_string();
        assert!(e.contains("must be NCF"), "{e}");
    }

    #[test]
    fn bad_settings_and_batches_are_named() {
        let mut s = shape(true);
        s.hidden = 0;
        assert!(KtModel::new(&s, 1, &Device::Cpu).unwrap_err().to_string().contains("`hidden`"));
        let model = KtModel::new(&shape(true), 1, &Device::Cpu).unwrap();
        let store = store_of(&events(), true);
        let t = tags();
        let src = KtSource::new(&store, &t).unwrap();
        let mut chunks =
            Chunks::new(&store, vec![0, 1], Targets::All, &ChunksConfig { len: 4, batch_size: 2 }).unwrap();
        let mut b = KtBatch::default();
        src.fill(chunks.next_step().unwrap(), &|_| true, &mut b);
        b.question[0] = 9;
        let e = model.forward(&b, &mut KtState::new(), None).unwrap_err().to_string();
        assert!(e.contains("question id 9"), "{e}");
        let small = KtTags::new(&[vec![], vec![1]], &[vec![]], 3).unwrap();
        assert!(KtSource::new(&store, &small).unwrap_err().to_string().contains("beyond"));
    }
}
