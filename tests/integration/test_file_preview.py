"""POST /files/{id}/preview: the whole file checked for a base model, its first rows rendered
with that model's chat template and split into trained and context text (the dashboard's "New
job" page, `files.preview` in the SDK, `tunedock files preview` in the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.settings import BaseModelEntry
from tests.conftest import Api, api_client
from tests.support.data import jsonl

ROWS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": f"Answer {i}."}]} for i in range(12)]


@pytest.fixture
async def smol_api(make_settings, smollm2_dir: Path, tiny_model_dir: Path):  # noqa: ANN001, ANN201
    # tiny: a model folder with no tokenizer, so no template to render with.
    settings = make_settings(base_models=(BaseModelEntry(alias="smollm2", source=str(smollm2_dir)),
                                          BaseModelEntry(alias="tiny", source=str(tiny_model_dir))))
    async with api_client(settings) as client:
        yield client


async def upload(api: Api, body: bytes, tenant: str = "acme") -> str:
    r = await api.client.post("/files", files={"file": ("rows.jsonl", body)}, headers=api.auth(tenant))
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_preview_renders_the_template_and_marks_the_trained_text(smol_api: Api) -> None:
    file_id = await upload(smol_api, jsonl(ROWS))
    r = await smol_api.client.post(f"/files/{file_id}/preview", json={"base_model": "smollm2"},
                                   headers=smol_api.auth())
    assert r.status_code == 200, r.text
    found = r.json()
    assert found["valid"] and found["n_examples"] == 12 and found["format"] == "chat"
    assert [row["line"] for row in found["rows"]] == [1, 2, 3]
    first = found["rows"][0]
    trained = [s["text"] for s in first["segments"] if s["trained"]]
    context = "".join(s["text"] for s in first["segments"] if not s["trained"])
    # SmolLM2's template: the answer and its end-of-turn token are trained, the rest is context.
    assert trained == ["Answer 0.<|im_end|>\n"]
    assert "<|im_start|>user\nQuestion 0?<|im_end|>" in context
    assert context.endswith("<|im_start|>assistant\n")
    assert first["trained_tokens"] == sum(s["tokens"] for s in first["segments"] if s["trained"])
    assert first["tokens"] == sum(s["tokens"] for s in first["segments"])
    # With train_on_inputs the prompt is trained too.
    r = await smol_api.client.post(f"/files/{file_id}/preview", headers=smol_api.auth(),
                                   json={"base_model": "smollm2", "n_rows": 1, "train_on_inputs": True})
    row = r.json()["rows"][0]
    assert row["trained_tokens"] > first["trained_tokens"] and len(r.json()["rows"]) == 1


async def test_a_bad_file_answers_its_errors_by_line(smol_api: Api) -> None:
    lines = [json.dumps(r) for r in ROWS]
    lines[1] = "{not json"
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    file_id = await upload(smol_api, ("\n".join(lines) + "\n").encode())
    r = await smol_api.client.post(f"/files/{file_id}/preview", json={"base_model": "smollm2"},
                                   headers=smol_api.auth())
    assert r.status_code == 200, r.text
    found = r.json()
    assert not found["valid"] and found["n_errors"] == 2
    assert [(e["line"], e["code"]) for e in found["errors"]] == [(2, "invalid_line"), (5, "invalid_line")]
    assert "invalid JSON" in found["errors"][0]["message"] and "assistant" in found["errors"][1]["message"]
    assert "line 2" in found["message"]
    # The rows that parse are still shown, skipping the bad ones.
    assert [row["line"] for row in found["rows"]] == [1, 3, 4]


async def test_preview_refusals_say_what_to_do(smol_api: Api) -> None:
    file_id = await upload(smol_api, jsonl(ROWS))
    post = smol_api.client.post
    other = await post(f"/files/{file_id}/preview", json={"base_model": "smollm2"}, headers=smol_api.auth("globex"))
    assert other.status_code == 404
    unknown = await post(f"/files/{file_id}/preview", json={"base_model": "gpt-9"}, headers=smol_api.auth())
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert "smollm2" in unknown.json()["error"]["message"]
    no_tokenizer = await post(f"/files/{file_id}/preview", json={"base_model": "tiny"}, headers=smol_api.auth())
    assert no_tokenizer.status_code == 422
    assert no_tokenizer.json()["error"] == {"code": "preview_unavailable", "param": "base_model",
                                            "message": no_tokenizer.json()["error"]["message"]}
    too_many = await post(f"/files/{file_id}/preview", json={"base_model": "smollm2", "n_rows": 99},
                          headers=smol_api.auth())
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n_rows"


async def test_preference_rows_show_both_answers(smol_api: Api) -> None:
    pairs = [{"prompt": [{"role": "user", "content": f"Say hi {i}"}], "chosen": f"Ahoy {i}!",
              "rejected": f"Hello {i}."} for i in range(10)]
    file_id = await upload(smol_api, jsonl(pairs))
    r = await smol_api.client.post(f"/files/{file_id}/preview", headers=smol_api.auth(),
                                   json={"base_model": "smollm2", "method": "dpo", "n_rows": 1})
    row = r.json()["rows"][0]
    assert r.json()["valid"], r.json()
    assert "Ahoy 0!" in "".join(s["text"] for s in row["segments"] if s["trained"])
    assert "Hello 0." in "".join(s["text"] for s in row["rejected_segments"] if s["trained"])


async def test_native_job_list_filters_by_metadata(api: Api) -> None:
    file_id = await upload(api, jsonl(ROWS))
    made = {}
    for team in ("search", "ads"):
        r = await api.client.post("/jobs", headers=api.auth(), json={
            "base_model": "tiny", "training_file": file_id, "metadata": {"team": team}})
        made[team] = r.json()["id"]
    listed = await api.client.get("/jobs", params={"metadata[team]": "ads"}, headers=api.auth())
    assert [j["id"] for j in listed.json()["data"]] == [made["ads"]]
    bad = await api.client.get("/jobs", params={"metadata": "team=ads"}, headers=api.auth())
    assert bad.status_code == 400 and "metadata[key]=value" in bad.json()["error"]["message"]
