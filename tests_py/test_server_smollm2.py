"""`ember serve` on the real default model (SmolLM2-135M-Instruct, CPU) through the official
`openai` client: its own chat template, greedy answers equal to ember.Engine's, streaming,
n > 1 with seeds, logprobs, stop strings and usage."""

import openai
import pytest

from conftest import cpu_engine
from ember import SamplingParams
from server_util import ServerProcess

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    process = ServerProcess(
        smollm2_dir,
        "--served-model-name",
        "smollm2",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--max-num-seqs",
        "8",
        log_dir=tmp_path_factory.mktemp("smollm2_server"),
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    return cpu_engine(smollm2_dir, max_model_len=MAX_MODEL_LEN, max_num_seqs=8)


def test_chat_uses_the_model_template_and_answers_paris(client, engine):
    response = client.chat.completions.create(
        model="smollm2", messages=FRANCE, temperature=0, max_tokens=12
    )
    (expected,) = engine.chat(FRANCE, SamplingParams(temperature=0, max_tokens=12))
    answer = response.choices[0].message.content
    assert "Paris" in answer
    assert answer == expected.outputs[0].text
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.usage.completion_tokens == len(expected.outputs[0].token_ids)


def test_chat_stream_equals_the_whole_answer(client):
    fields = {"model": "smollm2", "messages": FRANCE, "temperature": 0, "max_tokens": 12}
    whole = client.chat.completions.create(**fields).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **fields))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole


def test_completion_n_seed_logprobs_stop(client, engine):
    prompt = "The history of the Roman empire"
    fields = {"model": "smollm2", "prompt": prompt, "max_tokens": 10}
    sampled = client.completions.create(n=2, temperature=0.8, seed=5, **fields)
    again = client.completions.create(n=2, temperature=0.8, seed=5, **fields)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]

    greedy = client.completions.create(temperature=0, logprobs=2, **fields)
    (expected,) = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=10))
    choice = greedy.choices[0]
    assert choice.text == expected.outputs[0].text
    assert len(choice.logprobs.tokens) == 10
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)

    stop = choice.text.split()[1]
    stopped = client.completions.create(temperature=0, stop=stop, **fields).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == choice.text[: choice.text.index(stop)]
