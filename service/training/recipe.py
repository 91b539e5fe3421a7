"""The training recipe: spec in, checkpoints and an adapter out.

read spec -> plan memory -> load model -> build datasets -> SFTTrainer with callbacks -> upload.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import msgspec

from service.contracts import messages as m
from service.contracts.messages import Emitter, ObjectRef, TrainingSpec
from service.contracts.schema import EarlyStopping, EvalSample, MemoryPlan
from service.datasets.formats import Preference, detect_format, parse_example
from service.datasets.jsonl import read_jsonl
from service.datasets.render import IGNORE, Collator, FlatCollator, Renderer, fit, fit_pair, split_examples
from service.datasets.template import HFTokens
from service.settings import load_settings
from service.shapes import Shape, read_config
from service.storage import ObjectStore, download_prefix, upload_dir
from service.training import backends, ranks, reinforce, rollouts, stop
from service.training.callbacks import (
    CheckpointCallback,
    IntervalEval,
    ProgressCallback,
    ResumePointCallback,
    StopOnSignal,
    best_epoch,
)
from service.training.plan import make_plan, resolve_packing, row_tokens
from service.training.samples import CheckRecorder, Sampler, eval_prompts, example_sequences, mean_score


def plan_memory(spec: TrainingSpec, shape: Shape, backend: str, device: str, packing: str) -> MemoryPlan:
    available = spec.memory_budget_bytes
    if device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0]
        available = free if available is None else min(free, available)
    hp = spec.hyperparameters
    return make_plan(shape, hp, available, backend, device, spec.max_micro_batch_size,
                     row_tokens=row_tokens(spec.example_lengths, hp.max_seq_length, packing),
                     packing=packing, method=spec.method, ranks=spec.ranks)


class Tally:
    """Tokens the optimizer actually saw, counted per micro-batch: real (no padding) and
    supervised (loss-bearing). Shared by the trainer, which counts, and ProgressCallback."""

    def __init__(self) -> None:
        self.supervised = 0

    def trainer_class(self, base: type) -> type:
        tally = self

        class CountingTrainer(base):  # type: ignore[misc, valid-type]
            # transformers counts every input id, padding included; count what was trained on.
            def _track_num_input_tokens(self, inputs: dict) -> None:
                if self.args.include_num_input_tokens_seen == "no":
                    return  # GRPO: it counts the prompts and completions it generates
                import torch

                mask = inputs.get("attention_mask")
                real = mask.sum() if mask is not None else inputs["input_ids"].numel()
                if "labels" in inputs:
                    supervised = (inputs["labels"] != IGNORE).sum()
                else:  # DPO: the answers' tokens, both of each pair
                    supervised = inputs["completion_mask"].sum()
                counts = torch.stack([torch.as_tensor(real), torch.as_tensor(supervised)]).to(torch.int64)
                if self.args.world_size > 1:  # every rank's micro-batch counts (every rank gathers)
                    counts = self.accelerator.gather(counts.to(self.args.device)).view(-1, 2).sum(0)
                self.state.num_input_tokens_seen += int(counts[0])
                tally.supervised += int(counts[1])

        return CountingTrainer


def resumable(base: type) -> type:
    """`base` with its length-grouped order drawn from seed + epoch. transformers draws it from
    the global RNG, which resuming mid-epoch restores to the checkpoint's later state: a job
    resumed in its second epoch trained on another order than the one it was killed in."""
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededSampler(LengthGroupedSampler):
        def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before every epoch
            self.epoch = epoch

        def __iter__(self):  # noqa: ANN204
            import torch

            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    class ResumableTrainer(base):  # type: ignore[misc, valid-type]
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:  # noqa: ANN001
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            restore_trained_adapter(model or self.model, Path(resume_from_checkpoint))

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if self.args.world_size == 1 or self.args.device.type != "cpu":
                return super()._load_optimizer_and_scheduler(checkpoint)
            # Several CPU ranks: transformers (5.17) maps the optimizer state to args.device,
            # cpu:<rank>, which torch.load cannot restore ("don't know how to restore data
            # location"); the CPU is the CPU.
            import torch

            load = torch.load

            def on_cpu(*args, map_location=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
                return load(*args, map_location="cpu" if map_location is not None else None, **kwargs)

            torch.load = on_cpu
            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            finally:
                torch.load = load

        def _get_train_sampler(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            sampler = super()._get_train_sampler(*args, **kwargs)
            if type(sampler) is LengthGroupedSampler:
                # Grouped by the whole step's examples, not one rank's share: the same global
                # order on any number of ranks, so a job resumed on other devices goes on in it.
                return EpochSeededSampler(sampler.lengths, sampler.batch_size * self.args.world_size,
                                          self.args.data_seed if self.args.data_seed is not None
                                          else self.args.seed)
            return sampler

    return ResumableTrainer


def restore_trained_adapter(model, checkpoint: Path) -> None:  # noqa: ANN001
    """Load the trained adapter from a checkpoint that holds several.

    DPO's trainer keeps a frozen copy of the adapter as its reference ("ref"), which PEFT saves
    in checkpoint/ref/ beside the trained one at the checkpoint's root. Given sub-folders,
    transformers (5.17) resumes by loading only them: the trained adapter kept its initial
    weights, so a resumed DPO job started over (loss ln 2, policy equal to the reference) with
    its optimizer and schedule mid-way."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = checkpoint / "adapter_model.safetensors"
    if not path.exists() or len(getattr(model, "peft_config", {})) < 2:
        return  # one adapter: transformers loaded it
    active = model.active_adapters[0]
    result = set_peft_model_state_dict(model, load_file(str(path)), adapter_name=active)
    missing = [k for k in result.missing_keys if f".{active}." in k and "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"checkpoint {checkpoint.name} does not fit adapter {active!r}: "
                         f"{len(missing)} LoRA weights missing, {len(result.unexpected_keys)} unexpected")


