//! A small, seedable, portable random number generator (xoshiro256++ seeded
//! by splitmix64) and the distributions the generators and samplers need.
//!
//! Our own so that a seed means the same data on every platform and every
//! version of every dependency.

/// xoshiro256++ (Blackman & Vigna), seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)];
        Rng { s }
    }

    /// An independent stream for sub-task `stream` (e.g. one per thread or per learner).
    pub fn fork(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let _ = splitmix64(&mut x);
        Rng::new(splitmix64(&mut x))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `(0, 1]`, safe for `ln`.
    pub fn uniform_open0(&mut self) -> f64 {
        1.0 - self.uniform()
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Lemire's multiply-shift; the bias is below 2^-64 * n, negligible here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform_open0();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform_open0().ln()
    }

    /// Number of failures before the first success, success probability `p` in `(0, 1]`.
    pub fn geometric(&mut self, p: f64) -> u64 {
        if p >= 1.0 {
            return 0;
        }
        (self.uniform_open0().ln() / (1.0 - p).ln()).floor() as u64
    }

    /// Shuffles `xs` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }

    /// Dirichlet(1, ..., 1) weights of length `k` (normalised exponentials).
    pub fn dirichlet_ones(&mut self, k: usize) -> Vec<f64> {
        let mut w: Vec<f64> = (0..k).map(|_| self.exponential(1.0)).collect();
        let sum: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= sum);
        w
    }
}

/// A seeded hash of `key` to `[0, 1)` with 53 bits: the first splitmix64
/// output from the state `seed ^ key · 0xD1B54A32D192ED03`, top 53 bits.
/// Equal `(seed, key)` give equal values on every platform; different keys
/// are as good as independent uniforms.
pub fn unit_hash(seed: u64, key: u64) -> f64 {
    let mut x = seed ^ key.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (splitmix64(&mut x) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Zipf(s) weights over ranks 1..=n, normalised to sum to one.
pub fn zipf_weights(n: usize, s: f64) -> Vec<f64> {
    let mut w: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-s)).collect();
    let sum: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= sum);
    w
}

/// Draws indices from fixed weights in O(1) (Walker's alias method).
#[derive(Debug, Clone)]
pub struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// A table for non-negative `weights` with a positive sum.
    ///
    /// # Panics
    /// If `weights` is empty or sums to zero (a caller bug, not bad input).
    pub fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        assert!(n > 0, "alias table over no weights");
        let sum: f64 = weights.iter().sum();
        assert!(sum > 0.0, "alias table over zero weights");
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        // Pair while both stacks hold an entry: popping `small` first when
        // `large` is empty would drop that entry with its probability below one
        // and its alias pointing at outcome 0.
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in large.into_iter().chain(small) {
            prob[i] = 1.0;
        }
        AliasTable { prob, alias }
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.prob.len()
    }

    /// Always false: a table has at least one outcome.
    pub fn is_empty(&self) -> bool {
        self.prob.is_empty()
    }

    /// One draw: an index in `0..len()`.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let i = rng.below(self.prob.len() as u64) as usize;
        if rng.uniform() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(Rng::fork(7, 1).next_u64(), Rng::fork(7, 2).next_u64());
    }

    #[test]
    fn moments_of_distributions() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let mean_u: f64 = (0..n).map(|_| r.uniform()).sum::<f64>() / n as f64;
        assert!((mean_u - 0.5).abs() < 0.005);
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "mean {m} var {v}");
        let e = (0..n).map(|_| r.exponential(60.0)).sum::<f64>() / n as f64;
        assert!((e - 60.0).abs() < 0.6, "exp mean {e}");
        // geometric failures before success: mean (1-p)/p
        let g = (0..n).map(|_| r.geometric(0.25) as f64).sum::<f64>() / n as f64;
        assert!((g - 3.0).abs() < 0.05, "geometric mean {g}");
    }

    #[test]
    fn alias_table_matches_weights() {
        let w = [0.5, 0.0, 2.0, 1.5, 1.0];
        let t = AliasTable::new(&w);
        let mut r = Rng::new(3);
        let n = 500_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[t.sample(&mut r)] += 1;
        }
        let total: f64 = w.iter().sum();
        for i in 0..5 {
            let expect = w[i] / total;
            let got = counts[i] as f64 / n as f64;
            assert!((got - expect).abs() < 0.004, "outcome {i}: {got} vs {expect}");
        }
        assert_eq!(counts[1], 0);
    }

    /// Rounding can leave entries on `small` once `large` is empty; each must
    /// end with probability one, never aliasing a zero-weight outcome.
    #[test]
    fn alias_table_leftovers_never_alias_a_zero_weight_outcome() {
        for n in 2..200 {
            let mut w = vec![0.0];
            w.extend((1..n).map(|i| 1.0 + (i as f64 * 0.7).sin() * 0.3 + 1e-13 * i as f64));
            let t = AliasTable::new(&w);
            for i in 1..n {
                assert!(t.prob[i] >= 1.0 || t.alias[i] != 0, "n {n}: outcome {i} can alias 0");
            }
        }
    }

    #[test]
    fn unit_hash_is_splitmix64() {
        // splitmix64's first output from state 0 is 0xE220A8397B1DCDAF (the
        // published reference value); key 0 leaves the seed as the state.
        assert_eq!(unit_hash(0, 0), (0xE220_A839_7B1D_CDAFu64 >> 11) as f64 / (1u64 << 53) as f64);
        assert_eq!(unit_hash(7, 3), unit_hash(7, 3));
        assert_ne!(unit_hash(7, 3), unit_hash(8, 3));
        let mean = (0..100_000u64).map(|k| unit_hash(5, k)).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
    }

    #[test]
    fn zipf_is_normalised_and_decreasing() {
        let w = zipf_weights(10, 1.1);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(w.windows(2).all(|p| p[0] > p[1]));
        assert!((w[0] / w[1] - 2f64.powf(1.1)).abs() < 1e-9);
    }
}
