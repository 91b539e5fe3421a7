"""What a job's data and its parent decide about it, as pure functions: which file is invalid,
the dataset summary with its warnings, "auto" n_epochs and batch_size resolved from the data
(OpenAI's documented rule), and a continued adapter's LoRA shape taken from its parent."""

from __future__ import annotations

import math

import msgspec

from service.contracts import schema as s
from service.datasets.validate import Report, split_sizes, validation_overlap
from service.errors import Unprocessable


def first_invalid(train: Report, val: Report | None) -> tuple[str, Report] | None:
    for name, report in (("training_file", train), ("validation_file", val)):
        if report is not None and not report.ok:
            return name, report
    return None


def summarize(train: Report, val: Report | None, hp: s.Hyperparameters) -> s.DatasetSummary:
    """What validation found, with the warnings a user should read before training."""
    n_train, n_val, source = split_sizes(train.n_examples, val.n_examples if val else None)
    assert train.digests is not None
    overlap = validation_overlap(train.digests, val.digests if val else None, hp.seed)
    warnings = list(train.warnings)
    if hp.eval_samples and not hp.eval_prompts and n_val == 0:
        warnings.append(f"eval_samples is {hp.eval_samples} but there are no validation "
                        "examples to take prompts from (under 50 examples and no "
                        "validation_file); give eval_prompts or a validation_file")
    if overlap:
        warnings.append(f"{overlap} validation examples also appear in the training data; "
                        "their validation loss will look better than it is")
    return s.DatasetSummary(
        format=train.format or "", n_examples=train.n_examples, n_train=n_train,
        n_validation=n_val, validation_source=source,
        tokens=train.tokens, tokens_estimated=train.tokens_estimated,
        supervised_tokens=train.supervised_tokens, context_tokens=train.context_tokens,
        n_blank_lines=train.n_blank_lines, n_overlong=train.n_overlong,
        overlong_policy=hp.overlong_examples,
        n_duplicates=train.n_duplicates, n_validation_in_train=overlap,
        lengths=train.lengths, warnings=warnings,
    )


# OpenAI's documented defaults for "auto": about 3 epochs, more for a small set and fewer for a
# large one so that epochs x examples stays within [100, 25,000], between 1 and 25 epochs; a batch
# of about 0.2% of the examples (here the nearest power of two), at most 256.
AUTO_TARGET_EPOCHS, AUTO_MIN_EXAMPLES, AUTO_MAX_EXAMPLES = 3, 100, 25_000
AUTO_MAX_EPOCHS, AUTO_MAX_BATCH = 25, 256


def resolve_auto(hp: s.Hyperparameters, n_train: int, gpus: int | str = 1,
                 rollouts: int = 1) -> s.Hyperparameters:
    """`hp` with "auto" n_epochs and batch_size replaced by the rule above (a batch that several
    GPUs share equally, in whole micro-batches, when the job asks for a count of them; for a
    reinforcement job, its `rollouts` completions per prompt counted)."""
    changes: dict[str, int] = {}
    if hp.n_epochs == "auto":
        epochs = AUTO_TARGET_EPOCHS
        if n_train * epochs < AUTO_MIN_EXAMPLES:
            epochs = min(AUTO_MAX_EPOCHS, AUTO_MIN_EXAMPLES // max(1, n_train))
        elif n_train * epochs > AUTO_MAX_EXAMPLES:
            epochs = max(1, AUTO_MAX_EXAMPLES // n_train)
        changes["n_epochs"] = epochs
    if hp.batch_size == "auto":
        target = max(1.0, 0.002 * n_train)
        batch = min(AUTO_MAX_BATCH, 2 ** round(math.log2(target)))
        # Whole micro-batches per step and per GPU, as check() requires of a set size.
        step = (hp.micro_batch_size or 1) * (gpus if isinstance(gpus, int) else 1)
        step //= math.gcd(step, rollouts)  # each prompt brings `rollouts` sequences
        batch = -(-batch // step) * step
        changes["batch_size"] = batch
    return msgspec.structs.replace(hp, **changes) if changes else hp


LORA_SHAPE = ("lora_r", "lora_alpha", "target_modules")


def inherit_lora_shape(hp: s.Hyperparameters, parent: s.Hyperparameters) -> s.Hyperparameters:
    """A continued adapter keeps its parent's rank, alpha and target modules: its weights are
    the parent's. A value left at its default is taken from the parent; any other that differs
    is refused (raising it silently would train something other than what was asked)."""
    defaults, changes = s.Hyperparameters(), {}
    for name in LORA_SHAPE:
        mine, theirs = getattr(hp, name), getattr(parent, name)
        if name == "target_modules":
            mine, theirs = tuple(mine), tuple(theirs)
        if mine == theirs:
            continue
        default = getattr(defaults, name)
        if mine != (tuple(default) if name == "target_modules" else default):
            raise Unprocessable(
                f"hyperparameters.{name} is {mine!r} but the adapter being continued has {theirs!r}; "
                f"a continued adapter keeps its shape, so leave {name} out", param=f"hyperparameters.{name}")
        changes[name] = theirs
    return msgspec.structs.replace(hp, **changes) if changes else hp