def build_datasets(spec: TrainingSpec, objects: ObjectStore, tokenizer, work: Path):  # noqa: ANN001, ANN201
    """(train, validation or None, the validation rows as read): SFT examples as input ids and
    labels, or DPO pairs as prompt, chosen and rejected ids; each with its trained length."""
    from datasets import Dataset

    hp = spec.hyperparameters
    objects.download(spec.train.bucket, spec.train.key, work / "train.jsonl")
    rows = list(read_jsonl(work / "train.jsonl"))
    if spec.validation is not None:
        objects.download(spec.validation.bucket, spec.validation.key, work / "validation.jsonl")
        train_rows, val_rows = rows, list(read_jsonl(work / "validation.jsonl"))
    else:
        train_rows, val_rows = split_examples(rows, spec.validation_rows, hp.seed)
    if spec.method.type == "reinforcement":
        # Prompts only: the answers are sampled in training. The validation prompts are graded
        # (the eval), not given a loss.
        prompts = reinforce.prompt_rows(train_rows)
        if not prompts:
            raise ValueError("no training prompt is valid")
        return Dataset.from_list(prompts), None, val_rows
    renderer = Renderer(HFTokens(tokenizer), hp.train_on_inputs)

    def encode(rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            example = parse_example(row, detect_format(row))
            if isinstance(example, Preference):
                fitted = fit_pair(*renderer.encode_pair(example), hp.max_seq_length,
                                  hp.overlong_examples)
            elif (fitted := fit(*renderer.encode(example), hp.max_seq_length,
                                hp.overlong_examples)) is not None:
                fitted["length"] = len(fitted["input_ids"])
            if fitted is not None:
                out.append(fitted)
        return out

    train = encode(train_rows)
    if not train:  # validation refuses such a file; a changed base model could still get here
        raise ValueError("no training example fits max_seq_length")
    val = encode(val_rows)
    return Dataset.from_list(train), Dataset.from_list(val) if val else None, val_rows


def preference_trainer(base: type) -> type:
    """TRL's DPOTrainer on pairs already tokenized by our renderer (the one validation counted
    with), not re-rendered by TRL; its collator reads prompt_ids, chosen_ids and rejected_ids."""

    class PreferenceTrainer(base):  # type: ignore[misc, valid-type]
        def _prepare_dataset(self, dataset, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            return dataset

    return PreferenceTrainer


def train(spec: TrainingSpec, objects: ObjectStore, emit: Emitter) -> None:
    hp = spec.hyperparameters
    backend = backends.choose_backend(spec.backend)
    device = "cuda" if backends.cuda_available() else "cpu"
    if device == "cuda":
        backends.tune_cuda()
    threads = None
    if device == "cpu":
        import torch

        if spec.deterministic or spec.cpu_threads:
            # Deterministic: a multi-threaded reduction may sum in another order each run. A CPU
            # shared with other jobs: each takes its share of the cores; more threads than cores
            # over all jobs made a step of one of two jobs ~8x slower on 2 cores (OpenMP spin-waits).
            torch.set_num_threads(1 if spec.deterministic else spec.cpu_threads)
        threads = torch.get_num_threads()
    emit.emit(m.Started(backend=backend, device=device, versions=backends.versions(), cpu_threads=threads))
    if device == "cpu" and hp.load_in_4bit:
        emit.emit(m.Warned(message="4-bit loading needs CUDA; training fp32 LoRA on the CPU"))

    packing = resolve_packing(hp.packing)
    shape = Shape.from_config(read_config(spec.base_model_source))
    plan = plan_memory(spec, shape, backend, device, packing)
    emit.emit(m.Planned(plan=plan))
    stop.check("before the model was loaded")

    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # Each rank downloads its own copy of the inputs; the Trainer's folder (work/trainer) is
    # shared: rank 0 saves the model and optimizer there, every rank its RNG state.
    inputs = work if ranks.is_main() else work / f"rank-{ranks.rank()}"
    load_started = time.perf_counter()
    # LoRA's A matrices are drawn when the adapter is attached, before the Trainer seeds
    # anything: seed first, or two runs of one job (or a run and its resume) start apart.
    from transformers import set_seed

    set_seed(hp.seed, deterministic=spec.deterministic)
    model, tokenizer = backends.load(backend, spec.base_model_source, hp,
                                     checkpointing=plan.gradient_checkpointing)
    if spec.init_adapter is not None:
        load_parent_adapter(model, spec.init_adapter, objects, inputs)
        emit.emit(m.Continued(message=f"adapter weights loaded from {spec.init_adapter.key}",
                              prefix=spec.init_adapter.key))
    emit.emit(m.Loaded(seconds=round(time.perf_counter() - load_started, 2)))
    stop.check("after the model was loaded, before the data was read")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_ds, val_ds, val_rows = build_datasets(spec, objects, tokenizer, inputs)
    if spec.method.type == "reinforcement":  # graded like any job: by its eval, or its grader
        spec = msgspec.structs.replace(spec, eval=reinforce.derived_eval(spec, val_rows))
    prompts = eval_prompts(spec, HFTokens(tokenizer), val_rows)
    # A reinforcement job's eval answers are as long as its rollouts may be: graded like the reward.
    sampler = Sampler(prompts, tokenizer, backend, spec.eval, reinforce.eval_tokens(spec)) if prompts else None
    if sampler is not None and spec.eval is not None and spec.score_base and ranks.is_main():
        # Before any step the adapter adds nothing (LoRA's B starts at zero) or is the parent's:
        # these are the answers of the model training starts from.
        answers = sampler.answer(model)
        emit.emit(m.BaseScored(score=mean_score(answers) or 0.0,
                               samples=[msgspec.convert(a, EvalSample) for a in answers]))
    examples = [] if prompts else example_sequences(train_ds, HFTokens(tokenizer))
    checker = CheckRecorder(sampler, examples, backend,
                            quantized=hp.load_in_4bit and device == "cuda")

    early = hp.early_stopping_patience is not None and val_ds is not None
    tally = Tally()
    progress = ProgressCallback(emit, tally)
    checkpoints = CheckpointCallback(emit, objects, spec.artifact_bucket, spec.output_prefix, sampler,
                                     checker, patience=spec.eval.early_stopping_patience if spec.eval else None,
                                     prior_scores=spec.epoch_scores)
    callbacks = [progress, checkpoints]
    rft = spec.method.reinforcement
    if rft is not None and rft.hyperparameters.eval_interval and sampler is not None and spec.eval:
        callbacks.append(IntervalEval(emit, sampler, rft.hyperparameters.eval_interval))
    if hp.checkpoint_interval_steps:
        callbacks.append(ResumePointCallback(hp.checkpoint_interval_steps))
    callbacks.append(StopOnSignal())  # after CheckpointCallback: it stops once the save is uploaded
    if early:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=hp.early_stopping_patience))
    args = training_arguments(spec, plan, device, packing, work, early, has_eval=val_ds is not None)
    trainer = make_trainer(spec, backend, packing, args, tally, model, tokenizer, train_ds, val_ds,
                           callbacks, emit)

    stop.check("before training started")
    resume_dir = None
    if spec.resume_from is not None:
        # Rank 0 fetches it into the shared folder; the others are told where it is.
        resume_dir = ranks.share(_fetch_checkpoint(spec, objects, work) if ranks.is_main() else None)
        emit.emit(m.Resumed(prefix=spec.resume_from.key, checkpoint=resume_dir.name))
    train_started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    train_seconds = time.perf_counter() - train_started
    if not ranks.is_main():  # rank 0 holds the same adapter: it selects, saves and reports
        return
    steady = progress.steady_rate(trainer.state.num_input_tokens_seen)

    by_score = spec.eval is not None and (spec.eval.checkpoint_selection == "score"
                                          or spec.eval.early_stopping_patience is not None)
    if by_score:
        # Early stopping on the validation loss may have loaded another epoch's weights.
        select_best_epoch(spec, checkpoints.scores, None if early else round(trainer.state.epoch),
                          trainer.model, objects, work, emit)
    adapter = work / "adapter"
    trainer.save_model(str(adapter))
    checker.write(trainer.model, adapter)
    adapter_prefix = f"{spec.output_prefix}/adapter"
    upload_dir(objects, spec.artifact_bucket, adapter_prefix, adapter)
    state = trainer.state
    best = state.best_model_checkpoint
    early_stop = early_stop_outcome(state, hp) if early else score_stop_outcome(state, spec, checkpoints)
    emit.emit(m.Result(
        bucket=spec.artifact_bucket, prefix=adapter_prefix, early_stop=early_stop,
        trained_tokens=state.num_input_tokens_seen, supervised_tokens=tally.supervised,
        train_loss=result.training_loss, global_step=state.global_step,
        best_checkpoint=Path(best).name if best else None,
        train_seconds=round(train_seconds, 3), steady_tokens_per_second=steady, shape=shape.label,
        device_name=backends.device_name(), available_bytes=plan.available_bytes, backend=backend,
        gradient_checkpointing=plan.gradient_checkpointing))


