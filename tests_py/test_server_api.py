"""`ember serve` through the official `openai` client: completions and chat, streaming and not,
n > 1, logprobs, stop, seeds, usage, echo, logit_bias and the chat template, on the tiny llama
checkpoint. Greedy text is compared with ember.Engine on the same checkpoint."""

import httpx
import openai
import pytest

from conftest import (
    SERVER_API_KEY,
    SERVER_CHAT_TEMPLATE,
    SERVER_MODEL_NAMES,
    cpu_engine,
    train_tokenizer,
)
from ember import SamplingParams

PROMPT = "The river starts high in the hills"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key=SERVER_API_KEY)


@pytest.fixture(scope="module")
def http(tiny_server):
    headers = {"Authorization": f"Bearer {SERVER_API_KEY}"}
    with httpx.Client(base_url=tiny_server.base_url, headers=headers, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return cpu_engine(tiny_checkpoint("llama"))


def greedy(max_tokens, **fields):
    return {"temperature": 0, "max_tokens": max_tokens, **fields}


def test_models_lists_the_served_names(client):
    models = client.models.list()
    assert [m.id for m in models.data] == list(SERVER_MODEL_NAMES)
    assert client.models.retrieve("tiny-alias").id == "tiny-alias"


def test_completion_matches_the_offline_engine(client, reference):
    response = client.completions.create(model="tiny", prompt=PROMPT, **greedy(12))
    expected = reference.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12))[0]
    assert response.object == "text_completion"
    assert response.model == "tiny"
    assert response.id.startswith("cmpl-")
    (choice,) = response.choices
    assert choice.text == expected.outputs[0].text
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.usage.completion_tokens == 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_alias_and_omitted_model_answer_as_the_first_name(client, http):
    response = client.completions.create(model="tiny-alias", prompt=PROMPT, **greedy(2))
    assert response.model == "tiny"
    response = http.post("/v1/completions", json={"prompt": PROMPT, **greedy(2)})
    assert response.status_code == 200 and response.json()["model"] == "tiny"


def test_stream_reassembles_to_the_same_text(client):
    whole = client.completions.create(model="tiny", prompt=PROMPT, **greedy(16))
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
            **greedy(16),
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    # A busy machine may merge every delta into one chunk, so earlier chunks may not exist.
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(http):
    body = {"model": "tiny", "prompt": PROMPT, "stream": True, **greedy(3)}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1])


def test_n_samples_with_a_seed_are_reproducible(client):
    fields = {"model": "tiny", "prompt": PROMPT, "n": 3, "temperature": 1.0, "max_tokens": 8}
    first = client.completions.create(seed=7, **fields)
    again = client.completions.create(seed=7, **fields)
    other = client.completions.create(seed=8, **fields)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]
    assert texts != [c.text for c in other.choices]
    assert len(set(texts)) > 1  # the samples differ from each other
    assert first.usage.completion_tokens == 3 * 8


def test_n_samples_stream_per_index(client):
    fields = {"model": "tiny", "prompt": PROMPT, "n": 2, "temperature": 1.0, "max_tokens": 6}
    whole = client.completions.create(seed=3, **fields)
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(seed=3, stream=True, **fields):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]


def test_prompt_list_gives_n_choices_per_prompt_in_order(client, reference):
    prompts = [PROMPT, "Once upon a time"]
    response = client.completions.create(model="tiny", prompt=prompts, n=2, **greedy(5))
    expected = reference.generate(prompts, SamplingParams(temperature=0, max_tokens=5))
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text for c in response.choices] == [
        expected[0].outputs[0].text,
        expected[0].outputs[0].text,
        expected[1].outputs[0].text,
        expected[1].outputs[0].text,
    ]
    assert response.usage.prompt_tokens == sum(len(e.prompt_token_ids) for e in expected)


