"""Graders through the official `openai` SDK (`client.fine_tuning.alpha.graders`) on a real HTTP
server, every answer checked against OpenAI's published schema (RunGraderResponse,
ValidateGraderResponse), and the same on the native /graders routes. Scores are compared with
the metric libraries called directly, never with numbers written here. The python grader runs
in its sandbox for real: breaking a limit scores 0 with the reason."""

from __future__ import annotations

import httpx
import openai
import pytest
import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import meteor_score
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

from tests.support.live import serve
from tests.support.openai_schema import violations

SAMPLE, LABEL = "the cat sat on the mat", "the cat sat on a mat"


@pytest.fixture
def live(make_settings):  # noqa: ANN001, ANN201
    settings = make_settings(python_grader_wall_seconds=5, python_grader_cpu_seconds=2,
                                    python_grader_memory_mb=512, python_grader_output_kb=4)
    with serve(settings) as (url, keys):
        yield url, keys


@pytest.fixture
def oai(live) -> openai.OpenAI:  # noqa: ANN001
    url, keys = live
    return openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)


def _run(oai: openai.OpenAI, grader: dict, sample: str = SAMPLE, item: dict | None = None) -> dict:
    answer = oai.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample,
                                                item=item if item is not None else {"label": LABEL})
    body = answer.model_dump(mode="json", exclude_unset=True)
    assert violations("#/components/schemas/RunGraderResponse", body) == []
    return body


def _similar(metric: str) -> dict:
    return {"type": "text_similarity", "name": metric, "input": "{{sample.output_text}}",
            "reference": "{{item.label}}", "evaluation_metric": metric}


def test_string_checks(oai: openai.OpenAI) -> None:
    def check(op: str, sample: str, value: str = "{{sample.output_text}}") -> float:
        grader = {"type": "string_check", "name": op, "input": value,
                  "reference": "{{item.label}}", "operation": op}
        return _run(oai, grader, sample, {"label": "Paris"})["reward"]

    assert (check("eq", "Paris"), check("eq", "paris"), check("ne", "paris"), check("ne", "Paris")) == (1, 0, 1, 0)
    assert (check("like", "It is Paris."), check("like", "It is paris."), check("ilike", "It is paris.")) == (1, 0, 1)
    # JSON answers are reachable through sample.output_json.
    assert check("eq", '{"city": "Paris"}', value="{{sample.output_json.city}}") == 1


def test_text_similarity_is_the_libraries_own_metric(oai: openai.OpenAI) -> None:
    expected = {
        "fuzzy_match": fuzz.ratio(SAMPLE, LABEL) / 100,
        "bleu": sacrebleu.sentence_bleu(SAMPLE, [LABEL]).score / 100,
        "gleu": sentence_gleu([LABEL.split()], SAMPLE.split()),
        **{f"rouge_{n}": rouge_scorer.RougeScorer([f"rouge{n}"]).score(LABEL, SAMPLE)[f"rouge{n}"].fmeasure
           for n in (1, 2, 3, 4, 5)},
        "rouge_l": rouge_scorer.RougeScorer(["rougeL"]).score(LABEL, SAMPLE)["rougeL"].fmeasure,
    }
    for metric, value in expected.items():
        assert _run(oai, _similar(metric))["reward"] == pytest.approx(value), metric
    assert _run(oai, _similar("fuzzy_match"), sample=LABEL)["reward"] == 1.0
    meteor = _run(oai, _similar("meteor"))
    assert 0 < meteor["reward"] < 1 and meteor["metadata"]["scores"]["meteor_synonyms"] is True


class _NoSynonyms:
    @staticmethod
    def synsets(*_args, **_kwargs) -> list:  # noqa: ANN002, ANN003
        return []


def test_meteor_matches_wordnet_synonyms(oai: openai.OpenAI) -> None:
    # WordNet comes from the Debian package `make test` installs (/usr/share/wordnet), as on an
    # air-gapped server: nltk's own download is not there. "automobile"/"car" and "quick"/"fast"
    # share synsets, so METEOR with synonyms scores above the exact-words score nltk gives.
    sample, label = "the automobile is very quick", "the car is very fast"
    exact = meteor_score([label.split()], sample.split(), wordnet=_NoSynonyms())
    found = _run(oai, _similar("meteor"), sample=sample, item={"label": label})
    assert found["metadata"]["scores"]["meteor_synonyms"] is True
    assert found["reward"] > exact + 0.1, (found["reward"], exact)