def training_arguments(spec: TrainingSpec, plan: MemoryPlan, device: str, packing: str, work: Path,
                       early: bool, has_eval: bool) -> dict:
    """The Trainer arguments both methods share (SFTConfig and DPOConfig take them alike)."""
    hp = spec.hyperparameters
    return dict(
        output_dir=str(work / "trainer"),
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=plan.micro_batch_size,
        per_device_eval_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        warmup_steps=min(hp.warmup_ratio, 0.999),  # transformers 5: a float < 1 is a ratio
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        lr_scheduler_type="linear",
        seed=hp.seed,
        data_seed=hp.seed,
        full_determinism=spec.deterministic,
        logging_steps=spec.metrics_every_steps,
        save_strategy="epoch",
        # Every save is uploaded as it is made (CheckpointCallback); on the runner's disk only the
        # newest stays (and the best, which the Trainer keeps when it loads it at the end).
        save_total_limit=1,
        eval_strategy="epoch" if has_eval else "no",
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        # bf16 mixed precision on CUDA; plain fp32 on the CPU (TRL defaults to bf16 everywhere).
        bf16=device == "cuda",
        fp16=False,
        use_cpu=device == "cpu",
        gradient_checkpointing=False,  # each backend turns on its own (Unsloth's is offloaded)
        remove_unused_columns=False,
        # Counted by Tally's trainer: real tokens only. GRPO counts its prompts and completions
        # itself, as it generates them.
        include_num_input_tokens_seen=spec.method.type != "reinforcement",
        # Several ranks: LoRA's weights are all used every step, so DDP need not search for
        # unused ones (a graph traversal per step).
        ddp_find_unused_parameters=False if spec.ranks > 1 else None,
        train_sampling_strategy="group_by_length" if packing == "length_grouped" else "random",
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=True,
    )


