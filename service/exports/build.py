"""One export, in the child `python -m service.exports SPEC.json`: a job's adapter
merged into its 16-bit base, then (GGUF formats) converted with llama.cpp's converter and
quantized with llama.cpp's kernels, each step checked before anything is stored.

    fetch the adapter -> merge (fp32) -> save 16-bit safetensors -> check merged vs base+adapter
    merged_16bit: tar the folder | gguf_*: convert -> (quantize) -> check tokens, eos, Modelfile
    -> upload to exports/{id}/ -> ExportDone

The base is loaded in float32, never 4-bit, even for a QLoRA job: merging into a quantized base
is the silent quality loss this path exists to avoid. Saved weights take the base's own 16-bit
dtype (config.json's); the checks run on exactly the saved weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from service.contracts import messages as m
from service.contracts.messages import Emitter
from service.contracts.schema import ExportChecks, ExportFormat
from service.exports import ExportError

# Chats every export is checked on, after the job's own eval prompts (_check_prompts in all).
CHECK_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
                 "Explain what a LoRA adapter is in one sentence.", "List three prime numbers.")
CHECK_TOKENS = 16
MAX_LOGIT_DIFF = 1e-2  # merged vs base + adapter (float32), unless 16-bit compute differs more
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
               "merges.txt", "added_tokens.json")


def run(spec: m.ExportSpec, objects: Any, emit: Emitter) -> None:
    from service.storage import download_prefix

    work = Path(spec.work_dir)
    shutil.rmtree(work, ignore_errors=True)  # an earlier attempt's leftovers
    work.mkdir(parents=True)
    emit.emit(m.ExportStage(stage="fetching"))
    adapter = work / "adapter"
    if download_prefix(objects, spec.adapter.bucket, spec.adapter.key, adapter) == 0:
        raise ExportError("adapter_missing", f"no adapter under s3://{spec.adapter.bucket}/"
                          f"{spec.adapter.key}/")
    emit.emit(m.ExportStage(stage="merging"))
    merged = work / "merged"
    checks = merge_16bit(spec.base_model_source, adapter, merged,
                         [*spec.check_prompts, *CHECK_PROMPTS][:_check_prompts()])
    stem = _file_stem(spec.model)
    modelfile = None
    if spec.format is ExportFormat.merged_16bit:
        out = work / f"{stem}.tar"
        with tarfile.open(out, "w") as tar:  # safetensors barely compress; a plain tar streams
            tar.add(merged, arcname=stem)
    else:
        from service.exports import gguf

        out = work / f"{stem}.{spec.format.value.removeprefix('gguf_')}.gguf"
        gguf_checks, modelfile = gguf.export(merged, spec.format, out, spec.model, emit)
        checks = _with(checks, gguf_checks)
    emit.emit(m.ExportStage(stage="uploading"))
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    key = f"{spec.output_prefix}/{out.name}"
    objects.put_file(spec.artifact_bucket, key, out)
    emit.emit(m.ExportDone(bucket=spec.artifact_bucket, key=key, filename=out.name,
                           bytes=out.stat().st_size, sha256=digest.hexdigest(), checks=checks,
                           modelfile=modelfile))
    shutil.rmtree(work, ignore_errors=True)


def _check_prompts() -> int:
    """How many prompts the merge is checked on: 8 on a GPU, 4 on the CPU (seconds each there)."""
    import torch

    return 8 if torch.cuda.is_available() else 4


def _with(a: ExportChecks, b: ExportChecks) -> ExportChecks:
    import msgspec

    return msgspec.convert({**msgspec.to_builtins(a), **msgspec.to_builtins(b)}, ExportChecks)


def _file_stem(model: str) -> str:
    """ft:smollm2:codeword:ftjob-… -> smollm2-codeword-ftjob-… (a name every OS accepts)."""
    keep = [c if c.isalnum() or c in "-_." else "-" for c in model.removeprefix("ft:")]
    return "".join(keep).strip("-")[:120]


def saved_dtype(base_source: str) -> Any:
    """The base's own 16-bit dtype (its config.json), bfloat16 when it names none or a 32-bit one."""
    import torch

    path = Path(base_source) / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
    else:  # a hub id
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(base_source).to_dict()
    name = str(config.get("dtype") or config.get("torch_dtype") or "")
    return torch.float16 if name.removeprefix("torch.") == "float16" else torch.bfloat16


