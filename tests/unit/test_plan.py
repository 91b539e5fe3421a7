"""The memory plan against published and measured figures (within +-30%)."""

import pytest

from service.contracts.schema import Hyperparameters
from service.shapes import Shape
from service.training.plan import GiB, PlanError, estimate, make_plan

LLAMA_8B = Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256,
                 tied=False)
LLAMA_70B = Shape(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256,
                  tied=False)


def peak(shape: Shape, backend: str = "unsloth", mb: int = 1, **hp: object) -> float:
    return sum(estimate(shape, Hyperparameters(**hp), mb, backend).values()) / GiB


def test_parameter_counts_match_the_published_models() -> None:
    assert LLAMA_8B.total_params == pytest.approx(8.03e9, rel=0.01)
    assert LLAMA_70B.total_params == pytest.approx(70.6e9, rel=0.01)


def test_8b_qlora_at_2048_fits_in_about_8_to_10_gb() -> None:
    # Unsloth's and the community's figure for Llama-3-8B QLoRA, seq 2048, batch 1-2: ~8-10 GB.
    assert 9 * 0.7 <= peak(LLAMA_8B, max_seq_length=2048) * GiB / 1e9 <= 9 * 1.3


def test_8b_qlora_matches_the_h100_measurement() -> None:
    # DESIGN.md: Unsloth, batch 2 x 2048, r=16 all linear: 6.77 GiB peak reserved.
    assert peak(LLAMA_8B, mb=2, max_seq_length=2048) == pytest.approx(6.77, rel=0.3)
    # transformers + PEFT on the same run: 11.86 GiB.
    assert peak(LLAMA_8B, "peft", mb=2, max_seq_length=2048) == pytest.approx(11.86, rel=0.3)


def test_70b_qlora_needs_over_40_gb() -> None:
    assert 40 <= peak(LLAMA_70B, max_seq_length=2048) * GiB / 1e9 <= 46 * 1.3


def test_plan_picks_the_largest_micro_batch_that_fits() -> None:
    hp = Hyperparameters(batch_size=16, max_seq_length=2048)
    roomy = make_plan(LLAMA_8B, hp, 80 * GiB, "unsloth", "cuda")
    tight = make_plan(LLAMA_8B, hp, 10 * GiB, "unsloth", "cuda")
    assert roomy.micro_batch_size == 16 and roomy.gradient_accumulation_steps == 1
    assert tight.micro_batch_size < 16
    assert tight.micro_batch_size * tight.gradient_accumulation_steps == 16
    assert tight.estimated_peak_bytes * 1.1 <= 10 * GiB


def test_impossible_job_fails_with_the_estimate() -> None:
    with pytest.raises(PlanError, match=r"needs about \d+\.\d GiB"):
        make_plan(LLAMA_70B, Hyperparameters(max_seq_length=8192), 24 * GiB, "unsloth", "cuda")


def test_an_out_of_memory_cap_still_takes_the_largest_micro_batch_that_fits_now() -> None:
    """After an OOM at 16 the retry is capped at 8; if only 4 fits the memory free now, the
    plan takes 4 instead of refusing the job (what a forced halving did)."""
    hp = Hyperparameters(batch_size=16, max_seq_length=2048)
    sizes = {mb: sum(estimate(LLAMA_8B, hp, mb, "unsloth").values()) * 1.1 for mb in (4, 8)}
    free_now = int((sizes[4] + sizes[8]) / 2)  # 4 fits, 8 does not
    plan = make_plan(LLAMA_8B, hp, free_now, "unsloth", "cuda", max_micro_batch=8)
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (4, 4)
    assert make_plan(LLAMA_8B, hp, None, "unsloth", "cpu", max_micro_batch=8).micro_batch_size == 8
    with pytest.raises(PlanError):
        make_plan(LLAMA_8B, hp, int(sizes[4] / 10), "unsloth", "cuda", max_micro_batch=8)


LLAMA_1B = Shape(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=49152,
                 tied=True)
BENCH_8B = Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=49152,
                 tied=False)  # bench/make_llama.py's 8b: the test model's tokenizer