def make_trainer(spec: TrainingSpec, backend: str, packing: str, args: dict, tally: Tally,  # noqa: PLR0913
                 model, tokenizer, train_ds, val_ds, callbacks: list, emit: Emitter):  # noqa: ANN001, ANN201
    """TRL's SFTTrainer, its DPOTrainer for method "dpo" or its GRPOTrainer for method
    "reinforcement" (service/training/reinforce.py), counting real tokens (Tally)."""
    hp = spec.hyperparameters
    if spec.method.type == "reinforcement":
        from trl import GRPOConfig, GRPOTrainer

        assert spec.method.reinforcement is not None
        vllm = rollouts.connect(load_settings(), spec.job_id, spec.base_model, model, Path(spec.work_dir),
                                ranks.rank(), emit, ranks.is_main())
        return tally.trainer_class(resumable(reinforce.grpo_trainer(GRPOTrainer)))(
            model=model, reward_funcs=[reinforce.Reward(spec.method.reinforcement.grader, tally, emit)],
            train_dataset=train_ds, processing_class=tokenizer,
            callbacks=callbacks + ([rollouts.unload_when_done(vllm)] if vllm else []),
            args=GRPOConfig(**args, **reinforce.grpo_arguments(spec)),
            **({"rollout_func": vllm} if vllm else {}))
    if spec.method.type == "dpo":
        if backend == "unsloth":
            # Unsloth patches TRL's trainers when it is imported (backends.load did); this call
            # is its documented DPO entry point, a no-op in the versions the bundle pins.
            from unsloth import PatchDPOTrainer

            PatchDPOTrainer()
        from trl import DPOConfig, DPOTrainer

        # ref_model None with a PEFT model: TRL's reference is a frozen copy of the adapter as
        # it starts ("ref": the base for a new adapter, the parent when continuing), so no second
        # copy of the model is held. Pairs are padded per micro-batch.
        return tally.trainer_class(resumable(preference_trainer(DPOTrainer)))(
            model=model, ref_model=None, train_dataset=train_ds, eval_dataset=val_ds,
            processing_class=tokenizer, callbacks=callbacks,
            args=DPOConfig(**args, beta=spec.method.beta, max_length=hp.max_seq_length,
                           truncation_mode="keep_start", precompute_ref_log_probs=False))
    from trl import SFTConfig, SFTTrainer

    collator = (FlatCollator(with_lengths=backend == "unsloth") if packing == "padding_free"
                else Collator(tokenizer.pad_token_id))
    return tally.trainer_class(resumable(SFTTrainer))(
        model=model, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
        processing_class=tokenizer, callbacks=callbacks,
        args=SFTConfig(**args, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None))


