"""Reads a run's TensorBoard event files with TensorBoard's own reader and prints what it sees:
the check behind docs/train.md's "TensorBoard" paragraph. Needs `pip install tensorboard`:

    python xtask/bench/tensorboard_check.py RUN/tb
"""

import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
tags = acc.Tags()["scalars"]
print("tags:", sorted(tags))
for tag in ["train/loss", "eval/f1"]:
    events = acc.Scalars(tag)
    print(tag, len(events), "first", (events[0].step, round(events[0].value, 4)), "last", (events[-1].step, round(events[-1].value, 4)))
