"""Every error the server answers: status code, OpenAI's error shape and a message naming the
problem; after each bad request the server still serves a good one. Also the API key on every
route, and schemathesis against the server's own /openapi.json (no 5xx)."""

import json

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from conftest import SERVER_API_KEY, SERVER_MAX_BODY_BYTES, SERVER_MAX_N

AUTH = {"Authorization": f"Bearer {SERVER_API_KEY}"}
GOOD_COMPLETION = {"model": "tiny", "prompt": "The river", "max_tokens": 3, "temperature": 0}
GOOD_CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
    "temperature": 0,
}
CONTEXT = 256  # the tiny checkpoint's max_model_len


@pytest.fixture(scope="module")
def http(tiny_server):
    with httpx.Client(base_url=tiny_server.base_url, headers=AUTH, timeout=60) as c:
        yield c


def _prompt_tokens(http, prompt: str) -> int:
    return http.post("/tokenize", json={"prompt": prompt}).json()["count"]


def assert_error(response, status: int, *fragments: str, param: str | None = "any"):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    if param != "any":
        assert error["param"] == param


def assert_still_serves(http):
    completion = http.post("/v1/completions", json=GOOD_COMPLETION)
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] == 3
    chat = http.post("/v1/chat/completions", json=GOOD_CHAT)
    assert chat.status_code == 200, chat.text


COMPLETION_ERRORS = [
    # (fields replacing GOOD_COMPLETION's, status, message fragments, param)
    ({"max_tokens": -5}, 400, ["max_tokens must be at least 1, got -5"], "max_tokens"),
    ({"max_tokens": 0}, 400, ["max_tokens must be at least 1"], "max_tokens"),
    ({"temperature": -0.5}, 400, ["temperature", "-0.5"], "temperature"),
    ({"temperature": "hot"}, 400, ["temperature"], "temperature"),
    ({"top_p": 1.5}, 400, ["top_p", "(0, 1]"], "top_p"),
    ({"logprobs": 21}, 400, ["logprobs must be in [0, 20], got 21"], "logprobs"),
    ({"logprobs": -1}, 400, ["logprobs"], "logprobs"),
    ({"n": SERVER_MAX_N + 1}, 400, [f"at most {SERVER_MAX_N}", "--max-n"], "n"),
    ({"n": 0}, 400, ["n must be at least 1"], "n"),
    ({"prompt": ""}, 400, ["prompt is empty"], "prompt"),
    ({"prompt": []}, 400, ["prompt is empty"], "prompt"),
    ({"prompt": ["fine", ""]}, 400, ["prompt 1 is empty"], "prompt"),
    ({"prompt": 42}, 400, ["prompt must be one of"], "prompt"),
    ({"prompt": {"text": "hi"}}, 400, ["prompt must be one of"], "prompt"),
    ({"prompt": [1, "a"]}, 400, ["prompt must be one of"], "prompt"),
    ({"prompt": [1, 2, 100000]}, 400, ["100000", "outside the vocabulary"], "prompt"),
    ({"prompt": [1, -3]}, 400, ["-3", "outside the vocabulary"], "prompt"),
    ({"stop": ["ok", ""]}, 400, ["stop"], "stop"),
    (
        {"stop_token_ids": [100000]},
        400,
        ["stop_token_ids", "outside the vocabulary"],
        "stop_token_ids",
    ),
    ({"logit_bias": {"x": 1}}, 400, ["logit_bias keys must be token ids"], "logit_bias"),
    ({"logit_bias": {"5": 500}}, 400, ["logit_bias", "[-100, 100]"], "logit_bias"),
    ({"logit_bias": {"100000": 5}}, 400, ["logit_bias", "outside the vocabulary"], "logit_bias"),
    ({"min_tokens": 9}, 400, ["min_tokens", "at most max_tokens"], "min_tokens"),
    ({"seed": -1}, 400, ["seed"], "seed"),
    ({"stream_options": {"include_usage": True}}, 400, ["stream: true"], "stream_options"),
    ({"suffix": "x"}, 400, ["suffix is not supported"], "suffix"),
    ({"use_beam_search": True}, 400, ["beam search is not supported"], "use_beam_search"),
    ({"response_format": {"type": "json_object"}}, 400, ["not supported"], "response_format"),
    ({"model": "gpt-4"}, 404, ["'gpt-4' does not exist", "'tiny'"], "model"),
]


@pytest.mark.parametrize(("fields", "status", "fragments", "param"), COMPLETION_ERRORS)
def test_completion_error(http, fields, status, fragments, param):
    response = http.post("/v1/completions", json={**GOOD_COMPLETION, **fields})
    assert_error(response, status, *fragments, param=param)
    assert_still_serves(http)


def test_missing_prompt(http):
    response = http.post("/v1/completions", json={"model": "tiny"})
    assert_error(response, 400, "prompt: Field required", param="prompt")
    assert_still_serves(http)


def test_max_tokens_beyond_the_context_names_both_lengths(http):
    num_prompt_tokens = _prompt_tokens(http, GOOD_COMPLETION["prompt"])
    response = http.post("/v1/completions", json={**GOOD_COMPLETION, "max_tokens": CONTEXT})
    assert_error(
        response,
        400,
        f"maximum context length is {CONTEXT} tokens",
        f"the prompt has {num_prompt_tokens} tokens",
        param="max_tokens",
    )
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert_still_serves(http)


def test_prompt_beyond_the_context(http):
    prompt = list(range(5, 5 + CONTEXT))  # CONTEXT token ids: no room left
    response = http.post("/v1/completions", json={**GOOD_COMPLETION, "prompt": prompt})
    assert_error(response, 400, f"context length is {CONTEXT}", f"has {CONTEXT} tokens")
    prompt = list(range(5, 5 + CONTEXT + 10))
    response = http.post("/v1/completions", json={**GOOD_COMPLETION, "prompt": prompt})
    assert_error(response, 400, f"has {CONTEXT + 10} tokens", param="prompt")
    assert_still_serves(http)