def test_a_python_grader_scores_and_its_sandbox_holds(oai: openai.OpenAI, tmp_path) -> None:  # noqa: ANN001
    def python(body: str) -> dict:
        return _run(oai, {"type": "python", "name": "py", "source": f"def grade(sample, item):\n{body}"})

    good = python("    import json, math\n    return 1.0 if sample['output_text'].split()[1] == item['label'].split()[1] else 0.0")
    assert good["reward"] == 1.0 and not any(v is True for v in good["metadata"]["errors"].values())
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    refused = {
        "network": "    import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return 1",
        "file outside": f"    return len(open({str(outside)!r}).read())",
        "write outside": f"    open({str(tmp_path / 'new.txt')!r}, 'w').write('x')\n    return 1",
        "process": "    import subprocess\n    subprocess.run(['true'])\n    return 1",
        "cpu": "    while True:\n        pass",
        "wall clock": "    import time\n    time.sleep(30)",
        "memory": "    return len(bytearray(1 << 30))",
        "output": "    import os\n    os.write(1, b'x' * 1_000_000)\n    return 1",
        "chdir then write": f"    import os\n    os.chdir({str(tmp_path)!r})\n    open('new.txt', 'w').write('x')\n    return 1",
        "rename out": f"    import os\n    open('s.txt', 'w').write('x')\n    os.rename('s.txt', {str(tmp_path / 'new.txt')!r})\n    return 1",
        "symlink out": f"    import os\n    os.symlink('s.txt', {str(tmp_path / 'new.txt')!r})\n    return 1",
        "dir fd": f"    import os\n    d = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
                  "    os.close(os.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d))\n    return 1",
        "error": "    return 1 / 0",
        "not a number": "    return 'high'",
    }
    reasons = {"network": "socket", "file outside": "scratch folder", "write outside": "scratch folder",
               "process": "subprocess", "cpu": "CPU-time limit", "wall clock": "wall-clock limit",
               "memory": "512 MiB", "output": "more than 4096 bytes", "error": "ZeroDivisionError",
               "chdir then write": "scratch folder", "rename out": "scratch folder",
               "symlink out": "scratch folder", "dir fd": "scratch folder",
               "not a number": "not a finite number"}
    for case, body in refused.items():
        found = python(body)
        errors = found["metadata"]["errors"]
        assert found["reward"] == 0 and errors["python_grader_runtime_error"], case
        assert reasons[case] in errors["python_grader_runtime_error_details"], (case, errors)
    assert not (tmp_path / "new.txt").exists()
    # Scratch files are the grader's own.
    assert python("    open('s.txt', 'w').write('abc')\n    return float(len(open('s.txt').read()))")["reward"] == 3.0


