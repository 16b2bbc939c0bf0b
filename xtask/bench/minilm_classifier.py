"""By hand (docs/model.md, "Parity"): a pretrained BERT folder (MiniLM) as transformers'
classifier, saved, and its logits on four tweets; compare with ours:

    /tmp/venv/bin/python xtask/bench/minilm_classifier.py /tmp/minilm/model /tmp/minilm/classifier > ref.json
    cargo xtask predict --model /tmp/minilm/classifier --json TEXTS… (the four texts below)

The head is drawn from N(0, 1) rather than N(0, 0.02), so the logits (about 1, not 0.03)
show the encoder.
"""

import json
import sys

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

src, dst = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = BertForSequenceClassification.from_pretrained(src, num_labels=2).eval()
with torch.no_grad():
    model.classifier.weight.normal_(0, 1.0)
    model.classifier.bias.normal_(0, 1.0)
tokenizer = AutoTokenizer.from_pretrained(src)
model.save_pretrained(dst)
tokenizer.save_pretrained(dst)
texts = ["@JohnDoe I LOVE this!!! 😍 http://t.co/abc #happy", "worst day EVER :(", "Café résumé naïve", "ok"]
with torch.no_grad():
    batch = tokenizer(texts, max_length=64, truncation=True, padding=True, return_tensors="pt")
    print(json.dumps({"texts": texts, "logits": model(**batch).logits.tolist()}))
