"""The authors' GRU4Rec evaluation (`evaluation.batch_eval`) on random test
sessions with a fixed model, for the `gru4rec_reference` test.

Builds their `GRU4RecModel` (constrained embedding, compatibility-mode
initialisation), makes two pairs of items score the same everywhere
(identical output rows and biases) so that the tie modes differ, and runs
their `batch_eval` in `standard` and `conservative` modes (their `median`
does not run) at cut-offs 1, 5, 20. Writes an `.npz` with the model
(`init.*`, as `one_step.py`), the sessions (`items`, `offsets`, in time
order) and their Recall/MRR.

    python eval_ref.py --ref /work/ref --out gru4rec_ref_eval.npz
"""

import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="/work/ref")
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=30)
    ap.add_argument("--layers", default="8")
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--eval-batch", type=int, default=6)
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    sys.path.insert(0, a.ref)
    import pandas as pd
    import torch
    from evaluation import batch_eval
    from gru4rec_pytorch import GRU4Rec, GRU4RecModel

    torch.set_num_threads(1)
    layers = [int(x) for x in a.layers.split("/")]
    rng = np.random.default_rng(a.seed)
    model = GRU4RecModel(a.items, layers, 0.0, 0.0, 0, True)
    model._reset_weights_to_compatibility_mode()
    with torch.no_grad():
        # a bias so that the scores are not symmetric around zero
        model.By.weight.copy_(torch.tensor(rng.normal(0, 0.3, size=(a.items, 1)), dtype=torch.float32))
        for x, y in [(3, 4), (10, 11)]:
            model.Wy.weight[y] = model.Wy.weight[x]
            model.By.weight[y] = model.By.weight[x]
    gru = GRU4Rec(layers=layers, n_sample=2048, device=torch.device("cpu"))
    gru.model = model
    gru.error_during_train = False

    class Ids:
        pass

    gru.data_iterator = Ids()
    gru.data_iterator.itemidmap = pd.Series(np.arange(a.items, dtype="int32"), index=np.arange(a.items), name="ItemIdx")

    rows, items, offsets = [], [], [0]
    starts = rng.permutation(a.sessions) * 100
    order = np.argsort(starts)
    for sid in order:
        length = int(rng.integers(2, 9))
        seq = rng.integers(0, a.items, size=length)
        # ties on targets: items 4 and 11 (tied with 3 and 10) come often
        seq[rng.random(length) < 0.2] = 4
        seq[rng.random(length) < 0.1] = 11
        for k, item in enumerate(seq):
            rows.append((int(sid), int(item), int(starts[sid]) + k))
        items.extend(int(i) for i in seq)
        offsets.append(len(items))
    test = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    out = {"init." + n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    out["items"] = np.array(items, dtype=np.int64)
    out["offsets"] = np.array(offsets, dtype=np.int64)
    cut = [1, 5, 20]
    for mode in ["standard", "conservative"]:
        recall, mrr = batch_eval(gru, test, cutoff=cut, batch_size=a.eval_batch, mode=mode)
        out[f"{mode}.recall"] = np.array([recall[c] for c in cut], dtype=np.float64)
        out[f"{mode}.mrr"] = np.array([mrr[c] for c in cut], dtype=np.float64)
        print(mode, recall, mrr)
    out["cutoffs"] = np.array(cut, dtype=np.int64)
    np.savez(a.out, **out)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
