"""A bare training script, with no tunedock code: the baseline the runner is measured against.

    python bench/bare_train.py --model DIR --data rows.jsonl --backend unsloth|peft [--packing]
Same hyperparameters as the benchmark job (QLoRA r=16 on all linear layers, batch 8 x 1024, lr 2e-4,
2 epochs). Rows are {"text"} or {"messages"} (rendered with the tokenizer's chat template).
--packing: TRL's own packing (best-fit into rows of --seq tokens, padding-free). Prints one JSON
line: steady tokens/s (median of per-step rates after warm-up), steady real tokens/s (tokens over
time after warm-up: the mean rate), and peak reserved GPU memory. Without CUDA (peft only): fp32
LoRA on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--backend", choices=["unsloth", "peft"], default="unsloth")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true",
                    help="Unsloth without gradient checkpointing (default: its offloaded one)")
    args = ap.parse_args()

    if args.backend == "unsloth":
        from unsloth import FastLanguageModel
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    if args.backend == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(args.model, max_seq_length=args.seq,
                                                       load_in_4bit=True, dtype=None,
                                                       local_files_only=True)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0,
                                                 target_modules=ALL_LINEAR, bias="none",
                                                 use_gradient_checkpointing=False if args.no_checkpointing
                                                 else "unsloth", random_state=3407)
    elif not torch.cuda.is_available():
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(args.model)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0,
                                                 target_modules=ALL_LINEAR, task_type="CAUSAL_LM"))
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16,
                                                     quantization_config=q, device_map={"": 0})
        tok = AutoTokenizer.from_pretrained(args.model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0,
                                                 target_modules=ALL_LINEAR, task_type="CAUSAL_LM"))
    load_s = time.perf_counter() - started
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = [json.loads(line) for line in open(args.data)]
    def text(r: dict) -> str:
        if "messages" in r:
            return tok.apply_chat_template(r["messages"], tokenize=False)
        return r["text"] + tok.eos_token

    encoded = [tok(text(r), add_special_tokens=False, truncation=True,
                   max_length=args.seq)["input_ids"] for r in rows]
    if args.packing:  # TRL tokenizes nothing (input_ids given), packs and collates itself
        ds = Dataset.from_list([{"input_ids": ids} for ids in encoded])
    else:
        ds = Dataset.from_list([{"input_ids": ids, "labels": ids} for ids in encoded])

    def collate(batch):  # noqa: ANN001, ANN202
        n = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), n), tok.pad_token_id)
        labels = torch.full((len(batch), n), -100)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, x in enumerate(batch):
            k = len(x["input_ids"])
            ids[i, :k] = torch.tensor(x["input_ids"])
            labels[i, :k] = torch.tensor(x["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    rates: list[float] = []
    step_times: list[float] = []
    seen_at: list[int] = []

    class Rate(TrainerCallback):
        last = None

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            now, seen = time.perf_counter(), state.num_input_tokens_seen
            if self.last and logs and "loss" in logs:
                rates.append((seen - self.last[1]) / (now - self.last[0]))
                step_times.append(now - self.last[0])
                seen_at.append(seen)
            self.last = (now, seen)

        on_train_begin = on_log

    cuda = torch.cuda.is_available()
    packing = dict(packing=True, padding_free=True, max_length=args.seq) if args.packing else dict(
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
    cfg = SFTConfig(output_dir="/tmp/bare-out", num_train_epochs=args.epochs, max_steps=args.max_steps,
                    per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                    learning_rate=2e-4, warmup_steps=0.03, weight_decay=0.01, lr_scheduler_type="linear",
                    seed=3407, logging_steps=1, save_strategy="no", bf16=cuda, use_cpu=not cuda,
                    gradient_checkpointing=False, remove_unused_columns=False,
                    include_num_input_tokens_seen=True,
                    report_to=[], disable_tqdm=True, **packing)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds,
                         **({} if args.packing else {"data_collator": collate}),
                         processing_class=tok, callbacks=[Rate()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = rates[args.warmup_steps:] or rates
    w = min(args.warmup_steps, len(seen_at) - 2)
    real_rate = (seen_at[-1] - seen_at[w]) / sum(step_times[w + 1:])
    print(json.dumps({"backend": args.backend, "steps": trainer.state.global_step,
                      "steady_tokens_per_s": statistics.median(steady),
                      "median_step_s": statistics.median(step_times[args.warmup_steps:] or step_times),
                      "steady_real_tokens_per_s": real_rate,
                      "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else 0,
                      "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
                      "load_s": load_s}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
