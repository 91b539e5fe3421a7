"""The training knobs of a job, each declared once: its type, bounds, default and meaning. The
native API, the /v1 create body's extras (service/openai_types.py), the OpenAPI document,
`GET /hyperparameters` (which the dashboard's form reads) and the README's table
(`python -m service.contracts.docs`) are all derived from these classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from service.contracts.graders import Grader

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


class ReinforcementHyperparameters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """GRPO's knobs (README: Reinforcement fine-tuning). A step takes batch_size prompts and
    samples `group_size` completions of each; the grader scores every completion and each one's
    advantage is its reward against its group's mean."""

    group_size: Annotated[int, Meta(ge=2, le=64), _about(
        "completions sampled per prompt; rewards are compared within a prompt's group")] = 4
    max_completion_tokens: Annotated[int, Meta(ge=1, le=8192), _about(
        "the longest completion sampled, in tokens (longer ones are cut and count as truncated)")] = 256
    temperature: Annotated[float, Meta(gt=0, le=2), _about("sampling temperature of the rollouts")] = 1.0
    beta: Annotated[float, Meta(ge=0, le=10), _about(
        "KL penalty toward the base model (the adapter switched off, also when continuing a "
        "fine-tuned model); 0: none, and no reference pass")] = 0.04
    # OpenAI's: "multiplier on amount of compute used for exploring search space". Here the
    # exploration is the group: group_size x compute_multiplier completions per prompt.
    compute_multiplier: Annotated[float, Meta(gt=0, le=10), _about(
        "scales the completions per prompt: round(group_size x compute_multiplier), at least 2")] = 1.0
    eval_samples: Annotated[Annotated[int, Meta(ge=1, le=64)] | None, _about(
        "validation prompts the grader scores before training and after every epoch; null: up to 16")] = None
    eval_interval: Annotated[Annotated[int, Meta(ge=1)] | None, _about(
        "the graded evaluation also every N steps (an `eval` event); null: at epoch ends only")] = None
    # Accepted and recorded as OpenAI's API takes it.
    reasoning_effort: Annotated[Literal["default", "low", "medium", "high"], _about(
        "recorded; the models trained here do not reason separately from their answer")] = "default"

    @property
    def completions_per_prompt(self) -> int:
        return max(2, round(self.group_size * self.compute_multiplier))


class Reinforcement(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    grader: Annotated[Grader, Meta(description="scores every sampled completion: the reward "
                                               "(OpenAI's graders except score_model)")]
    hyperparameters: ReinforcementHyperparameters = ReinforcementHyperparameters()


class Method(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What the job trains: supervised fine-tuning on examples, DPO on preference pairs, or
    reinforcement fine-tuning (GRPO) of prompts against a grader (README: Preference tuning,
    Reinforcement fine-tuning). The other hyperparameters apply to all three."""

    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    dpo: Dpo | None = None  # only with type "dpo"; its defaults when left out
    reinforcement: Reinforcement | None = None  # required with type "reinforcement"

    @property
    def beta(self) -> float:
        return (self.dpo or Dpo()).hyperparameters.beta

    @property
    def rollouts(self) -> int:
        """Sequences trained per example: a reinforcement job's completions per prompt, else 1."""
        if self.type != "reinforcement" or self.reinforcement is None:
            return 1
        return self.reinforcement.hyperparameters.completions_per_prompt
