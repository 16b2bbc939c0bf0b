"""The Trainer's side of `xtask/bench/finetune.sh` and `cargo xtask bench train`: fine-tunes a
pretrained folder on the split that `cargo xtask prepare` wrote, as the notebook does (the
Trainer's defaults: learning rate 5e-5, batch 32, 3 epochs, no weight decay or warmup;
evaluation every epoch, the best by validation F1 kept), on 2 CPU threads; prints one JSON
line: test F1 and accuracy, validation F1 per epoch, training samples/s.

    python finetune_trainer.py DATA_DIR MODEL_DIR SEED WORK_DIR [--mode M] [--epochs N]
        [--learning-rate R] [--threads T]

--mode: `dynamic-ungrouped` (the default: padded per batch, no length grouping, as
finetune.sh compares), `notebook` (every row padded to 64, shuffled) or `dynamic` (the
Trainer's `group_by_length=True`, `train_sampling_strategy="group_by_length"` in transformers 5, with padding to a multiple of 8).
"""

import argparse
import json

import pyarrow.parquet as pq
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)


class Rows(torch.utils.data.Dataset):
    def __init__(self, path, tokenizer, padding):
        table = pq.read_table(path).to_pydict()
        self.labels = table["label"]
        self.encodings = tokenizer(table["text"], max_length=64, truncation=True, padding=padding)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.encodings.items() if k != "token_type_ids"}
        item["labels"] = self.labels[i]
        return item


def metrics(prediction):
    predicted = prediction.predictions.argmax(-1)
    labels = prediction.label_ids
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "accuracy": float((predicted == labels).mean())}


def main():
    parser = argparse.ArgumentParser()
    for name in ("data", "model_dir", "seed", "work"):
        parser.add_argument(name)
    parser.add_argument("--mode", default="dynamic-ungrouped", choices=["dynamic-ungrouped", "notebook", "dynamic"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    data, model_dir, seed, work = a.data, a.model_dir, int(a.seed), a.work
    torch.set_num_threads(a.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    padding = "max_length" if a.mode == "notebook" else False
    train, validation, test = (Rows(f"{data}/{s}.parquet", tokenizer, padding) for s in ("train", "validation", "test"))
    args = TrainingArguments(
        output_dir=work,
        learning_rate=a.learning_rate,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        num_train_epochs=a.epochs,
        # transformers 5 names `group_by_length=True` this way.
        train_sampling_strategy="group_by_length" if a.mode == "dynamic" else "random",
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        save_total_limit=2,
        seed=seed,
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if a.mode == "dynamic" else None),
        compute_metrics=metrics,
    )
    result = trainer.train()
    validation_f1 = [e["eval_f1"] for e in trainer.state.log_history if "eval_f1" in e]
    tested = trainer.evaluate(test, metric_key_prefix="test")
    print(json.dumps({
        "side": "transformers Trainer",
        "seed": seed,
        "test_f1": tested["test_f1"],
        "test_accuracy": tested["test_accuracy"],
        "validation_f1": validation_f1,
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "train_seconds": result.metrics["train_runtime"],
        "eval_seconds": sum(e["eval_runtime"] for e in trainer.state.log_history if "eval_runtime" in e),
    }))


if __name__ == "__main__":
    main()