def test_prompt_list_streams_every_choice(client):
    prompts = [PROMPT, "Once upon a time", "What is the capital of France?"]
    whole = client.completions.create(model="tiny", prompt=prompts, n=2, **greedy(6))
    texts = [""] * 6
    finishes = [None] * 6
    for chunk in client.completions.create(
        model="tiny", prompt=prompts, n=2, stream=True, **greedy(6)
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.text for c in whole.choices]
    assert finishes == ["length"] * 6


def test_token_id_prompt(client, reference):
    token_ids = train_tokenizer()(PROMPT).input_ids
    response = client.completions.create(model="tiny", prompt=token_ids, **greedy(6))
    expected = reference.generate(PROMPT, SamplingParams(temperature=0, max_tokens=6))[0]
    assert response.choices[0].text == expected.outputs[0].text


def test_completion_logprobs_legacy_shape(client):
    response = client.completions.create(model="tiny", prompt=PROMPT, logprobs=3, **greedy(6))
    choice = response.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == 6
    offsets = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]
    assert logprobs.text_offset == offsets
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert token in top and top[token] == pytest.approx(logprob)
        assert 1 <= len(top) <= 4
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the most likely
        assert logprob <= 0


def test_echo_with_logprobs_scores_the_prompt(client, reference):
    plain = client.completions.create(model="tiny", prompt=PROMPT, **greedy(4))
    echoed = client.completions.create(
        model="tiny", prompt=PROMPT, echo=True, logprobs=2, **greedy(4)
    )
    choice = echoed.choices[0]
    assert choice.text == PROMPT + plain.choices[0].text
    expected = reference.generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2)
    )[0]
    prompt_ids = expected.prompt_token_ids
    num_prompt_tokens = echoed.usage.prompt_tokens
    assert num_prompt_tokens == len(prompt_ids)
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == num_prompt_tokens + 4
    # OpenAI's shape: null for the first prompt token, then each token's logprob and a top dict
    # holding it and the 2 most likely.
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for position in range(1, num_prompt_tokens):
        scored = expected.prompt_logprobs[position][prompt_ids[position]]
        assert logprobs.token_logprobs[position] == pytest.approx(scored.logprob, abs=1e-5)
        top = logprobs.top_logprobs[position]
        assert logprobs.tokens[position] in top
        assert 2 <= len(top) <= 3
    assert all(lp is not None for lp in logprobs.token_logprobs[num_prompt_tokens:])
    assert logprobs.text_offset[num_prompt_tokens] == len(PROMPT)

    streamed = client.completions.create(
        model="tiny", prompt=PROMPT, echo=True, logprobs=2, stream=True, **greedy(4)
    )
    chunks = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    joined = [lp for chunk in chunks for lp in chunk.token_logprobs]
    assert joined[0] is None
    assert joined[1:] == pytest.approx(logprobs.token_logprobs[1:], abs=1e-6)


def test_prompt_logprobs_extra_field_in_vllm_shape(client, http, reference):
    expected = reference.generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    )[0]
    response = client.completions.create(
        model="tiny", prompt=PROMPT, extra_body={"prompt_logprobs": 1}, **greedy(2)
    )
    scored = response.choices[0].model_extra["prompt_logprobs"]
    assert scored[0] is None and len(scored) == len(expected.prompt_token_ids)
    for position in range(1, len(scored)):
        token_id = expected.prompt_token_ids[position]
        entry = scored[position][str(token_id)]
        theirs = expected.prompt_logprobs[position][token_id]
        assert entry["logprob"] == pytest.approx(theirs.logprob, abs=1e-5)
        assert entry["rank"] == theirs.rank
        assert entry["decoded_token"] == theirs.decoded_token
        assert any(e["rank"] == 1 for e in scored[position].values())

    chat = client.chat.completions.create(
        model="tiny", messages=MESSAGES, extra_body={"prompt_logprobs": 0}, **greedy(2)
    )
    chat_scored = chat.model_extra["prompt_logprobs"]
    assert chat_scored[0] is None and len(chat_scored) == chat.usage.prompt_tokens

    refused = http.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": PROMPT, "prompt_logprobs": 1, "stream": True},
    )
    assert refused.status_code == 400
    assert "prompt_logprobs is not supported with stream" in refused.json()["error"]["message"]
    too_many = http.post(
        "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "prompt_logprobs": 21}
    )
    assert too_many.status_code == 400
    assert "prompt_logprobs must be in [0, 20], got 21" in too_many.json()["error"]["message"]


