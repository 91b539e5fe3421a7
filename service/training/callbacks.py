"""Trainer callbacks that do the side work: progress events and the per-epoch checkpoint upload."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
from transformers import TrainerCallback

from service.contracts import messages as m
from service.contracts.messages import Emitter
from service.contracts.schema import EvalSample
from service.storage import ObjectStore, upload_dir
from service.training import ranks, stop
from service.training.samples import mean_score


def _gpu_memory() -> int | None:
    import torch

    return torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None


class ProgressCallback(TrainerCallback):
    """A metrics event at every log: loss, learning rate, tokens/s, GPU memory, trained tokens."""

    # Steps after which the rate is steady: the first ones pay compilation and cold caches.
    STEADY_AFTER_STEPS = 3

    def __init__(self, emit: Emitter, tally: Any = None) -> None:
        self.emit = emit
        self.tally = tally  # recipe.Tally: supervised tokens so far (this attempt)
        self._last: tuple[float, int, int] | None = None
        self._steady: tuple[float, int] | None = None  # (time, tokens) once the rate is steady

    def steady_rate(self, tokens: int) -> float | None:
        """Real tokens/s from the steady mark to now (evaluations and saves included), or None
        when training was too short to have one."""
        if self._steady is None or tokens <= self._steady[1]:
            return None
        return (tokens - self._steady[1]) / (time.perf_counter() - self._steady[0])

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        self._last = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)
        self.emit.emit(m.TrainBegin(step=state.global_step))
        self.emit.emit(m.Progress(step=state.global_step, total_steps=state.max_steps,
                                  epoch=state.epoch or 0.0))

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN201, ARG002
        if not logs or "loss" not in logs:
            return
        now, seen, step = time.perf_counter(), state.num_input_tokens_seen, state.global_step
        rate = step_s = None
        if self._last is not None and now > self._last[0] and step > self._last[2]:
            rate = (seen - self._last[1]) / (now - self._last[0])
            step_s = (now - self._last[0]) / (step - self._last[2])
        self._last = (now, seen, step)
        if self._steady is None and step >= self.STEADY_AFTER_STEPS:
            self._steady = (now, seen)
        self.emit.emit(m.Progress(
            step=step, total_steps=state.max_steps, epoch=state.epoch, loss=logs["loss"],
            learning_rate=logs.get("learning_rate"), tokens_per_second=rate, step_seconds=step_s,
            trained_tokens=seen, supervised_tokens=self.tally.supervised if self.tally else None,
            gpu_memory_bytes=_gpu_memory(), rewards=_rewards(logs) or None))


class CheckpointCallback(TrainerCallback):
    """After the Trainer saves an epoch's checkpoint: upload it, then report it (in that order,
    so a recorded checkpoint always points at complete files)."""

    def __init__(self, emit: Emitter, objects: ObjectStore, bucket: str, prefix: str,
                 sampler: Any = None, checker: Any = None, patience: int | None = None,
                 prior_scores: dict[int, float] | None = None) -> None:
        self.sampler = sampler  # samples.Sampler: the epoch's answers to the eval prompts
        self.checker = checker  # samples.CheckRecorder: the serving-contract record, in the folder
        self.emit = emit
        self.objects = objects
        self.bucket = bucket
        self.prefix = prefix
        self.scores: dict[int, float] = dict(prior_scores or {})  # each epoch's mean eval score
        self.patience = patience  # eval.early_stopping_patience: stop when the score stalls
        self.stopped_after: int | None = None

    def on_save(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        epoch = round(state.epoch)
        ranks.barrier()  # every rank's part of the save (its RNG state) is in the folder
        if not ranks.is_main():  # rank 0 uploads and reports; the others follow its stop
            if abs(state.epoch - epoch) <= 1e-6 and ranks.agree(False):
                control.should_training_stop = True
            return control
        if abs(state.epoch - epoch) > 1e-6:  # a mid-epoch save: a resume point, not servable
            key_prefix = f"{self.prefix}/resume/step-{state.global_step}"
            upload_dir(self.objects, self.bucket, key_prefix, folder)
            self.emit.emit(m.ResumePointSaved(step=state.global_step, epoch=state.epoch,
                                              bucket=self.bucket, prefix=key_prefix))
            return
        key_prefix = f"{self.prefix}/checkpoints/epoch-{epoch}"
        samples = self.sampler.answer(kw["model"]) if self.sampler else None
        if self.checker is not None:
            self.checker.write(kw["model"], folder)
        upload_dir(self.objects, self.bucket, key_prefix, folder)
        metrics = _epoch_metrics(state, epoch)
        if (score := mean_score(samples)) is not None:
            metrics["eval_score"] = score
            self.scores[epoch] = score
        self.emit.emit(m.CheckpointSaved(epoch=epoch, step=state.global_step, bucket=self.bucket,
                                         prefix=key_prefix, metrics=metrics, samples=samples))
        # After the upload and the record: the stopped-at epoch is a checkpoint like any other.
        stall = bool(self.patience and self.scores and epoch - best_epoch(self.scores) >= self.patience
                     and state.global_step < state.max_steps)
        if ranks.agree(stall):
            self.stopped_after = epoch
            control.should_training_stop = True
        return control


class IntervalEval(TrainerCallback):
    """The graded eval every `interval` optimizer steps as well as at each epoch's end (OpenAI's
    eval_interval for reinforcement jobs): the adapter as it is, scored on the eval items, as an
    `eval` event. Epoch ends are left to CheckpointCallback, which scores them with the checkpoint."""

    def __init__(self, emit: Emitter, sampler: Any, interval: int) -> None:
        self.emit = emit
        self.sampler = sampler
        self.interval = interval

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        at_epoch_end = abs(state.epoch - round(state.epoch)) <= 1e-6
        if state.global_step % self.interval or at_epoch_end or not ranks.is_main():
            return control
        samples = self.sampler.answer(kw["model"])
        score = mean_score(samples)
        if score is not None:
            self.emit.emit(m.Evaluated(step=state.global_step, epoch=state.epoch, score=score,
                                       samples=[msgspec.convert(a, EvalSample) for a in samples]))
        return control


class ResumePointCallback(TrainerCallback):
    """Every `interval` optimizer steps inside an epoch, ask the Trainer for a save (with optimizer,
    scheduler and RNG state), which CheckpointCallback uploads as a resume point."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        if state.global_step % self.interval == 0:
            control.should_save = True
        return control


