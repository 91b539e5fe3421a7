"""The training knobs of a job, each declared once: its type, bounds, default and meaning. The
native API, the /v1 create body's extras (service/openai_types.py), the OpenAPI document,
`GET /hyperparameters` (which the dashboard's form reads) and the README's table
(`python -m service.contracts.docs`) are all derived from these classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

LORA_MODULE_PATTERN = r"^[A-Za-z0-9_.]{1,64}$"
LoraModule = Annotated[str, Meta(pattern=LORA_MODULE_PATTERN)]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


Auto = Literal["auto"]


def _about(text: str) -> Meta:
    return Meta(description=text)


class Hyperparameters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Every training knob, declared once: its type, bounds, default and meaning. The /v1 create
    body's extras, the OpenAPI document, `GET /hyperparameters` (which the dashboard's form reads)
    and the README's table are all derived from this class (tests/unit/test_hyperparameter_docs.py).
    A field the child uses must also be read where it trains (service/training/recipe.py)."""

    # "auto": resolved from the training set's size when its validation ends, and recorded on
    # the job in place of "auto" (service/jobs/service.py, resolve_auto; README).
    n_epochs: Annotated[Annotated[int, Meta(ge=1, le=50)] | Auto, _about(
        "passes over the training set; \"auto\": from its size, once it is validated")] = 3
    learning_rate: Annotated[float, Meta(gt=0, le=1), _about("the peak learning rate (AdamW)")] = 2e-4
    batch_size: Annotated[Annotated[int, Meta(ge=1, le=1024)] | Auto, _about(
        "examples per optimizer step, whatever the packing; \"auto\": from the training set's size")] = 8
    micro_batch_size: Annotated[Annotated[int, Meta(ge=1, le=1024)] | None, _about(
        "examples per forward pass (must divide batch_size); null: the memory plan picks it")] = None
    max_seq_length: Annotated[int, Meta(ge=16, le=131072), _about(
        "the longest example in tokens; longer ones follow overlong_examples")] = 2048
    lora_r: Annotated[int, Meta(ge=1, le=256), _about(
        "LoRA rank (served adapters: up to the server's max_lora_rank, GET /serving)")] = 16
    lora_alpha: Annotated[int, Meta(ge=1, le=1024), _about("LoRA scaling: the update is alpha / r times")] = 16
    lora_dropout: Annotated[float, Meta(ge=0, lt=1), _about("dropout on the LoRA path")] = 0.0
    # Sequence, not tuple[str, ...]: Litestar 2 documents a variadic tuple's items as `oneOf [string, {}]`.
    target_modules: Annotated[Sequence[LoraModule], Meta(min_length=1, max_length=32), _about(
        "the modules that get adapters; default: every linear projection")] = ALL_LINEAR
    load_in_4bit: Annotated[bool, _about("QLoRA: the base model's weights in 4 bits")] = True
    warmup_ratio: Annotated[float, Meta(ge=0, le=1), _about(
        "share of the steps over which the learning rate ramps up")] = 0.03
    weight_decay: Annotated[float, Meta(ge=0, le=1), _about("AdamW's weight decay")] = 0.01
    max_grad_norm: Annotated[float, Meta(gt=0, le=1000), _about(
        "gradients are clipped to this norm at each optimizer step")] = 1.0
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1), _about(
        "seeds the shuffling, the validation split and the adapter's initial weights")] = 3407
    train_on_inputs: Annotated[bool, _about(
        "train on the prompts too, not only on the answers")] = False
    early_stopping_patience: Annotated[Annotated[int, Meta(ge=1, le=50)] | None, _about(
        "stop once validation loss has not improved for this many epochs, keeping the best "
        "epoch's adapter; null: never")] = None
    # Resume points are for resuming only; servable checkpoints stay one per epoch.
    checkpoint_interval_steps: Annotated[Annotated[int, Meta(ge=1, le=1_000_000)] | None, _about(
        "a mid-epoch resume point every N optimizer steps, so a crash loses at most N steps; "
        "null: at epoch ends only")] = None
    overlong_examples: Annotated[Literal["truncate", "drop"], _about(
        "examples longer than max_seq_length: cut to it (the end is lost) or left out")] = "truncate"
    # How examples of different lengths share a micro-batch (README: Packing). Each optimizer
    # step still takes batch_size examples in every mode; only the padding differs.
    #   padding_free    the micro-batch's examples end to end in one row, attention kept within
    #                   each example (positions restart); no padding at all
    #   length_grouped  padded rows, but each micro-batch drawn from examples of similar length
    #   off             padded to the longest example of a randomly drawn micro-batch
    #   auto            the mode bench/mixed_lengths.py measured fastest (length_grouped)
    packing: Annotated[Literal["auto", "padding_free", "length_grouped", "off"], _about(
        "how examples of different lengths share a micro-batch (README: Packing)")] = "auto"
    # Gradient checkpointing recomputes each layer in the backward pass instead of keeping its
    # activations: far less memory, slower steps. "auto": off when the memory plan says the
    # kept activations fit the GPU's free memory (README: Gradient checkpointing), on otherwise; the CPU
    # never checkpoints. "off" may lower the micro-batch (accumulation makes up batch_size).
    gradient_checkpointing: Annotated[Literal["auto", "on", "off"], _about(
        "recompute activations in the backward pass: \"auto\" when the memory plan needs it")] = "auto"
    eval_prompts: Annotated[Sequence[Annotated[str, Meta(min_length=1, max_length=4000)]],
                            Meta(max_length=16), _about(
        "prompts each epoch's adapter answers greedily before its checkpoint is recorded")] = ()
    eval_samples: Annotated[int, Meta(ge=0, le=16), _about(
        "without eval_prompts: the prompts of the first N validation examples")] = 0


class DpoHyperparameters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # How far the adapter may move from the reference (the base, adapter disabled): higher keeps
    # it closer. TRL's and OpenAI's default.
    beta: Annotated[float, Meta(gt=0, le=10)] = 0.1


class Dpo(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    hyperparameters: DpoHyperparameters = DpoHyperparameters()


class Method(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What the job trains: supervised fine-tuning on examples, or DPO on preference pairs
    (README: Preference tuning). The other hyperparameters apply to both."""

    type: Literal["supervised", "dpo"] = "supervised"
    dpo: Dpo | None = None  # only with type "dpo"; its defaults when left out

    @property
    def beta(self) -> float:
        return (self.dpo or Dpo()).hyperparameters.beta
