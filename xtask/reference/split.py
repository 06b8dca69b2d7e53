"""Split a GRU4Rec-format TSV (SessionId, ItemId, Time in seconds, possibly fractional) the way
seqrec's `last_days` split does, for running the authors' GRU4Rec beside ours.

A session goes to test when its *first* event is at or after t_max - days;
test events whose item never occurs in training are removed; test sessions
left with fewer than two events are dropped. Writes OUT/train.tsv and
OUT/test.tsv and prints the counts, which must equal the `parts` counts of
`seqrec data prepare` on the same file.

    python split.py --input sessions.tsv --out data/items8k [--days 1]
"""
import argparse
import os

import pandas as pd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--days", type=float, default=1.0)
    a = ap.parse_args()
    data = pd.read_csv(a.input, sep="\t", dtype={"SessionId": "int64", "ItemId": "int64", "Time": "float64"})
    t_max = data.Time.max()
    start = data.groupby("SessionId").Time.transform("min")
    is_test = start >= t_max - a.days * 86400
    train, test = data[~is_test], data[is_test]
    test = test[test.ItemId.isin(set(train.ItemId.unique()))]
    length = test.groupby("SessionId").ItemId.transform("size")
    test = test[length >= 2]
    os.makedirs(a.out, exist_ok=True)
    train.to_csv(os.path.join(a.out, "train.tsv"), sep="\t", index=False)
    test.to_csv(os.path.join(a.out, "test.tsv"), sep="\t", index=False)
    n_train_sessions = train.SessionId.nunique()
    n_test_sessions = test.SessionId.nunique()
    print(
        f"train: {len(train)} events, {n_train_sessions} sessions, {len(train) - n_train_sessions} targets; "
        f"test: {len(test)} events, {n_test_sessions} sessions, {len(test) - n_test_sessions} targets"
    )


if __name__ == "__main__":
    main()
