"""The serving side's adapter checks: fetching while vLLM's resolver fetches the same one into the
same folder, refusing weights vLLM would not apply, and comparing the served adapter with the
trained one (serving/check.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from service.contracts.adapter_check import AdapterCheck, CheckSequence
from service.shapes import Shape
from service.storage.local import LocalStore
from serving import adapters, check

BASE = Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=4, vocab=100, tied=True)


FILES = ("adapter_config.json", "adapter_model.safetensors")


def put_adapter(store: LocalStore, prefix: str, tmp: Path, rank: int = 4) -> None:
    tensors = {}
    for layer in range(BASE.layers):
        for proj, (fan_in, fan_out) in BASE.linears().items():
            stem = f"base_model.model.model.layers.{layer}.x.{proj}"
            tensors[f"{stem}.lora_A.weight"] = torch.zeros(rank, fan_in)
            tensors[f"{stem}.lora_B.weight"] = torch.zeros(fan_out, rank)
    save_file(tensors, tmp / "adapter_model.safetensors")
    (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    for name in FILES:
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
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".fetch-")]


@pytest.mark.parametrize(("change", "words"), [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
    ("lm_head tensor", "lm_head"),
])
def test_weights_vllm_does_not_apply_are_refused_before_loading(tmp_path: Path, change: object,
                                                                 words: str) -> None:
    store = LocalStore(tmp_path / "s3")
    src = tmp_path / "src"
    src.mkdir()
    put_adapter(store, "jobs/j/adapter", src)
    adapters.verify(src, BASE, 16)  # the plain adapter passes
    if isinstance(change, dict):
        config = json.loads((src / "adapter_config.json").read_text())
        (src / "adapter_config.json").write_text(json.dumps({**config, **change}))
    else:
        save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64),
                   "base_model.model.lm_head.lora_B.weight": torch.zeros(100, 4)},
                  src / "adapter_model.safetensors")
    with pytest.raises(adapters.AdapterError, match=words) as refused:
        adapters.verify(src, BASE, 16)
    assert "vLLM" in str(refused.value)


RECORD = AdapterCheck(quantized=False, sequences=[
    CheckSequence(label="Say the code word.", ids=[1, 2, 3, 4], logprobs=[-0.01, -0.5, -9.0]),
    CheckSequence(label="training example 1", ids=[5, 6, 7], logprobs=[-0.2, -0.05]),
])


def test_the_served_adapter_passes_within_the_tolerance() -> None:
    # bf16 against fp32: close where the model is sure, far apart only where it is not.
    served = [[(-0.02, "A"), (-0.6, "B"), (-6.0, "C")], [(-0.25, "x"), (-0.04, "y")]]
    outcome = check.compare(RECORD, served, tolerance=0.2)
    assert outcome.tokens == 5
    assert 0.04 < outcome.worst < 0.07  # exp(-0.5) - exp(-0.6)


def test_an_adapter_served_unlike_the_trained_one_is_caught_with_where() -> None:
    # the code word was sure after training (p = 0.99) and is not under the served adapter
    served = [[(-4.6, " PELICAN"), (-0.5, "B"), (-9.0, "C")], [(-0.2, "x"), (-0.05, "y")]]
    with pytest.raises(check.CheckFailed) as failed:
        check.compare(RECORD, served, tolerance=0.2)
    message = str(failed.value)
    assert "'Say the code word.'" in message and "token 1 ' PELICAN'" in message
    assert "trained p=0.990, served p=0.010" in message and "tolerance 0.2" in message


def test_a_record_with_nothing_to_compare_fails() -> None:
    with pytest.raises(check.CheckFailed, match="no tokens"):
        check.compare(AdapterCheck(quantized=False, sequences=[]), [], tolerance=0.2)


def test_a_scoring_answer_of_another_shape_is_a_runtime_error_the_deployer_reports() -> None:
    """The deployer's loop survives RuntimeError (a failed deployment); anything else would end
    its task and leave every later deployment `pending` for good."""
    from serving.vllm import served_logprobs

    ids = [5, 6, 7]
    good = {"choices": [{"prompt_logprobs": [None, {"6": {"logprob": -0.1, "decoded_token": "a"}},
                                             {"7": {"logprob": -2.0, "decoded_token": "b"}}]}]}
    assert served_logprobs(ids, good) == [(-0.1, "a"), (-2.0, "b")]
    for body in ({"choices": [{"text": "x"}]}, {"choices": []}, {"error": "x"},
                 {"choices": [{"prompt_logprobs": [None, {"9": {"logprob": -0.1}}, None]}]},
                 {"choices": [{"prompt_logprobs": [None]}]}):
        with pytest.raises(RuntimeError, match="prompt_logprobs"):
            served_logprobs(ids, body)


def test_no_record_is_written_when_there_is_nothing_to_check(tmp_path: Path) -> None:
    """An empty record would fail every deployment of the adapter ("nothing to compare"); with no
    record the deployment loads and says it was not checked."""
    from service.training.samples import CheckRecorder

    CheckRecorder(None, [("training example 1", [7])], "transformers", quantized=False).write(
        torch.nn.Module(), tmp_path)
    assert not (tmp_path / "tunedock_check.json").exists()
