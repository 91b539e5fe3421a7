"""The gateway's replica choice: stable per model, spread over replicas, and moving only the
models of a replica that leaves."""

from collections import Counter

from service.api.gateway import pick_upstream

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