# The per-log reward metrics (TRL's names), as the service reports them: DPO's, and GRPO's
# (the grader's mean reward and its spread within the step, the KL to the reference, the sampled
# completions' mean length and the share cut at max_completion_tokens, and how often the
# policy ratio was clipped).
REWARDS = {"rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
           "rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
           "reward": "reward_mean", "reward_std": "reward_std", "kl": "kl",
           "completions/mean_length": "completion_length",
           "completions/clipped_ratio": "truncated_ratio", "clip_ratio/region_mean": "clip_ratio",
           "grader_error_ratio": "grader_error_ratio"}


def _rewards(logs: dict, prefix: str = "") -> dict[str, float]:
    return {name: logs[prefix + key] for key, name in REWARDS.items() if prefix + key in logs}


def _epoch_metrics(state, epoch: int) -> dict[str, float]:  # noqa: ANN001
    """Means of the epoch's training logs (loss; DPO's and GRPO's reward metrics) and the
    epoch's evaluation (valid_loss; valid_ rewards)."""
    logs = [h for h in state.log_history if "loss" in h and epoch - 1 < h["epoch"] <= epoch]
    evals = [h for h in state.log_history if "eval_loss" in h and round(h["epoch"]) == epoch]
    metrics = {}
    if logs:
        metrics["train_loss"] = sum(h["loss"] for h in logs) / len(logs)
        for name in REWARDS.values():
            values = [r[name] for r in map(_rewards, logs) if name in r]
            if values:
                metrics[name] = sum(values) / len(values)
    if evals:
        metrics["valid_loss"] = evals[-1]["eval_loss"]
        metrics |= {f"valid_{k}": v for k, v in _rewards(evals[-1], "eval_").items()}
    return metrics


class StopOnSignal(TrainerCallback):
    """SIGTERM sets a flag (service/training/stop.py, from the child's first line); at the next
    step boundary the Trainer saves (CheckpointCallback uploads it as a resume point, or as the
    epoch's checkpoint at an epoch's end) and then training stops. So a pause or a runner's
    shutdown loses no step, and an upload in progress always completes first. Must come after
    CheckpointCallback in the callback list."""

    def __init__(self) -> None:
        self.saving = False

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        stop.check(f"before step {state.global_step + 1}; nothing trained in this attempt")
        return control

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        if ranks.agree(stop.requested()):  # several ranks stop after the same step
            self.saving = True
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kw):  # noqa: ANN001, ANN201, ARG002
        if self.saving:
            raise stop.StopRequested(f"stopped by SIGTERM after step {state.global_step}, saved",
                                     trained=True)


def best_epoch(scores: dict[int, float]) -> int:
    """The best-scoring epoch, the earliest of equals."""
    return max(sorted(scores), key=lambda epoch: scores[epoch])