def test_multi_grader_combines_named_graders(oai: openai.OpenAI) -> None:
    grader = {"type": "multi", "name": "both", "calculate_output": "0.25 * fuzzy + 0.75 * exact",
              "graders": {"fuzzy": _similar("fuzzy_match"),
                          "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                                    "reference": "{{item.label}}", "operation": "eq"}}}
    found = _run(oai, grader)
    assert found["sub_rewards"] == {"fuzzy": pytest.approx(fuzz.ratio(SAMPLE, LABEL) / 100), "exact": 0.0}
    assert found["reward"] == pytest.approx(0.25 * fuzz.ratio(SAMPLE, LABEL) / 100)


def test_a_missing_variable_scores_zero_with_the_flag(oai: openai.OpenAI) -> None:
    found = _run(oai, _similar("fuzzy_match"), item={"answer": LABEL})
    assert found["reward"] == 0 and found["metadata"]["errors"]["invalid_variable_error"]


def test_validate_echoes_a_good_grader_and_names_what_is_wrong(oai: openai.OpenAI, live) -> None:  # noqa: ANN001
    good = {"type": "string_check", "name": "Example string check grader", "input": "{{sample.output_text}}",
            "reference": "{{item.label}}", "operation": "eq"}
    answer = oai.fine_tuning.alpha.graders.validate(grader=good).model_dump(mode="json", exclude_unset=True)
    assert answer == {"grader": good}
    assert violations("#/components/schemas/ValidateGraderResponse", answer) == []
    bad = {
        "grader.input": {**good, "input": "{{output_text}}"},
        "grader.evaluation_metric": _similar("cosine"),
        "grader.source": {"type": "python", "name": "p", "source": "def grade(sample, item:\n  return 1"},
        "grader.calculate_output": {"type": "multi", "name": "m", "graders": {"a": good},
                                    "calculate_output": "a + b"},
        "grader.graders.a.reference": {"type": "multi", "name": "m", "calculate_output": "a",
                                       "graders": {"a": {**good, "reference": "{{ label }}"}}},
        "grader.model": {"type": "score_model", "name": "judge", "model": "no-such-model",
                         "input": [{"role": "user", "content": "Score {{sample.output_text}}"}]},
    }
    url, keys = live
    for param, grader in bad.items():
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            oai.fine_tuning.alpha.graders.validate(grader=grader)
        error = refused.value.body
        assert error["param"] == param and error["type"] == "invalid_request_error", (param, error)
        assert "Traceback" not in error["message"]
        native = httpx.post(f"{url}/graders/validate", json={"grader": grader},
                            headers={"Authorization": f"Bearer {keys['acme']}"})
        assert native.status_code == 422 and native.json()["error"]["param"] == param
    # A misspelt field is named, not ignored.
    with pytest.raises(openai.BadRequestError) as refused:
        oai.fine_tuning.alpha.graders.validate(grader={**good, "operaton": "eq"})
    assert "operaton" in refused.value.body["message"]


def test_the_native_route_answers_the_same(live) -> None:  # noqa: ANN001
    url, keys = live
    body = {"grader": _similar("rouge_l"), "model_sample": SAMPLE, "item": {"label": LABEL}}
    native = httpx.post(f"{url}/graders/run", json=body, headers={"Authorization": f"Bearer {keys['acme']}"})
    v1 = httpx.post(f"{url}/v1/fine_tuning/alpha/graders/run", json=body,
                    headers={"Authorization": f"Bearer {keys['acme']}"})
    assert native.status_code == v1.status_code == 200
    assert native.json()["reward"] == v1.json()["reward"] > 0
    assert httpx.post(f"{url}/graders/run", json=body).status_code == 401


def test_the_sdk_and_cli_validate_and_run(live, tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from tunedock import BadRequestError, Client
    from tunedock.cli import main

    url, keys = live
    grader = {"type": "multi", "name": "m", "calculate_output": "max(exact, 0.5 * fuzzy)",
              "graders": {"exact": {"type": "string_check", "name": "e", "input": "{{sample.output_text}}",
                                    "reference": "{{item.label}}", "operation": "ilike"},
                          "fuzzy": _similar("fuzzy_match")}}
    with Client(url, keys["acme"]) as client:
        assert client.graders.validate(grader) == grader
        found = client.graders.run(grader, "PARIS", {"label": "paris"})
        assert found.reward == 1.0 and found.sub_rewards["exact"] == 1.0
        with pytest.raises(BadRequestError) as refused:  # the SDK's error for 400 and 422
            client.graders.validate({**grader, "calculate_output": "exact +"})
        assert refused.value.param == "grader.calculate_output"
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(grader))
    common = ["--base-url", url, "--api-key", keys["acme"]]
    assert main([*common, "graders", "validate", str(path)]) == 0
    assert main([*common, "graders", "run", str(path), "--sample", "Lyon", "--item", '{"label": "Paris"}']) == 0
    printed = capsys.readouterr().out
    assert "valid: multi grader 'm'" in printed
    assert f"reward: {0.5 * fuzz.ratio('Lyon', 'Paris') / 100:g}" in printed


def test_a_jobs_eval_is_checked_when_the_job_is_created(live) -> None:  # noqa: ANN001
    """What the training child could not grade is refused at POST /jobs (422, naming the field),
    before any GPU time: a judge model this key may not chat with, a bad template, items it cannot
    prompt, and eval items beside eval_prompts."""
    url, keys = live
    good = {"type": "string_check", "name": "w", "input": "{{sample.output_text}}",
            "reference": "{{item.label}}", "operation": "ilike"}
    judge = {"type": "score_model", "name": "j", "model": "no-such-judge",
             "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    cases = {
        "eval.grader.model": ({"grader": judge, "items": [{"prompt": "q"}]}, {}),
        "eval.grader.reference": ({"grader": {**good, "reference": "{{label}}"}, "items": [{"prompt": "q"}]}, {}),
        "eval.items[1]": ({"grader": good, "items": [{"prompt": "q"}, {"label": "no prompt"}]}, {}),
        "eval.items[0]": ({"grader": good, "items": [{"messages": [{"role": "user", "content": 5}]}]}, {}),
        "eval": ({"grader": good, "items": [{"prompt": "q"}]}, {"eval_prompts": ["q"]}),
        "eval.early_stopping_patience": ({"grader": good, "items": [{"prompt": "q"}], "early_stopping_patience": 1},
                                         {"early_stopping_patience": 1}),
    }
    for param, (body, hp) in cases.items():
        answer = httpx.post(f"{url}/jobs", headers={"Authorization": f"Bearer {keys['acme']}"},
                            json={"base_model": "tiny", "training_file": "file-nothere", "eval": body,
                                  "hyperparameters": hp})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == param, (param, answer.text)
    # OpenAI's create body takes the same eval as an extra field (the SDK's extra_body).
    auth = {"Authorization": f"Bearer {keys['acme']}"}
    answer = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=auth, json={
        "model": "tiny", "training_file": "file-nothere", "eval": {"grader": judge, "items": [{"prompt": "q"}]}})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == "eval.grader.model"
    assert answer.json()["error"]["type"] == "invalid_request_error"
    upload = httpx.post(f"{url}/v1/files", headers=auth, data={"purpose": "fine-tune"},
                        files={"file": ("t.jsonl", b'{"text": "a b c"}\n' * 8)})
    assert upload.status_code == 200, upload.text
    created = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=auth, json={
        "model": "tiny", "training_file": upload.json()["id"], "deploy": False,
        "eval": {"grader": good, "items": [{"prompt": "q", "label": "w"}], "checkpoint_selection": "score"}})
    assert created.status_code == 200, created.text
    native = httpx.get(f"{url}/jobs/{created.json()['id']}", headers=auth).json()
    assert {k: native["eval"]["grader"].get(k) for k in good} == good, native
    assert native["eval"]["checkpoint_selection"] == "score", native