def test_stop_string_truncates_and_is_reported(client):
    full = client.completions.create(model="tiny", prompt=PROMPT, **greedy(16)).choices[0].text
    stop = full[5:8]
    position = full.index(stop)
    for stream in (False, True):
        response = client.completions.create(
            model="tiny", prompt=PROMPT, stop=[stop, "never appears"], stream=stream, **greedy(16)
        )
        if stream:
            chunks = [c.choices[0] for c in response if c.choices]
            text, last = "".join(c.text for c in chunks), chunks[-1]
        else:
            last = response.choices[0]
            text = last.text
        assert text == full[:position]
        assert last.finish_reason == "stop"
        assert last.model_extra["stop_reason"] == stop


def test_logit_bias_forces_and_bans_tokens(client, reference):
    tokenizer = train_tokenizer()
    token_id = tokenizer(" the", add_special_tokens=False).input_ids[0]
    forced = client.completions.create(
        model="tiny", prompt=PROMPT, logit_bias={str(token_id): 100}, **greedy(5)
    )
    assert forced.choices[0].text == tokenizer.decode([token_id] * 5)
    greedy_output = reference.generate(PROMPT, SamplingParams(temperature=0, max_tokens=1))[0]
    first_id = greedy_output.outputs[0].token_ids[0]
    banned = client.completions.create(
        model="tiny", prompt=PROMPT, logit_bias={str(first_id): -100}, logprobs=0, **greedy(1)
    )
    assert banned.choices[0].logprobs.tokens[0] != tokenizer.decode([first_id])


def test_sampling_extras_are_accepted(client):
    response = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=4,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=1,
        user="someone",
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.2,
            "min_tokens": 4,
            "ignore_eos": True,
            "stop_token_ids": [2],
            "skip_special_tokens": False,
        },
    )
    assert response.usage.completion_tokens == 4


def test_max_tokens_null_fills_the_context(client):
    response = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=None, extra_body={"ignore_eos": True}
    )
    assert response.usage.total_tokens == 256  # the tiny checkpoint's max_position_embeddings
    assert response.choices[0].finish_reason == "length"


# ----- chat ------------------------------------------------------------------------------------


def _template_prompt_tokens(messages) -> int:
    tokenizer = train_tokenizer()
    text = tokenizer.apply_chat_template(
        messages, chat_template=SERVER_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_chat_applies_the_server_chat_template(client, reference):
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, **greedy(8))
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.usage.prompt_tokens == _template_prompt_tokens(MESSAGES)
    (expected,) = reference.chat(
        MESSAGES, SamplingParams(temperature=0, max_tokens=8), chat_template=SERVER_CHAT_TEMPLATE
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.outputs[0].text
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8


def test_chat_request_template_overrides_the_server_one(client):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, extra_body={"chat_template": template}, **greedy(2)
    )
    tokenizer = train_tokenizer()
    expected = len(tokenizer(MESSAGES[0]["content"], add_special_tokens=False).input_ids)
    assert response.usage.prompt_tokens == expected


def test_chat_text_parts_are_joined(client):
    parts = [
        {"type": "text", "text": "What is the capital"},
        {"type": "text", "text": "of France?"},
    ]
    joined = [{"role": "user", "content": "What is the capital\nof France?"}]
    a = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": parts}], **greedy(5)
    )
    b = client.chat.completions.create(model="tiny", messages=joined, **greedy(5))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_chat_stream_role_first_then_content(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, **greedy(10))
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **greedy(10),
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage == whole.usage


