"""Save a Llama of realistic shape with random weights (no weights can reach the GPU machine).

    python bench/make_llama.py OUT_DIR --shape 1b --tokenizer TOKENIZER_DIR
Shapes follow Llama 3.2 1B / 3B and Llama 3.1 8B, with the vocabulary of the given tokenizer.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--tokenizer", required=True)
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, rope_theta=500000.0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         torch_dtype="bfloat16", **SHAPES[args.shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    for extra in Path(args.tokenizer).glob("*.jinja"):
        shutil.copy(extra, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {args.shape} Llama with {n / 1e9:.2f}B parameters to {args.out}")


if __name__ == "__main__":
    main()