def merge_16bit(base_source: str, adapter_dir: Path, out: Path,
                prompts: list[str]) -> ExportChecks:
    """Merge the adapter into the base (float32), save it in the base's 16-bit dtype with the
    tokenizer, chat template and generation config, and check the saved weights against
    base + adapter (float32): the same greedy choice at every position of `prompts`' answers
    (or a near tie), and logits no further off than base + adapter computed in that 16-bit
    dtype are (what a LoRA-serving runtime computes). 16 bits cannot hold W + BA exactly: rounding it moves logits
    by about as much as 16-bit compute does; a wrong merge (scaling, modules, a 4-bit base)
    moves them far more."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_source)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = saved_dtype(base_source)
    tokenizer = AutoTokenizer.from_pretrained(base_source)
    sequences = [_chat_ids(tokenizer, p) for p in prompts]
    model = AutoModelForCausalLM.from_pretrained(base_source, dtype=torch.float32).to(device)
    peft = PeftModel.from_pretrained(model, str(adapter_dir))
    peft.eval()
    reference = [_greedy(peft, ids, device) for ids in sequences]
    merged = peft.merge_and_unload().to(dtype)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name in SMALL_FILES:  # what save_pretrained does not write (or writes differently)
        if (base_dir / name).is_file() and not (out / name).is_file():
            shutil.copy(base_dir / name, out / name)
    if (base_dir / "generation_config.json").is_file():
        shutil.copy(base_dir / "generation_config.json", out / "generation_config.json")
    # The saved 16-bit weights, computed in float32 like the reference.
    worst, same, ties = _compare(merged.to(torch.float32), sequences, reference, device)
    del merged, peft, model
    served = AutoModelForCausalLM.from_pretrained(base_source, dtype=dtype).to(device)
    served = PeftModel.from_pretrained(served, str(adapter_dir), autocast_adapter_dtype=False)
    served.eval()
    floor, _, _ = _compare(served, sequences, reference, device)
    del served
    if cuda:
        torch.cuda.empty_cache()
    allowed = max(MAX_LOGIT_DIFF, floor)
    if worst > allowed or not ties:
        raise ExportError("export_check_failed",
                          f"the merged model differs from base + adapter: largest logit difference "
                          f"{worst:.3g} (base + adapter in {str(dtype).removeprefix('torch.')} "
                          f"differs by {floor:.3g}); greedy choices that are not near ties differ: "
                          f"{not ties}")
    return ExportChecks(merged_max_logit_diff=round(worst, 6), merged_same_greedy=same,
                        served_16bit_max_logit_diff=round(floor, 6))


def _compare(model: Any, sequences: list[list[int]], reference: list[tuple[list[int], Any]],
             device: str) -> tuple[float, bool, bool]:
    """(largest logit difference from the reference, the same greedy choice at every position,
    every different choice a near tie): where the reference's top two are closer than twice the
    largest difference, rounding alone can swap them; a real fault swaps clear winners."""
    import torch

    worst, same, ties = 0.0, True, True
    found = []
    for ids, (ref_tokens, ref_logits) in zip(sequences, reference):
        with torch.no_grad():
            logits = model(torch.tensor([ids + ref_tokens], device=device)).logits[0, len(ids) - 1:-1]
        logits = logits.float()
        worst = max(worst, (logits - ref_logits).abs().max().item())
        found.append((ref_logits, logits.argmax(-1)))
    for ref_logits, chosen in found:
        best = ref_logits.max(-1).values
        picked = ref_logits.gather(-1, chosen[:, None])[:, 0]
        differs = chosen != ref_logits.argmax(-1)
        same = same and not bool(differs.any())
        ties = ties and bool(((best - picked)[differs] <= 2 * worst).all())
    return worst, same, ties


def _chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _greedy(model: Any, ids: list[int], device: str) -> tuple[list[int], Any]:
    """CHECK_TOKENS tokens after `ids` (greedy; no stop at end of sequence, so both sides are
    compared on the same positions) and the logits at each of those positions."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids], device=device), do_sample=False,
                             max_new_tokens=CHECK_TOKENS, min_new_tokens=CHECK_TOKENS,
                             pad_token_id=0)
        full = out[0].tolist()
        logits = model(out).logits[0, len(ids) - 1:-1].float()
    return full[len(ids):], logits