CHAT_ERRORS = [
    ({"max_tokens": -1}, 400, ["max_tokens must be at least 1"], "max_tokens"),
    ({"max_completion_tokens": 0}, 400, ["max_completion_tokens"], "max_completion_tokens"),
    ({"top_logprobs": 3}, 400, ["top_logprobs needs logprobs: true"], "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, 400, ["[0, 20], got 21"], "top_logprobs"),
    ({"messages": []}, 400, ["messages is empty"], "messages"),
    ({"messages": "hello"}, 400, ["messages"], "messages"),
    ({"messages": [{"content": "no role"}]}, 400, ["role: Field required"], "messages"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        ["'image_url'", "only", "text"],
        "messages",
    ),
    ({"chat_template": "{% if %}"}, 400, ["chat template could not render"], "messages"),
    ({"tools": [{"type": "function"}]}, 400, ["tools are not supported"], "tools"),
    ({"temperature": -1}, 400, ["temperature"], "temperature"),
    ({"n": SERVER_MAX_N + 1}, 400, [f"at most {SERVER_MAX_N}"], "n"),
    ({"model": "nope"}, 404, ["'nope' does not exist"], "model"),
]


@pytest.mark.parametrize(("fields", "status", "fragments", "param"), CHAT_ERRORS)
def test_chat_error(http, fields, status, fragments, param):
    response = http.post("/v1/chat/completions", json={**GOOD_CHAT, **fields})
    assert_error(response, status, *fragments, param=param)
    assert_still_serves(http)


def test_chat_max_tokens_beyond_the_context(http):
    response = http.post(
        "/v1/chat/completions", json={**GOOD_CHAT, "max_completion_tokens": CONTEXT}
    )
    assert_error(response, 400, f"maximum context length is {CONTEXT}", "the prompt has")
    assert_still_serves(http)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"prompt": "unterminated', "not valid JSON"),
        (b"{'single': 'quotes'}", "not valid JSON"),
        (b"", "request body is missing"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'"text"', "must be a JSON object, got a string"),
        (b"17", "must be a JSON object, got a number"),
        (b"null", "must be a JSON object, got null"),
    ],
)
def test_malformed_bodies(http, path, body, fragment):
    headers = {"Content-Type": "application/json"}
    response = http.post(path, content=body, headers=headers)
    assert_error(response, 400, fragment, param=None)
    assert_still_serves(http)


def test_body_without_json_content_type(http):
    response = http.post("/v1/completions", content=json.dumps(GOOD_COMPLETION))
    assert_error(response, 400, "Content-Type: application/json")
    assert_still_serves(http)


def test_body_above_the_limit(http):
    prompt = "word " * (SERVER_MAX_BODY_BYTES // 5 + 10)
    response = http.post("/v1/completions", json={**GOOD_COMPLETION, "prompt": prompt})
    assert_error(response, 413, f"the limit is {SERVER_MAX_BODY_BYTES} bytes", "--max-body-bytes")

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(SERVER_MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    response = http.post(
        "/v1/completions", content=chunked(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, f"the limit is {SERVER_MAX_BODY_BYTES} bytes")
    assert_still_serves(http)


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing"), 404, "no route GET /v1/nothing")
    assert_error(http.get("/v1/completions"), 405, "Method Not Allowed")
    assert_still_serves(http)


def test_tokenize_errors(http):
    assert_error(http.post("/tokenize", json={}), 400, "exactly one of prompt and messages")
    both = {"prompt": "a", "messages": GOOD_CHAT["messages"]}
    assert_error(http.post("/tokenize", json=both), 400, "exactly one of prompt and messages")
    assert_error(
        http.post("/detokenize", json={"tokens": [1, 100000]}),
        400,
        "token id 100000 at position 1 is outside the vocabulary",
        param="tokens",
    )
    assert_error(http.post("/tokenize", json={"prompt": "a", "model": "x"}), 404, "'x'")
    assert_still_serves(http)


def test_openai_client_raises_the_matching_errors(tiny_server):
    client = openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key=SERVER_API_KEY)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        client.completions.create(model="tiny", prompt="x", max_tokens=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=GOOD_CHAT["messages"])
    wrong = openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.models.list()
    assert client.completions.create(**GOOD_COMPLETION).usage.completion_tokens == 3


# ----- the API key -----------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny", None),
    ("POST", "/v1/completions", GOOD_COMPLETION),
    ("POST", "/v1/chat/completions", GOOD_CHAT),
    ("POST", "/tokenize", {"prompt": "The river"}),
    ("POST", "/detokenize", {"tokens": [5, 6]}),
    ("GET", "/version", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_api_key_on_every_route(tiny_server, method, path, body):
    url = tiny_server.base_url + path
    wrong_keys = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {SERVER_API_KEY}x"},
        {"Authorization": SERVER_API_KEY},  # without "Bearer "
        {"Authorization": f"Basic {SERVER_API_KEY}"},
    ]
    for headers in wrong_keys:
        response = httpx.request(method, url, json=body, headers=headers, timeout=30)
        assert_error(response, 401, "API key", param=None)
        assert response.headers["www-authenticate"] == "Bearer"
    response = httpx.request(method, url, json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text


def test_health_needs_no_key(tiny_server):
    assert httpx.get(f"{tiny_server.base_url}/health").status_code == 200


# ----- schemathesis ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(tiny_server):
    return schemathesis.openapi.from_url(f"{tiny_server.base_url}/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_schema_finds_no_server_error(case):
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=60)
