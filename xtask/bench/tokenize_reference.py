"""The Python reference for `cargo xtask bench tokenize`: batch encoding of the same tweets with
the same tokenizer files, truncated and padded to 64, on the same threads (RAYON_NUM_THREADS).

Prints one JSON line of seconds per method. Run by the benchmark, never by tests.
"""

import argparse
import json
import time

from tokenizers import Tokenizer
from transformers import AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    with open(args.texts, encoding="utf-8") as f:
        texts = f.read().split("\n")[:-1]

    result = {"rows": len(texts)}
    tok = Tokenizer.from_file(f"{args.tokenizer}/tokenizer.json")
    tok.enable_truncation(args.max_length)
    tok.enable_padding(length=args.max_length, pad_id=tok.token_to_id("<pad>"), pad_token="<pad>")
    methods = [("tokenizers_encode_batch", tok.encode_batch)]
    if hasattr(tok, "encode_batch_fast"):
        methods.append(("tokenizers_encode_batch_fast", tok.encode_batch_fast))
    for name, encode in methods:
        start = time.perf_counter()
        ids = [e.ids for e in encode(texts)]
        result[name] = time.perf_counter() - start
        assert len(ids) == len(texts)

    hf = AutoTokenizer.from_pretrained(args.tokenizer)
    start = time.perf_counter()
    out = hf(texts, padding="max_length", truncation=True, max_length=args.max_length)
    result["transformers_call"] = time.perf_counter() - start
    assert len(out["input_ids"]) == len(texts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
