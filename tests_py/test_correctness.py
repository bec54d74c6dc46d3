"""The engine against Hugging Face transformers on tiny random checkpoints of every supported
architecture: greedy tokens equal (vLLM's near-tie rule) and logprobs close."""

import pytest

from conftest import ARCHITECTURES, cpu_engine
from ember import SamplingParams
from hf_reference import (
    check_logprobs_close,
    check_outputs_close,
    ember_sequences,
    encode,
    hf_greedy,
    load_hf_tokenizer,
    mixed_prompts,
)

MAX_TOKENS = 20
LOGPROB_ATOL = 1e-3


def greedy_params(max_tokens=MAX_TOKENS):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=5, ignore_eos=True)


def run_against_hf(checkpoint, hf_model, **engine_kwargs):
    tokenizer = load_hf_tokenizer(checkpoint)
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    prompts_ids = [encode(tokenizer, p) for p in prompts]

    engine = cpu_engine(checkpoint, **engine_kwargs)
    outputs = engine.generate(prompts, greedy_params(), use_tqdm=False)

    assert [list(o.prompt_token_ids) for o in outputs] == prompts_ids
    assert all(o.finished for o in outputs)
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)
    ours = ember_sequences(outputs)
    reference = hf_greedy(hf_model(checkpoint), prompts_ids, MAX_TOKENS)
    check_outputs_close(ours, reference)
    check_logprobs_close(ours, reference, atol=LOGPROB_ATOL)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_matches_hf(arch, tiny_checkpoint, hf_model):
    run_against_hf(tiny_checkpoint(arch), hf_model)


def test_explicit_float32_matches_hf(tiny_checkpoint, hf_model):
    run_against_hf(tiny_checkpoint("qwen2"), hf_model, dtype="float32")


def test_cumulative_logprob_is_sum_of_token_logprobs(tiny_checkpoint):
    engine = cpu_engine(tiny_checkpoint("llama"))
    (output,) = engine.generate("Hello", greedy_params(8), use_tqdm=False)
    completion = output.outputs[0]
    chosen = [
        step[t].logprob for t, step in zip(completion.token_ids, completion.logprobs, strict=True)
    ]
    assert completion.cumulative_logprob == pytest.approx(sum(chosen), abs=1e-4)
