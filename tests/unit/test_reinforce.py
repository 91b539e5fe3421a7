"""The reinforcement recipe's pieces that need no model: the reward (the job's grader, in its
sandbox for python), what it reports when grading fails, and the graded evaluation a job without
its own eval gets."""

from __future__ import annotations

import io
import json

import msgspec

from service.contracts import messages as m
from service.contracts.graders import PythonGrader, StringCheckGrader
from service.contracts.messages import Emitter, ObjectRef, TrainingSpec
from service.contracts.schema import Method, Reinforcement, ReinforcementHyperparameters
from service.training.recipe import Tally
from service.training.reinforce import Reward, derived_eval, prompt_rows

ROW = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
       "answer": "apple"}
EXACT = StringCheckGrader(name="exact", input="{{sample.output_text}}", reference="{{item.answer}}",
                          operation="eq")


def _reward(grader) -> tuple[Reward, io.StringIO, Tally]:  # noqa: ANN001
    out, tally = io.StringIO(), Tally()
    return Reward(grader, tally, Emitter(out)), out, tally


def test_the_reward_is_the_graders_score_against_the_row() -> None:
    reward, out, tally = _reward(EXACT)
    [row] = prompt_rows([ROW])
    assert row["prompt"] == ROW["messages"] and json.loads(row["item"]) == ROW
    logged: dict[str, float] = {}
    scores = reward(prompts=[row["prompt"]] * 2, completions=[[{"role": "assistant", "content": "apple"}],
                                                              [{"role": "assistant", "content": "pear"}]],
                    completion_ids=[[1, 2], [3]], item=[row["item"]] * 2, log_metric=logged.__setitem__)
    assert scores == [1.0, 0.0]
    assert tally.supervised == 3 and logged == {"grader_error_ratio": 0.0} and out.getvalue() == ""


def test_a_grader_that_fails_scores_0_and_says_why_once() -> None:
    broken = PythonGrader(name="broken", source="def grade(sample, item):\n    return 1 / 0\n")
    reward, out, _ = _reward(broken)
    [row] = prompt_rows([ROW])
    logged: dict[str, float] = {}
    for _ in range(2):
        scores = reward(prompts=[row["prompt"]], completions=[[{"role": "assistant", "content": "x"}]],
                        completion_ids=[[1]], item=[row["item"]], log_metric=logged.__setitem__)
        assert scores == [0.0]
    assert logged == {"grader_error_ratio": 1.0}
    [line] = out.getvalue().splitlines()  # warned once, not every step
    warned = m.decode(line.encode())
    assert isinstance(warned, m.Warned) and "ZeroDivisionError" in warned.message, warned


def test_a_job_without_its_own_eval_is_graded_on_its_validation_prompts() -> None:
    spec = TrainingSpec(
        job_id="j", base_model="b", base_model_source="/m", hyperparameters=msgspec.convert({}, m.Hyperparameters),
        method=Method(type="reinforcement", reinforcement=Reinforcement(
            grader=EXACT, hyperparameters=ReinforcementHyperparameters(eval_samples=2))),
        train=ObjectRef(bucket="b", key="k"), artifact_bucket="a", output_prefix="jobs/j", work_dir="/w")
    rows = [ROW, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]},
            {**ROW, "answer": "pear"}, {**ROW, "answer": "plum"}]
    graded = derived_eval(spec, rows)
    assert graded is not None and graded.grader == EXACT
    assert [i["answer"] for i in graded.items] == ["apple", "pear"]  # prompts only, eval_samples of them
    assert derived_eval(spec, [rows[1]]) is None
