"""Fetching an adapter while vLLM's resolver fetches the same one into the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from serving import adapters
from service.shapes import Shape
from service.storage.local import LocalStore

BASE = Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=4, vocab=100, tied=True)


def put_adapter(store: LocalStore, prefix: str, tmp: Path, rank: int = 4) -> None:
    tensors = {}
    for layer in range(BASE.layers):
        for proj, (fan_in, fan_out) in BASE.linears().items():
            stem = f"base_model.model.model.layers.{layer}.x.{proj}"
            tensors[f"{stem}.lora_A.weight"] = torch.zeros(rank, fan_in)
            tensors[f"{stem}.lora_B.weight"] = torch.zeros(fan_out, rank)
    save_file(tensors, tmp / "adapter_model.safetensors")
    (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    for name in adapters.WANTED:
        store.put_file("artifacts", f"{prefix}/{name}", tmp / name)


def test_a_fetch_that_loses_the_race_keeps_the_winners_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s3")
    src = tmp_path / "src"
    src.mkdir()
    put_adapter(store, "jobs/j/adapter", src)
    dest = tmp_path / "adapters" / "j"

    class RacingStore:
        """The other fetcher finishes between this one's check and its rename."""

        def __init__(self) -> None:
            self.raced = False

        def size(self, bucket: str, key: str) -> int | None:
            return store.size(bucket, key)

        def download(self, bucket: str, key: str, path: Path) -> None:
            if not self.raced:
                self.raced = True
                adapters.fetch(store, "artifacts", "jobs/j/adapter", dest, BASE, 16)
            store.download(bucket, key, path)

    racing = RacingStore()
    assert adapters.fetch(racing, "artifacts", "jobs/j/adapter", dest, BASE, 16) == dest
    assert racing.raced
    assert sorted(p.name for p in dest.iterdir()) == sorted(adapters.WANTED)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".fetch-")]
