"""A tiny Llama with random weights and the test model's tokenizer: a job on it trains in seconds,
for tests whose behaviour does not need a model that knows anything (chaos, fencing, resume)."""

from __future__ import annotations

from pathlib import Path


def build(dest: Path, tokenizer_dir: Path) -> Path:
    if (dest / "config.json").is_file():
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    part = dest.with_name(dest.name + ".part")
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(part)
    tokenizer.save_pretrained(part)
    part.rename(dest)
    return dest
