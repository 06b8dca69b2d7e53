"""Train and evaluate the authors' GRU4Rec (hidasib/GRU4Rec_PyTorch_Official)
on CPU with the settings of `seqrec bench gru4rec`, printing training and
evaluation events/s. Equivalent to their

    run.py DATA/train.tsv -t DATA/test.tsv -ps PARAMS -ss 1000000 -e conservative -m 20 -d cpu

with the thread count fixed and the evaluation timed. Run it from a checkout
of their repository (it imports gru4rec_pytorch and evaluation from the
working directory or from --ref).

    python run_ref.py --data data/items8k --setting b --epochs 1 --threads 2
"""
import argparse
import contextlib
import io
import re
import sys
import time

SETTINGS = {
    # (a) and (b) of the GRU4Rec issue; (c) is (a) without extra samples.
    "a": dict(layers=[100], batch_size=32, n_sample=2048, constrained_embedding=False),
    "b": dict(layers=[480], batch_size=48, n_sample=2048, constrained_embedding=True),
    "c": dict(layers=[100], batch_size=32, n_sample=0, constrained_embedding=False),
}


class Tee(io.TextIOBase):
    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s):
        self.out.write(s)
        self.out.flush()
        return self.buf.write(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="directory with train.tsv and test.tsv (split.py)")
    ap.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref", default=".", help="checkout of the authors' repository")
    a = ap.parse_args()
    sys.path.insert(0, a.ref)
    import pandas as pd
    import torch

    torch.set_num_threads(a.threads)
    from gru4rec_pytorch import GRU4Rec
    import evaluation

    def load(path):
        return pd.read_csv(path, sep="\t", usecols=["SessionId", "ItemId", "Time"],
                           dtype={"SessionId": "int32", "ItemId": "str"})

    train, test = load(f"{a.data}/train.tsv"), load(f"{a.data}/test.tsv")
    gru = GRU4Rec(device=torch.device("cpu"))
    params = dict(SETTINGS[a.setting], loss="cross-entropy", n_epochs=a.epochs)
    gru.set_params(**{k: (str(v) if not isinstance(v, list) else "/".join(map(str, v))) for k, v in params.items()})
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        gru.fit(train, sample_cache_max_size=1000000)
    per_epoch = [float(x) for x in re.findall(r"\|\s*([0-9.]+) e/s\]", tee.buf.getvalue())]
    targets = len(test) - test.SessionId.nunique()
    t0 = time.time()
    recall, mrr = evaluation.batch_eval(gru, test, batch_size=512, cutoff=[20], mode="conservative")
    dt = time.time() - t0
    print(f"setting {a.setting} data {a.data}: train events/s per epoch {' / '.join(f'{x:.0f}' for x in per_epoch)}; "
          f"eval {targets / dt:.0f} events/s; Recall@20 {recall[20]:.4f} MRR@20 {mrr[20]:.4f}")


if __name__ == "__main__":
    main()
