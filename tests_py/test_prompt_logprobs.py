"""Prompt logprobs against Hugging Face transformers: every prompt token's logprob given the
tokens before it, its rank and the top N, for every architecture, and the same through
AsyncEngine's stream."""

import asyncio

import pytest
import torch

from conftest import ARCHITECTURES, cpu_engine
from ember import AsyncEngine, SamplingParams
from hf_reference import encode, load_hf_tokenizer

NUM_TOP = 5
LOGPROB_ATOL = 1e-3  # fp32 on both sides, as tests_py/test_correctness.py
PROMPTS = [
    "The quick brown fox jumps over the lazy dog, and then the dog",
    "Questions and answers: what is one plus one? Two. And two plus two?",
]


@torch.no_grad()
def hf_prompt_logprobs(model, prompt_ids):
    """log_softmax of the logits at each position but the last, in float64: row i scores token
    i + 1."""
    logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, dim=-1)


def check_against_hf(prompt_logprobs, prompt_ids, reference, num_top=NUM_TOP):
    assert prompt_logprobs[0] is None
    assert len(prompt_logprobs) == len(prompt_ids)
    for position in range(1, len(prompt_ids)):
        entry, row = prompt_logprobs[position], reference[position - 1]
        token = prompt_ids[position]
        assert entry[token].logprob == pytest.approx(row[token].item(), abs=LOGPROB_ATOL)
        assert entry[token].rank == 1 + int((row > row[token]).sum())
        top = {t: lp for t, lp in entry.items() if lp.rank is not None and lp.rank <= num_top}
        values, ids = torch.topk(row, num_top)
        # A near-tie at the edge of the top N may swap; the rest must agree.
        assert len(set(top) & set(ids.tolist())) >= num_top - 1, f"position {position}"
        for token_id, value in zip(ids.tolist(), values.tolist(), strict=True):
            if token_id in top:
                assert top[token_id].logprob == pytest.approx(value, abs=LOGPROB_ATOL)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_prompt_logprobs_match_hf(arch, tiny_checkpoint, hf_model):
    checkpoint = tiny_checkpoint(arch)
    tokenizer = load_hf_tokenizer(checkpoint)
    engine = cpu_engine(checkpoint)
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=NUM_TOP)
    outputs = engine.generate(PROMPTS, params, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        prompt_ids = encode(tokenizer, prompt)
        reference = hf_prompt_logprobs(hf_model(checkpoint), prompt_ids)
        check_against_hf(output.prompt_logprobs, prompt_ids, reference)
        assert all(
            lp.decoded_token == tokenizer.decode([t])
            for entry in output.prompt_logprobs[1:]
            for t, lp in entry.items()
        )


def test_chunked_prefill_and_a_cached_prefix_give_the_same_prompt_logprobs(
    tiny_checkpoint, hf_model
):
    checkpoint = tiny_checkpoint("qwen2")
    prompt_ids = encode(load_hf_tokenizer(checkpoint), PROMPTS[1] * 3)
    engine = cpu_engine(checkpoint, max_num_batched_tokens=16, block_size=16)
    prompt = {"prompt_token_ids": prompt_ids}
    engine.generate(prompt, SamplingParams(max_tokens=1), use_tqdm=False)  # caches it
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=2, n=2)
    (output,) = engine.generate(prompt, params, use_tqdm=False)
    assert output.num_cached_tokens == 0  # a prompt to score is computed whole
    check_against_hf(
        output.prompt_logprobs, prompt_ids, hf_prompt_logprobs(hf_model(checkpoint), prompt_ids), 2
    )


def test_without_prompt_logprobs_there_are_none(tiny_checkpoint):
    engine = cpu_engine(tiny_checkpoint("llama"))
    (output,) = engine.generate("Hello there", SamplingParams(max_tokens=2), use_tqdm=False)
    assert output.prompt_logprobs is None
    one_token = {"prompt_token_ids": [7]}
    (single,) = engine.generate(one_token, SamplingParams(max_tokens=2, prompt_logprobs=1))
    assert single.prompt_logprobs == [None]


def test_prompt_logprobs_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"prompt_logprobs must be in \[0, 20\], got 21"):
        SamplingParams(prompt_logprobs=21)


@pytest.mark.parametrize("output_kind", ["delta", "cumulative", "final_only"])
def test_async_stream_carries_them_once(tiny_checkpoint, output_kind):
    checkpoint = tiny_checkpoint("llama")
    reference = cpu_engine(checkpoint).generate(
        PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=6, prompt_logprobs=3)
    )[0]

    async def stream():
        async with AsyncEngine(str(checkpoint), device="cpu") as engine:
            params = SamplingParams(temperature=0.0, max_tokens=6, prompt_logprobs=3)
            return [
                out
                async for out in engine.generate(PROMPTS[0], params, "r", output_kind=output_kind)
            ]

    outputs = asyncio.run(stream())
    carried = [o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None]
    if output_kind == "delta":
        assert len(carried) == 1 and outputs[0].prompt_logprobs is not None
    else:
        assert len(carried) == len(outputs)
    got = carried[0]
    assert len(got) == len(reference.prompt_logprobs)
    for mine, theirs in zip(got[1:], reference.prompt_logprobs[1:], strict=True):
        assert mine.keys() == theirs.keys()
        for token_id in mine:
            assert mine[token_id].logprob == pytest.approx(theirs[token_id].logprob, abs=1e-5)
