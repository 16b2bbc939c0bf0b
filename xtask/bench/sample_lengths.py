"""Token counts of a prepared data folder's splits (`<s>` and `</s>` included, after
truncation), against real tweets' (mean 31.8, median 32, 90th percentile 46, 99th 59 under an
8k byte-level BPE; xtask/src/synth.rs): what `docs/BENCHMARKS.md` reports for the bundled
sample. Needs pyarrow.

    cargo xtask pipeline        # or: cargo xtask tokenize --prepared runs/pipeline/data
    python xtask/bench/sample_lengths.py runs/pipeline/data
"""

import statistics
import sys

import pyarrow.parquet as pq

folder = sys.argv[1]
lengths = []
for split in ["train", "validation", "test"]:
    table = pq.read_table(f"{folder}/{split}.tokens.parquet", columns=["attention_mask"])
    lengths += [sum(mask) for mask in table.column("attention_mask").to_pylist()]
lengths.sort()
quantile = lambda q: lengths[int(q * (len(lengths) - 1))]
width = table.schema.field("attention_mask").type.list_size
print(
    f"rows {len(lengths)}: mean {statistics.mean(lengths):.1f}, median {quantile(0.5)}, "
    f"p90 {quantile(0.9)}, p99 {quantile(0.99)}, max {lengths[-1]}, "
    f"at the limit of {width}: {sum(l == width for l in lengths) / len(lengths):.2%}"
)