@pytest.mark.parametrize(("shape", "rows", "width", "measured_gib"), [
    # bench/activation_memory.py on an H200, peak reserved without checkpointing
    (LLAMA_1B, 8, 1024, 8.70), (BENCH_8B, 8, 2048, 60.18),
])
def test_the_estimate_without_checkpointing_matches_the_h200_measurement(
        shape: Shape, rows: int, width: int, measured_gib: float) -> None:
    parts = estimate(shape, Hyperparameters(max_seq_length=width), rows, "unsloth",
                     checkpointing=False)
    assert sum(parts.values()) / GiB == pytest.approx(measured_gib, rel=0.05)


def test_auto_drops_checkpointing_only_when_the_kept_activations_fit() -> None:
    hp = Hyperparameters(batch_size=8, max_seq_length=2048)
    roomy = make_plan(LLAMA_1B, hp, 80 * GiB, "unsloth", "cuda")
    assert not roomy.gradient_checkpointing and roomy.micro_batch_size == 8
    assert roomy.estimated_peak_bytes > 10 * GiB  # the plan sizes what it keeps
    tight = make_plan(LLAMA_1B, hp, 8 * GiB, "unsloth", "cuda")
    assert tight.gradient_checkpointing and tight.micro_batch_size == 8
    assert make_plan(LLAMA_1B, Hyperparameters(batch_size=8, gradient_checkpointing="on"),
                     80 * GiB, "unsloth", "cuda").gradient_checkpointing
    assert not make_plan(LLAMA_1B, hp, None, "peft", "cpu").gradient_checkpointing


def test_checkpointing_off_lowers_the_micro_batch_and_an_oom_retry_turns_it_back_on() -> None:
    hp = Hyperparameters(batch_size=8, max_seq_length=2048, gradient_checkpointing="off")
    plan = make_plan(LLAMA_1B, hp, 8 * GiB, "unsloth", "cuda")
    assert not plan.gradient_checkpointing and plan.micro_batch_size < 8
    assert plan.estimated_peak_bytes * 1.1 <= 8 * GiB
    retry = make_plan(LLAMA_1B, hp, 8 * GiB, "unsloth", "cuda", max_micro_batch=8)
    assert retry.gradient_checkpointing and retry.micro_batch_size == 8
    with pytest.raises(PlanError, match="gradient checkpointing off"):
        make_plan(LLAMA_8B, hp, 6 * GiB, "unsloth", "cuda")


def test_auto_keeps_checkpointing_on_peft_whose_kept_activations_were_never_measured() -> None:
    plan = make_plan(LLAMA_1B, Hyperparameters(batch_size=8, max_seq_length=2048), 80 * GiB, "peft", "cuda")
    assert plan.gradient_checkpointing


def test_a_reinforcement_plan_counts_every_completion_and_the_rollouts_cache() -> None:
    from service.contracts.graders import StringCheckGrader
    from service.contracts.schema import Method, Reinforcement, ReinforcementHyperparameters

    grader = StringCheckGrader(name="g", input="{{sample.output_text}}", reference="x", operation="eq")
    method = Method(type="reinforcement", reinforcement=Reinforcement(
        grader=grader, hyperparameters=ReinforcementHyperparameters(group_size=6, max_completion_tokens=512)))
    hp = Hyperparameters(batch_size=4, max_seq_length=2048)
    plan = make_plan(LLAMA_1B, hp, 80 * GiB, "unsloth", "cuda", row_tokens=100, method=method)
    # 4 prompts x 6 completions per step, each sequence its prompt and a whole completion.
    assert plan.micro_batch_size * plan.gradient_accumulation_steps == 24 and plan.row_tokens == 612
    kv = plan.breakdown["rollouts_kv_cache"]  # all 24 generated at once: every layer's keys and values
    assert kv == 24 * 612 * LLAMA_1B.layers * 2 * (LLAMA_1B.hidden * LLAMA_1B.kv_heads // LLAMA_1B.heads) * 2
    supervised = make_plan(LLAMA_1B, hp, 80 * GiB, "unsloth", "cuda", row_tokens=100)
    assert "rollouts_kv_cache" not in supervised.breakdown and supervised.micro_batch_size <= 4
    tight = make_plan(LLAMA_1B, hp, int(2.5 * GiB), "unsloth", "cuda", row_tokens=100, method=method)
    assert 24 % tight.micro_batch_size == 0 and tight.micro_batch_size < 24