def test_chat_logprobs_shape(client):
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=3, **greedy(5)
    )
    content = response.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy
        assert entry.logprob == pytest.approx(values[0])
        assert entry.bytes == list(entry.token.encode())
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, **greedy(2))
    assert plain.choices[0].logprobs is None


def test_chat_n_and_seed(client):
    fields = {"model": "tiny", "messages": MESSAGES, "n": 2, "max_tokens": 6, "temperature": 1}
    first = client.chat.completions.create(seed=11, **fields)
    again = client.chat.completions.create(seed=11, **fields)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_chat_echo_prepends_the_last_assistant_message(client):
    prefill = [*MESSAGES, {"role": "assistant", "content": "The capital is"}]
    fields = {"model": "tiny", "messages": prefill, **greedy(4)}
    plain = client.chat.completions.create(**fields).choices[0].message.content
    echoed = client.chat.completions.create(extra_body={"echo": True}, **fields)
    assert echoed.choices[0].message.content == "The capital is" + plain
    streamed = client.chat.completions.create(stream=True, extra_body={"echo": True}, **fields)
    content = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert content == "The capital is" + plain
    user_last = client.chat.completions.create(
        model="tiny", messages=MESSAGES, extra_body={"echo": True}, **greedy(4)
    )
    assert not user_last.choices[0].message.content.startswith(MESSAGES[0]["content"])


def test_chat_max_completion_tokens_wins_over_max_tokens(client):
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=9, max_completion_tokens=3
    )
    assert response.usage.completion_tokens == 3


def test_chat_default_max_tokens_fills_the_context(client):
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True}
    )
    assert response.usage.total_tokens == 256


# ----- the other routes ------------------------------------------------------------------------


def test_tokenize_and_detokenize(http):
    tokenizer = train_tokenizer()
    response = http.post("/tokenize", json={"prompt": PROMPT})
    assert response.status_code == 200
    body = response.json()
    assert body["tokens"] == tokenizer(PROMPT).input_ids
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 256
    chat = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] == _template_prompt_tokens(MESSAGES)
    with_bos = http.post("/tokenize", json={"messages": MESSAGES, "add_special_tokens": True})
    assert with_bos.json()["tokens"] == [tokenizer.bos_token_id, *chat["tokens"]]
    back = http.post("/detokenize", json={"tokens": body["tokens"]})
    assert back.json() == {"prompt": tokenizer.decode(body["tokens"])}


def test_version_and_health(http):
    import ember

    assert http.get("/version").json() == {"version": ember.__version__}
    assert http.get("/health").status_code == 200


def test_metrics_count_requests_and_tokens(http, client):
    before = _metrics(http)
    client.completions.create(model="tiny", prompt=PROMPT, **greedy(5))
    after = _metrics(http)
    assert after["ember:generation_tokens_total"] - before["ember:generation_tokens_total"] == 5
    assert after["ember:prompt_tokens_total"] > before["ember:prompt_tokens_total"]
    assert after["ember:time_to_first_token_seconds_count"] == (
        before["ember:time_to_first_token_seconds_count"] + 1
    )
    assert after["ember:e2e_request_latency_seconds_count"] == (
        before["ember:e2e_request_latency_seconds_count"] + 1
    )
    for name in (
        "ember:num_requests_running",
        "ember:num_requests_waiting",
        "ember:kv_cache_usage_perc",
        "ember:prefix_cache_hit_rate",
        "ember:prefix_cache_queries_total",
        "ember:prefix_cache_hits_total",
        "ember:num_preemptions_total",
        "ember:inter_token_latency_seconds_count",
    ):
        assert name in after


def _metrics(http) -> dict[str, float]:
    """Sample name (labels dropped; one model) -> value, from /metrics."""
    response = http.get("/metrics")
    assert response.status_code == 200
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name_and_labels, value = line.rsplit(" ", 1)
            values[name_and_labels.split("{")[0]] = float(value)
    return values
