//! The CUDA kernels against their CPU references on random inputs: relative
//! error within f32 tolerance, every output element written (outputs start
//! as zeros on the GPU; the references are non-zero almost everywhere, and
//! in-place updates are compared over whole tables, untouched rows included).
//! Each test is skipped, with a message, without the `cuda` feature or a GPU.

use candle_core::{DType, Device, Tensor};
use seqrec_kernels::device::test_gpu;
use seqrec_kernels::loss::{sampled_loss_grad, Act, LossKind};
use seqrec_kernels::optim::{dense_step, sparse_step, RowGroups, Rule};
use seqrec_kernels::{gru, rank};

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap()
}

/// `|a − b| <= tol · (1 + |b|)` element by element, with the worst reported.
fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: element {k}: gpu {x} vs cpu {y}");
    }
}

fn on(dev: &Device, v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, dev).unwrap()
}

#[test]
fn sparse_and_dense_optimiser_updates_match_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let (rows, width) = (3000usize, 96usize);
    let adam = Rule::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 3, weight_decay: 0.01 };
    for rule in [Rule::AdagradM { lr: 0.05, momentum: 0.3, eps: 1e-6 }, adam] {
        let init = values(rows * width, 1, 1.0);
        let st: Vec<f32> = values(rows * 2 * width, 2, 1.0).iter().map(|x| x.abs()).collect();
        let make = |d: &Device| (on(d, init.clone(), &[rows, width]), on(d, st.clone(), &[rows, 2 * width]));
        let ((pc, sc), (pg, sg)) = (make(&Device::Cpu), make(&gpu));
        for step in 0..3u64 {
            // repeats on purpose (summed first), most rows untouched
            let ids: Vec<u32> = values(700, 10 + step, 1.0).iter().map(|x| ((x.abs() * 1499.0) as u32) * 2).collect();
            let groups = RowGroups::new(&ids);
            let g = values(ids.len() * width, 20 + step, 0.5);
            sparse_step(rule, &pc, &sc, &on(&Device::Cpu, g.clone(), &[ids.len(), width]), &groups).unwrap();
            sparse_step(rule, &pg, &sg, &on(&gpu, g, &[ids.len(), width]), &groups).unwrap();
        }
        close(&host(&pg), &host(&pc), 1e-5, &format!("{rule:?} sparse parameter"));
        close(&host(&sg), &host(&sc), 1e-5, &format!("{rule:?} sparse state"));
        let (dc, dsc) = (
            on(&Device::Cpu, init.clone(), &[rows, width]),
            Tensor::zeros(2 * rows * width, DType::F32, &Device::Cpu).unwrap(),
        );
        let (dg, dsg) =
            (on(&gpu, init.clone(), &[rows, width]), Tensor::zeros(2 * rows * width, DType::F32, &gpu).unwrap());
        for step in 0..3u64 {
            let g = values(rows * width, 40 + step, 0.5);
            dense_step(rule, &dc, &dsc, &on(&Device::Cpu, g.clone(), &[rows, width])).unwrap();
            dense_step(rule, &dg, &dsg, &on(&gpu, g, &[rows, width])).unwrap();
        }
        close(&host(&dg), &host(&dc), 1e-5, &format!("{rule:?} dense parameter"));
    }
}

#[test]
fn fused_losses_match_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let (b, s) = (48usize, 2048usize);
    let cols = b + s;
    let scores = values(b * cols, 3, 3.0);
    let bias = values(cols, 4, 0.3);
    let lp: Vec<f32> = values(cols, 5, 4.0).iter().map(|x| -x.abs()).collect();
    let kinds = [LossKind::CrossEntropy, LossKind::Top1, LossKind::Bpr, LossKind::Top1Max, LossKind::BprMax(0.5)];
    for kind in kinds {
        for act in [Act::Linear, Act::Tanh, Act::Elu(0.5), Act::Leaky(0.1), Act::Relu] {
            for logq in [None, Some(1.0f32)] {
                let run = |d: &Device| {
                    let lp = on(d, lp.clone(), &[cols]);
                    sampled_loss_grad(
                        kind,
                        act,
                        32,
                        &on(d, scores.clone(), &[b, cols]),
                        &on(d, bias.clone(), &[cols]),
                        logq.map(|q| (&lp, q)),
                    )
                    .unwrap()
                };
                let ((lc, gc), (lg, gg)) = (run(&Device::Cpu), run(&gpu));
                let what = format!("{kind:?} {act:?} logq {logq:?}");
                assert!((lg - lc).abs() <= 1e-5 * (1.0 + lc.abs()), "{what}: loss gpu {lg} vs cpu {lc}");
                close(&host(&gg), &host(&gc), 1e-4, &what);
            }
        }
    }
}

#[test]
fn gru_gate_stages_match_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let (rows, n) = (48usize, 480usize);
    let vx = values(rows * 3 * n, 6, 2.0);
    let vrz = values(rows * 2 * n, 7, 2.0);
    let h = values(rows * n, 8, 1.0);
    let u = values(rows * n, 9, 2.0);
    let d = values(rows * n, 10, 1.0);
    let run = |dev: &Device| {
        let gates = gru::forward_a(
            &on(dev, vx.clone(), &[rows, 3 * n]),
            &on(dev, vrz.clone(), &[rows, 2 * n]),
            &on(dev, h.clone(), &[rows, n]),
        )
        .unwrap();
        let co = gru::forward_b(&on(dev, vx.clone(), &[rows, 3 * n]), &on(dev, u.clone(), &[rows, n]), &gates).unwrap();
        let bb = gru::backward_b(&on(dev, d.clone(), &[rows, n]), &gates, &co).unwrap();
        let ba = gru::backward_a(&on(dev, u.clone(), &[rows, n]), &gates).unwrap();
        [host(&gates), host(&co), host(&bb), host(&ba)]
    };
    let (c, g) = (run(&Device::Cpu), run(&gpu));
    for (k, what) in ["forward A", "forward B", "backward B", "backward A"].iter().enumerate() {
        close(&g[k], &c[k], 2e-6, what);
    }
}

#[test]
fn rank_counts_match_the_cpu_on_a_large_catalogue() {
    let Some(gpu) = test_gpu() else { return };
    let (rows, n, width) = (37usize, 50_000usize, 100usize);
    let states = values(rows * width, 11, 1.0);
    let mut table = values(n * width, 12, 0.3);
    let mut bias = values(n, 13, 0.1);
    // exact copies of a target: ties that must be counted as equal on both devices
    for j in [40_000usize, 49_999] {
        let row = table[7 * width..8 * width].to_vec();
        table[j * width..(j + 1) * width].copy_from_slice(&row);
        bias[j] = bias[7];
    }
    let targets: Vec<u32> = (0..rows as u32).map(|b| if b == 0 { 7 } else { 1 + b * 1297 % (n as u32 - 1) }).collect();
    let run = |d: &Device| {
        rank::rank_counts(
            &on(d, states.clone(), &[rows, width]),
            &on(d, table.clone(), &[n, width]),
            &on(d, bias.clone(), &[n]),
            &targets,
        )
        .unwrap()
    };
    let (c, g) = (run(&Device::Cpu), run(&gpu));
    assert_eq!(g, c);
    assert_eq!(c[0].equal, 2);
}