def early_stop_outcome(state, hp) -> EarlyStopping | None:  # noqa: ANN001
    """Why training ended before its last step, if the early-stopping callback ended it."""
    if state.global_step >= state.max_steps:
        return None
    losses = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    chosen = losses.index(min(losses)) + 1
    return EarlyStopping(
        reason=f"validation loss did not improve for {hp.early_stopping_patience} epoch(s) "
               f"after epoch {chosen} (patience {hp.early_stopping_patience})",
        stopped_after_epoch=round(state.epoch), n_epochs=int(hp.n_epochs),
        chosen_epoch=chosen, best_valid_loss=min(losses), valid_losses=losses,
        step=state.global_step)


def score_stop_outcome(state, spec: TrainingSpec, checkpoints: CheckpointCallback) -> EarlyStopping | None:  # noqa: ANN001
    """Why training ended before its last step, if the eval score stopped improving."""
    if checkpoints.stopped_after is None or spec.eval is None:
        return None
    scores, patience = checkpoints.scores, spec.eval.early_stopping_patience
    best = best_epoch(scores)
    return EarlyStopping(
        reason=f"the eval score did not improve for {patience} epoch(s) after epoch {best} "
               f"(patience {patience})", watched="eval_score",
        stopped_after_epoch=checkpoints.stopped_after, n_epochs=int(spec.hyperparameters.n_epochs),
        chosen_epoch=best, best_score=scores[best], scores=[scores[e] for e in sorted(scores)],
        step=state.global_step)


