"""Model loading behind one small interface: Unsloth on CUDA, transformers + PEFT elsewhere."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from pathlib import Path
from typing import Any

from service.contracts.schema import Hyperparameters

PACKAGES = ("torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes")


class TargetModulesError(ValueError):
    pass


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device_name() -> str:
    """"cpu", or the GPU's name as CUDA reports it (e.g. "NVIDIA H100 80GB HBM3")."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def tune_cuda() -> None:
    """Training-wide CUDA settings, set once before the model loads.

    cuDNN's attention is off: a batch's width changes every step (rows are padded to their
    longest), and cuDNN builds a new execution plan for each new shape, ~1.8 ms of CPU per
    attention call, 48 calls per step for a 16-layer model (forward, recompute, backward). A
    QLoRA step of batch 8 is CPU-bound on an H200, so that was a third of the step: 12.7k real
    tokens/s length-grouped with cuDNN, 20.2k without (bench/step_profile.py). PyTorch's
    memory-efficient and flash kernels need no per-shape plan and peaked at the same memory."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def choose_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    if cuda_available() and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    return "peft"


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def load(backend: str, source: str, hp: Hyperparameters,
         checkpointing: bool = True) -> tuple[Any, Any]:
    """(peft model, tokenizer) ready to train. `checkpointing` is the plan's choice
    (MemoryPlan.gradient_checkpointing); the CPU never checkpoints."""
    if backend == "unsloth":
        import torch
        from unsloth import FastLanguageModel  # imported before trl: Unsloth patches it

        from service.training import ranks

        # One of several ranks: the whole model on this rank's GPU (ranks.init set it).
        placed = {"device_map": {"": torch.cuda.current_device()}} if ranks.world_size() > 1 else {}
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=source, max_seq_length=hp.max_seq_length, load_in_4bit=hp.load_in_4bit,
            dtype=None, local_files_only=Path(source).is_dir(), **placed)
        model = FastLanguageModel.get_peft_model(
            model, r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
            target_modules=list(hp.target_modules), bias="none",
            use_gradient_checkpointing="unsloth" if checkpointing else False, random_state=hp.seed)
        return model, tokenizer
    return _load_peft(source, hp, checkpointing)


def _load_peft(source: str, hp: Hyperparameters, checkpointing: bool) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {}
    if cuda and hp.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    # fp32 on the CPU: about as fast as bf16 for the test model here (1.5 vs 1.3 s/step, 8 x 53
    # tokens), and LoRA updates stay out of bf16 rounding.
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype,
                                                 device_map={"": torch.cuda.current_device()} if cuda else None,
                                                 **kwargs)  # (a rank's GPU: ranks.init set it)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if cuda:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing) \
            if hp.load_in_4bit else model
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in hp.target_modules if m not in present]
    if missing:
        raise TargetModulesError(f"target_modules {missing} are not modules of this model")
    config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                        target_modules=list(hp.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config), tokenizer
