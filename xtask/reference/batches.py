"""The session-parallel mini-batches of the authors' GRU4Rec on random
sessions, for the `session_parallel_reference` test of seqrec-data.

Runs their `SessionDataIterator` (time order, no negatives) over random
sessions (with `--min-length 1` some of one event, which give no pair;
every event its own item) and records, for every
step, each row's input and target item, whether the row starts a new
session (their reset hook zeroes its hidden state) and, for the other
rows, which row of the previous step it continues (found by tagging the
hidden-state rows, as their `_adjust_hidden` gathers them when the batch
shrinks). Writes a plain-text fixture:

    session <session id> <start time> <item> <item> ...
    step <inputs,> <targets,> <reset 0/1,> <previous row or -1,>

    python batches.py --ref /work/ref --out session_parallel_ref.txt
    python batches.py --ref /work/ref --min-length 2 --seed 4 --out session_parallel_ref_min2.txt
"""

import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="/work/ref")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, default=60)
    ap.add_argument("--batch", type=int, default=7)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--min-length", type=int, default=1, help="shortest session (1: some give no pair)")
    a = ap.parse_args()
    sys.path.insert(0, a.ref)
    import pandas as pd
    import torch
    from gru4rec_pytorch import SessionDataIterator

    rng = np.random.default_rng(a.seed)
    # distinct start times in an order unrelated to the session ids
    starts = rng.permutation(a.sessions) * 10 + 1000
    rows = []
    sessions = []
    lengths = [int(rng.choice([n for n in [1, 2, 3, 4, 6, 9, 15] if n >= a.min_length])) for _ in range(a.sessions)]
    # every event its own item, shuffled: a row's input names its session and position
    pool = rng.permutation(sum(lengths)) + 1
    used = 0
    for sid in range(a.sessions):
        length = lengths[sid]
        items = pool[used:used + length]
        used += length
        sessions.append((sid, int(starts[sid]), [int(i) for i in items]))
        for k, item in enumerate(items):
            rows.append((sid, int(item), int(starts[sid]) + k))
    data = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    it = SessionDataIterator(data, a.batch, n_sample=0, device=torch.device("cpu"))
    ids = it.itemidmap.index.values

    H = [torch.zeros((a.batch, 1))]

    def hook(n_valid, finished_mask, valid_mask):
        # as their _adjust_hidden: zero the finished rows, drop the invalid ones
        H[0][finished_mask] = 0
        if n_valid < len(valid_mask):
            H[0] = H[0][valid_mask]
        return False

    steps = []
    tag = 0
    prev_tags = []
    for x, y in it(enable_neg_samples=False, reset_hook=hook):
        tags = H[0][:, 0].tolist()
        assert len(tags) == len(x)
        reset = [t == 0 for t in tags]
        prev = [-1 if r else prev_tags.index(t) for t, r in zip(tags, reset)]
        for i, r in enumerate(reset):
            if r:
                tag += 1
                H[0][i, 0] = tag
        prev_tags = H[0][:, 0].tolist()
        steps.append(([int(ids[i]) for i in x.tolist()], [int(ids[i]) for i in y.tolist()], reset, prev))

    with open(a.out, "w") as f:
        f.write("# written by xtask/reference/batches.py from the authors' SessionDataIterator\n")
        f.write(f"batch {a.batch}\n")
        for sid, start, items in sessions:
            f.write(f"session {sid} {start} {' '.join(map(str, items))}\n")
        for x, y, reset, prev in steps:
            j = lambda v: ",".join(str(int(u)) for u in v)
            f.write(f"step {j(x)} {j(y)} {j(reset)} {j(prev)}\n")
    print("wrote", a.out, len(steps), "steps")


if __name__ == "__main__":
    main()
