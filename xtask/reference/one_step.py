"""Training steps of the authors' GRU4Rec on hand-made batches, for a
weight-for-weight comparison with seqrec (`gru4rec_reference` test).

Builds their `GRU4RecModel` (constrained embedding by default, so every
hidden layer is a `torch.nn.GRUCell`), initialises it as their `fit` does
(compatibility mode), then runs `--steps` mini-batches of random inputs,
targets and shared extra samples through their forward pass, their
loss (cross-entropy, or BPR-max with their ELU) and their `IndexedAdagradM`, the hidden state carried
from step to step and detached, as in their training loop. Writes an
`.npz` with the initial parameters (`init.*`), the batches, the loss of
every step and the parameters after the last step (`final.*`), all in
their layout; the reader maps them onto seqrec's.

    python one_step.py --ref /work/ref --out gru4rec_ref.npz

No dropout (the masks' random streams differ between implementations).
"""

import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="/work/ref", help="checkout of hidasib/GRU4Rec_PyTorch_Official")
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--layers", default="8")
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--n-sample", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.3)
    ap.add_argument("--logq", type=float, default=0.0)
    ap.add_argument("--embedding", type=int, default=0)
    ap.add_argument("--constrained", type=int, default=1)
    ap.add_argument("--loss", default="cross-entropy", choices=["cross-entropy", "bpr-max"])
    ap.add_argument("--bpreg", type=float, default=1.0)
    ap.add_argument("--elu", type=float, default=0.5, help="bpr-max only: their elu_param (the final activation)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    sys.path.insert(0, a.ref)
    import torch
    from gru4rec_pytorch import GRU4Rec, GRU4RecModel, IndexedAdagradM

    torch.set_num_threads(1)
    layers = [int(x) for x in a.layers.split("/")]
    model = GRU4RecModel(a.items, layers, 0.0, 0.0, a.embedding, bool(a.constrained))
    model._reset_weights_to_compatibility_mode()
    gru = GRU4Rec(layers=layers, loss=a.loss, batch_size=a.batch, logq=a.logq, bpreg=a.bpreg,
                  elu_param=a.elu, device=torch.device("cpu"))
    rng = np.random.default_rng(a.seed)
    # Popularities for logQ: positive counts per item.
    pop = rng.integers(1, 50, size=a.items).astype(np.float32)
    gru.P0 = torch.tensor(pop)
    gru.sample_alpha = 0.5
    out = {"pop": pop, "lr": np.float32(a.lr), "momentum": np.float32(a.momentum),
           "logq": np.float32(a.logq), "batch": np.int64(a.batch),
           "bpr_max": np.int64(a.loss == "bpr-max"), "bpreg": np.float32(a.bpreg), "elu": np.float32(a.elu)}
    for name, p in model.named_parameters():
        out["init." + name] = p.detach().numpy().copy()
    opt = IndexedAdagradM(model.parameters(), a.lr, a.momentum)
    H = [torch.zeros((a.batch, h), dtype=torch.float32) for h in layers]
    losses = []
    for step in range(a.steps):
        x = rng.integers(0, a.items, size=a.batch)
        y = rng.integers(0, a.items, size=a.batch)
        s = rng.integers(0, a.items, size=a.n_sample)
        # repeats on purpose: an input equal to a target, a sample equal to a target
        x[0] = y[1]
        if a.n_sample > 0:
            s[0] = y[0]
        out[f"step{step}.inputs"] = x
        out[f"step{step}.targets"] = y
        out[f"step{step}.samples"] = s
        for h in H:
            h.detach_()
        model.zero_grad()
        Y = torch.tensor(np.concatenate([y, s]))
        R = model.forward(torch.tensor(x), H, Y, training=True)
        L = gru.loss_function(R, Y, a.batch) / a.batch
        L.backward()
        if step == 0:
            for name, p in model.named_parameters():
                if p.grad is not None:
                    g = p.grad.to_dense() if p.grad.is_sparse else p.grad
                    out["grad0." + name] = g.numpy().copy()
        opt.step()
        losses.append(float(L))
    out["losses"] = np.array(losses, dtype=np.float32)
    for name, p in model.named_parameters():
        out["final." + name] = p.detach().numpy().copy()
    np.savez(a.out, **out)
    print("losses", losses)
    print("wrote", a.out, "keys", sorted(k for k in out if k.startswith("init.")))


if __name__ == "__main__":
    main()
