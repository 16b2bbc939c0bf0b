"""The Python reference for `cargo xtask bench model`: inference or training steps of a randomly
initialised RobertaForSequenceClassification (transformers, PyTorch eager) on the CPU with the
same threads as ours, or on a CUDA GPU; fp32, or bf16 / f16 autocast as the Trainer's
`bf16=True` / `fp16=True` do. Prints one JSON line. Run by the benchmark, never by tests.
"""

import contextlib

import argparse
import json
import math
import time

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

SHAPES = {
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    parser.add_argument(
        "--profile", action="store_true", help="after timing, print each training step's kernels (CUDA only)"
    )
    parser.add_argument(
        "--lengths-file",
        help="a JSON list of row lengths (an epoch): --iters batches of it, spread over it, are timed instead of "
        "--iters copies of one full batch",
    )
    parser.add_argument(
        "--padding",
        choices=["fixed", "dynamic"],
        default="dynamic",
        help="with --lengths-file: every batch padded to --seq in a shuffled order (the notebook), or the "
        "Trainer's LengthGroupedSampler with DataCollatorWithPadding(pad_to_multiple_of=8)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = RobertaConfig(max_position_embeddings=args.seq + 2, num_labels=2, **SHAPES[args.shape])
    model = RobertaForSequenceClassification(config).eval().to(device)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq))
    ids[:, 0] = 0
    ids[:, -1] = 2
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (args.batch,)).to(device)
    # (ids, mask, labels) per batch: warm-up batches, then the timed ones, and the timed rows.
    warmup_n = 3 if args.train else 2
    if args.lengths_file:
        with open(args.lengths_file) as f:
            lengths = json.load(f)
        timed = length_batches(lengths, args, config.vocab_size, device)
        warmup, rows = timed[:warmup_n], sum(len(batch[2]) for batch in timed)
    else:
        warmup, timed, rows = [(ids, mask, labels)] * warmup_n, [(ids, mask, labels)] * args.iters, args.batch * args.iters
    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.dtype)
    autocast = (
        torch.autocast(device_type=device.type, dtype=half) if half is not None else contextlib.nullcontext()
    )
    # f16 needs loss scaling; bf16 and f32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "f16")
    if args.train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)

        def step(batch=(ids, mask, labels)):
            batch_ids, batch_mask, batch_labels = batch
            with autocast:
                loss = model(input_ids=batch_ids, attention_mask=batch_mask, labels=batch_labels).loss
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            return loss.item()

        # Warm-up: allocator, cuBLAS handles and kernel selection.
        for batch in warmup:
            step(batch)
        start = time.perf_counter()
        for batch in timed:
            step(batch)
        elapsed = time.perf_counter() - start
        if args.profile:
            profile_steps(step)
        print(json.dumps({"samples_per_s": rows / elapsed}))
        return
    with torch.inference_mode(), autocast:
        for batch_ids, batch_mask, _ in warmup:
            model(input_ids=batch_ids, attention_mask=batch_mask)
        start = time.perf_counter()
        for batch_ids, batch_mask, _ in timed:
            model(input_ids=batch_ids, attention_mask=batch_mask).logits.sum().item()
        elapsed = time.perf_counter() - start
    print(json.dumps({"samples_per_s": rows / elapsed}))


def length_batches(lengths, args, vocab_size, device):
    """Random rows of the given lengths (`<s> … </s>`), batched as the notebook did (a seeded
    shuffle, every batch padded to --seq) or as the Trainer does with `group_by_length=True`
    and `DataCollatorWithPadding(pad_to_multiple_of=8)`: transformers' own sampler and collator."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(0)
    features = []
    for r, length in enumerate(lengths):
        length = max(2, min(length, args.seq))
        row = torch.randint(3, vocab_size, (length,), generator=generator)
        row[0], row[-1] = 0, 2
        features.append({"input_ids": row.tolist(), "attention_mask": [1] * length, "labels": r % 2})
    if args.padding == "dynamic":
        order = list(LengthGroupedSampler(args.batch, lengths=lengths, generator=generator))
        # Only the pad id matters to the collator: RoBERTa's <pad> is 1.
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>"
        )
        collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8, return_tensors="pt")
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        pad = {"input_ids": 1, "attention_mask": 0}

        def collate(batch):
            out = {
                key: torch.tensor([f[key] + [pad[key]] * (args.seq - len(f[key])) for f in batch])
                for key in ("input_ids", "attention_mask")
            }
            out["labels"] = torch.tensor([f["labels"] for f in batch])
            return out

    # Batches of the epoch at the golden ratio's multiples, as the Rust side picks them
    # (xtask/src/bench.rs, `spread`).
    chunks = [order[k : k + args.batch] for k in range(0, len(order), args.batch)]
    count = min(args.iters, len(chunks))
    batches = []
    for k in range(count):
        index = int(math.modf(k * 0.6180339887498949)[0] * len(chunks))
        batch = collate([features[i] for i in chunks[index]])
        batches.append(tuple(batch[key].to(device) for key in ("input_ids", "attention_mask", "labels")))
    return batches


def profile_steps(step, steps: int = 5) -> None:
    """Kernels launched and GPU time per training step, and the kernels taking the most time:
    whether a step is bounded by the GPU's arithmetic or by launching kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.device_time for e in kernels)
    print(f"profile: {len(kernels) / steps:.0f} kernels and {busy_us / steps / 1000:.2f} ms of GPU time per step")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=15))


if __name__ == "__main__":
    main()
