"""The Python reference for `cargo xtask bench prepare`: what the notebook's data step does.

pandas `read_csv` of the raw Sentiment140 layout, neutral rows dropped, polarity 0/4 -> 0/1,
scikit-learn `train_test_split(stratify=...)` twice for 70/15/15 with random_state 734, then
`DataFrame.to_parquet` (pyarrow, snappy) of each split. Run by the benchmark, never by tests.
"""

import argparse
import os

import pandas as pd
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    df = pd.read_csv(
        args.input,
        encoding="latin-1",
        header=None,
        names=["polarity", "id", "date", "query", "user", "text"],
    )
    df["row"] = df.index + 1
    df = df[df.polarity != 2]
    df["label"] = (df.polarity == 4).astype("int64")
    df = df[["row", "text", "label"]]
    train, rest = train_test_split(df, test_size=0.3, stratify=df.label, random_state=734)
    validation, test = train_test_split(
        rest, test_size=0.5, stratify=rest.label, random_state=734
    )
    os.makedirs(args.out, exist_ok=True)
    for name, part in [("train", train), ("validation", validation), ("test", test)]:
        part.to_parquet(os.path.join(args.out, f"{name}.parquet"), index=False)
    print(len(train), len(validation), len(test))


if __name__ == "__main__":
    main()
