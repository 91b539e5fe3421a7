"""Fetch an adapter from S3 into the folder vLLM reads, atomically, and check it first: only
safetensors weights, a LoRA config, a rank vLLM accepts, and tensor shapes that fit the base model."""

from __future__ import annotations

import errno
import json
import re
import shutil
import struct
import tempfile
from pathlib import Path

from service.shapes import Shape
from service.storage import ObjectStore

# The check record (service/contracts/adapter_check.py) comes along when the adapter has one.
WANTED = ("adapter_config.json", "adapter_model.safetensors", "tunedock_check.json")
# Weights vLLM's LoRA path does not apply (vLLM #9280): an adapter with them would be served
# without them, silently answering unlike the trained model. Refused before loading.
_UNSERVED = re.compile(r"(lm_head|embed_tokens|wte|wpe|embed_out)\b")
_TENSOR = re.compile(r"layers\.(?P<layer>\d+)\..*?(?P<proj>[a-z_]+_proj)\.lora_(?P<ab>[AB])\.")


class AdapterError(ValueError):
    pass


def location(job_id: str, epoch: int | None) -> tuple[str, str]:
    """(key prefix in the artifact bucket, local folder name), both derived from the job id."""
    if epoch is None:
        return f"jobs/{job_id}/adapter", job_id
    return f"jobs/{job_id}/checkpoints/epoch-{epoch}", f"{job_id}-ckpt-{epoch}"


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 << 20:
            raise AdapterError("adapter_model.safetensors has an implausible header")
        header = json.loads(f.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _targets(config: dict) -> list[str]:
    targets = config.get("target_modules") or []
    return [targets] if isinstance(targets, str) else list(targets)


def verify(folder: Path, base: Shape, max_rank: int) -> None:
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file():
        raise AdapterError("adapter_config.json is missing")
    if not weights.is_file():
        raise AdapterError("adapter_model.safetensors is missing (only safetensors adapters are served)")
    try:
        config = json.loads(config_path.read_text())
        shapes = _safetensors_shapes(weights)
    except (ValueError, OSError, struct.error) as exc:
        raise AdapterError(f"the adapter files are unreadable: {exc}") from None
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"peft_type is {config.get('peft_type')!r}, not LORA")
    if config.get("modules_to_save"):
        raise AdapterError(f"the adapter fully trains {config['modules_to_save']} (modules_to_save), which "
                           "vLLM does not serve: it would answer without them; train without "
                           "modules_to_save")
    unserved = sorted({m[1] for name in shapes if (m := _UNSERVED.search(name))}
                      | {t for t in _targets(config) if _UNSERVED.fullmatch(t)})
    if unserved:
        raise AdapterError(f"the adapter has weights for {', '.join(unserved)}, which vLLM's LoRA does not "
                           "apply: it would answer without them; train only the attention and MLP layers")
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= max_rank:
        raise AdapterError(f"LoRA rank {rank} is outside 1..{max_rank} (vLLM's --max-lora-rank)")
    linears = base.linears()
    for name, shape in shapes.items():
        m = _TENSOR.search(name)
        if m is None:
            continue
        layer, proj = int(m["layer"]), m["proj"]
        if layer >= base.layers or proj not in linears:
            raise AdapterError(f"tensor {name} does not exist in the base model")
        fan_in, fan_out = linears[proj]
        expected = [rank, fan_in] if m["ab"] == "A" else [fan_out, rank]
        if list(shape) != expected:
            raise AdapterError(f"tensor {name} has shape {shape}, the base model needs {expected}: "
                               "the adapter was trained on another base model or rank")


def fetch(objects: ObjectStore, bucket: str, prefix: str, dest: Path, base: Shape,
          max_rank: int) -> Path:
    """Download the adapter files under `prefix/` to `dest` through a temp folder; verify; rename.

    Two fetchers share the adapter folder: the deployer, and vLLM's resolver plugin when a chat
    names the adapter while it is still loading. The one that renames second finds `dest` there
    and keeps it (after verifying it) rather than failing the deployment."""
    if dest.is_dir():
        try:
            verify(dest, base, max_rank)
            return dest
        except AdapterError:
            shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".fetch-"))
    try:
        for name in WANTED:
            key = f"{prefix.rstrip('/')}/{name}"
            if objects.size(bucket, key) is not None:
                objects.download(bucket, key, tmp / name)
        verify(tmp, base, max_rank)
        try:
            tmp.rename(dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            verify(dest, base, max_rank)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
