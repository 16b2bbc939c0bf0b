"""The Python reference for `cargo xtask bench model`: inference of a randomly initialised
RobertaForSequenceClassification (transformers, PyTorch eager, fp32) on the CPU with the same
threads as ours. Prints one JSON line. Run by the benchmark, never by tests.
"""

import argparse
import json
import time

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

SHAPES = {
    "small": dict(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--iters", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--train", action="store_true", help="time forward + backward + AdamW steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = RobertaConfig(max_position_embeddings=args.seq + 2, num_labels=2, **SHAPES[args.shape])
    model = RobertaForSequenceClassification(config).eval()
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq))
    ids[:, 0] = 0
    ids[:, -1] = 2
    mask = torch.ones_like(ids)
    if args.train:
        model.train()
        labels = torch.randint(0, 2, (args.batch,))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)

        def step():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            return loss.item()

        step()
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        elapsed = time.perf_counter() - start
        print(json.dumps({"samples_per_s": args.batch * args.iters / elapsed}))
        return
    with torch.inference_mode():
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask)
        start = time.perf_counter()
        for _ in range(args.iters):
            model(input_ids=ids, attention_mask=mask).logits.sum().item()
        elapsed = time.perf_counter() - start
    print(json.dumps({"samples_per_s": args.batch * args.iters / elapsed}))


if __name__ == "__main__":
    main()