def select_best_epoch(spec: TrainingSpec, scores: dict[int, float], current: int | None, model,  # noqa: ANN001
                      objects: ObjectStore, work: Path, emit: Emitter) -> None:
    """eval.checkpoint_selection "score": the final adapter is the best-scoring epoch's (the
    earliest of equals), whatever early stopping chose; its weights replace the model's."""
    if not scores:
        return
    best = best_epoch(scores)
    if best != current:  # `current`: the epoch whose weights the model holds, if known
        load_parent_adapter(model, ObjectRef(bucket=spec.artifact_bucket,
                                             key=f"{spec.output_prefix}/checkpoints/epoch-{best}"),
                            objects, work, folder="selected-adapter")
    emit.emit(m.Selected(epoch=best, score=scores[best], scores=scores))


def load_parent_adapter(model, ref: ObjectRef, objects: ObjectStore, work: Path,  # noqa: ANN001
                        folder: str = "parent-adapter") -> None:
    """Continued training: start the new adapter (same rank and modules, API-checked) from the
    parent's weights (or, for checkpoint selection, one epoch's). Every LoRA weight must be
    filled: a partial load would train from noise."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = work / folder / "adapter_model.safetensors"
    objects.download(ref.bucket, f"{ref.key}/adapter_model.safetensors", path)
    weights = load_file(str(path))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"the parent adapter does not fit this model: {len(missing)} LoRA weights "
                         f"missing, {len(result.unexpected_keys)} unexpected "
                         f"(e.g. {(missing or result.unexpected_keys)[0]})")


def _fetch_checkpoint(spec: TrainingSpec, objects: ObjectStore, work: Path) -> Path:
    """Download the checkpoint into the Trainer's own layout (checkpoint-<global step>)."""
    staging = Path(tempfile.mkdtemp(dir=work, prefix="resume-"))
    assert spec.resume_from is not None
    if download_prefix(objects, spec.resume_from.bucket, spec.resume_from.key, staging) == 0:
        raise FileNotFoundError(f"checkpoint {spec.resume_from.key} has no files")
    state = msgspec.json.decode((staging / "trainer_state.json").read_bytes())
    target = work / "trainer" / f"checkpoint-{state['global_step']}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    _spread_rng_states(target, ranks.world_size())
    return target


def _spread_rng_states(checkpoint: Path, world: int) -> None:
    """A checkpoint saved by N ranks holds rng_state_<r>.pth per rank (one rank: rng_state.pth);
    resumed on another number of ranks, rank r takes the state of rank r mod N, so its dropout
    and sampling go on from a state the job had rather than from a fresh seed."""
    saved = sorted(checkpoint.glob("rng_state*.pth"), key=lambda p: p.name)
    if not saved:
        return
    import shutil

    for r in range(world):
        wanted = checkpoint / ("rng_state.pth" if world == 1 else f"rng_state_{r}.pth")
        if not wanted.exists():
            shutil.copyfile(saved[r % len(saved)], wanted)
