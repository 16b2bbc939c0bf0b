"""By hand (docs/model.md): a folder our `train` or `pipeline` exported loads in transformers
(AutoModelForSequenceClassification, AutoTokenizer) with the logits `cargo xtask predict
--json` gives, and the same token ids.

    cargo xtask predict --model FOLDER --json "text 1" "text 2" > ours.jsonl
    /tmp/venv/bin/python xtask/bench/check_export.py FOLDER ours.jsonl
"""

import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    folder, ours_path = sys.argv[1], sys.argv[2]
    ours = [json.loads(line) for line in open(ours_path) if line.startswith("{")]
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [o["text"] for o in ours]
    worst = 0.0
    with torch.no_grad():
        for text, o in zip(texts, ours):
            batch = tokenizer([text], max_length=64, truncation=True, return_tensors="pt")
            logits = model(**batch).logits[0].tolist()
            worst = max(worst, max(abs(a - b) for a, b in zip(logits, o["logits"])))
    print(json.dumps({"class": type(model).__name__, "texts": len(texts), "max_abs_logit_difference": worst}))
    assert worst < 1e-4, worst


if __name__ == "__main__":
    main()
