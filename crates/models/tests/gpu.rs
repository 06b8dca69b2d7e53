//! A short GRU4Rec training run on the GPU tracks the same run on the CPU:
//! the GPU takes the device path (fused GRU kernels, the loss kernel, the
//! two-pass sparse optimiser kernels, rank counting), the CPU its own path.
//! Skipped, with a message, without the `cuda` feature or a GPU.

use candle_core::Device;
use seqrec_data::rng::Rng;
use seqrec_kernels::device::test_gpu;
use seqrec_models::gru4rec::{FinalAct, Gru4Rec, Gru4RecShape, StepConfig, TrainBatch};
use seqrec_models::loss::Loss;
use seqrec_models::optim::{Optimizer, OptimizerKind};

fn losses(device: &Device, constrained: bool, loss: Loss) -> Vec<f32> {
    let shape = Gru4RecShape {
        layers: vec![64],
        embedding: 0,
        constrained_embedding: constrained,
        dropout_p_embed: 0.0,
        dropout_p_hidden: 0.1,
        final_act: FinalAct::Linear,
        reset_after: false,
    };
    let n_ids = 2_001usize;
    let mut model = Gru4Rec::new(shape, n_ids, 7, device).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::Adagrad, 0.05, 0.3).unwrap();
    let cfg = StepConfig { loss, logq: 0.0, batch_size: 32 };
    let mut data = Rng::new(3);
    let mut dropout = Rng::new(4);
    let mut state = model.zero_state(32).unwrap();
    (0..60)
        .map(|_| {
            // a successor structure the model can learn: target = input + 1 (mod)
            let inputs: Vec<u32> = (0..32).map(|_| 1 + data.below(2_000) as u32).collect();
            let targets: Vec<u32> = inputs.iter().map(|&i| 1 + i % 2_000).collect();
            let samples: Vec<u32> = (0..256).map(|_| 1 + data.below(2_000) as u32).collect();
            let batch = TrainBatch { inputs: &inputs, targets: &targets, samples: &samples, log_pop: None };
            model.train_step(batch, &mut state, &cfg, &mut opt, &mut dropout).unwrap()
        })
        .collect()
}

#[test]
fn gpu_training_loss_tracks_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    for (constrained, loss) in [(false, Loss::CrossEntropy), (true, Loss::BprMax { bpreg: 1.0 })] {
        let (cpu, dev) = (losses(&Device::Cpu, constrained, loss), losses(&gpu, constrained, loss));
        for (step, (a, b)) in cpu.iter().zip(&dev).enumerate() {
            assert!((a - b).abs() <= 1e-3 * (1.0 + a.abs()), "{loss:?} step {step}: cpu {a} vs gpu {b}");
        }
        assert!(cpu[59] < cpu[0], "{loss:?}: the run learns ({} → {})", cpu[0], cpu[59]);
    }
}
