"""Features that must not change outputs, on the GPU: prefix caching, chunked prefill,
preemption and batching, each run with the feature and without it. bf16 GEMMs may pick other
algorithms for other numbers of tokens, so greedy runs are compared under vLLM's near-tie rule
(check_outputs_close); seeded sampling must give the same tokens whatever the batch."""

import random

import pytest

from conftest import cuda_engine
from ember import SamplingParams
from hf_reference import (
    check_outputs_close,
    ember_sequences,
    greedy_params,
    load_hf_tokenizer,
    mixed_prompts,
)

pytestmark = pytest.mark.gpu
MAX_TOKENS = 16


def prompts_of(checkpoint):
    tokenizer = load_hf_tokenizer(checkpoint)
    return mixed_prompts(tokenizer, len(tokenizer))


def ordinary_token_ids(checkpoint, count, seed):
    tokenizer = load_hf_tokenizer(checkpoint)
    special = set(tokenizer.all_special_ids)
    ordinary = [t for t in range(len(tokenizer)) if t not in special]
    rng = random.Random(seed)
    return [rng.choice(ordinary) for _ in range(count)]


def greedy_run(checkpoint, prompts, max_tokens=MAX_TOKENS, **engine_kwargs):
    """Greedy outputs of a fresh engine, and its stats after the run."""
    engine = cuda_engine(checkpoint, **engine_kwargs)
    outputs = engine.generate(prompts, greedy_params(max_tokens), use_tqdm=False)
    return outputs, engine.stats()


def assert_close(got_outputs, want_outputs, what):
    check_outputs_close(ember_sequences(got_outputs), ember_sequences(want_outputs), what, "base")


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_prefix_caching_on_matches_off(arch, tiny_checkpoint):
    checkpoint = tiny_checkpoint(arch)
    # Two waves sharing a 64-token prefix (four 16-token blocks); one prompt is the bare prefix,
    # so a full hit must still compute its last token.
    prefix = ordinary_token_ids(checkpoint, 64, seed=1)
    suffixes = [ordinary_token_ids(checkpoint, n, seed=n) for n in (3, 10, 17)]
    first = [prefix + suffixes[0], prefix]
    second = [prefix + suffixes[1], prefix + suffixes[2], prefix, prefix + suffixes[0]]
    results = {}
    for caching in (False, True):
        engine = cuda_engine(checkpoint, enable_prefix_caching=caching)
        engine.generate(first, greedy_params(MAX_TOKENS), use_tqdm=False)
        results[caching] = engine.generate(second, greedy_params(MAX_TOKENS), use_tqdm=False)
        cached = [o.num_cached_tokens for o in results[caching]]
        if caching:
            assert all(n > 0 for n in cached), f"second wave cached tokens: {cached}"
        else:
            assert cached == [0] * len(second)
        del engine
    assert_close(results[True], results[False], "prefix caching")


def test_chunked_prefill_matches_whole_prefill(tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    prompts = prompts_of(checkpoint)
    want, _ = greedy_run(checkpoint, prompts, enable_prefix_caching=False)
    # 16 tokens a step: the 37-, ~70- and 118-token prompts take several chunks each.
    got, _ = greedy_run(
        checkpoint, prompts, max_num_batched_tokens=16, max_num_seqs=4, enable_prefix_caching=False
    )
    assert_close(got, want, "chunked prefill")


def test_preemption_matches_roomy_cache(tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    # Four 20-token prompts growing to 50 tokens need 4 x 4 blocks of 16; 6 blocks hold one
    # max-length (64-token) sequence and a bit, so running requests must be preempted.
    prompts = [ordinary_token_ids(checkpoint, 20, seed=s) for s in range(4)]
    want, _ = greedy_run(checkpoint, prompts, max_tokens=30, max_model_len=64)
    got, stats = greedy_run(
        checkpoint, prompts, max_tokens=30, max_model_len=64, block_size=16, num_kv_blocks=6
    )
    assert stats.num_preemptions > 0
    assert_close(got, want, "preemption")


def test_prompt_alone_matches_prompt_in_batch(tiny_checkpoint):
    checkpoint = tiny_checkpoint("qwen2")
    prompts = prompts_of(checkpoint)
    engine = cuda_engine(checkpoint, enable_prefix_caching=False)
    params = greedy_params(MAX_TOKENS)
    alone = [engine.generate([p], params, use_tqdm=False)[0] for p in prompts]
    assert_close(engine.generate(prompts, params, use_tqdm=False), alone, "batched")
    reversed_batch = engine.generate(prompts[::-1], params, use_tqdm=False)[::-1]
    assert_close(reversed_batch, alone, "batched in reverse order")


def test_seeded_sample_is_the_same_alone_and_in_a_batch(tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    prompts = prompts_of(checkpoint)[:5]
    engine = cuda_engine(checkpoint, enable_prefix_caching=False)

    def seeded(index):
        return SamplingParams(temperature=0.8, seed=1000 + index, max_tokens=MAX_TOKENS)

    def tokens(outputs):
        return [list(o.outputs[0].token_ids) for o in outputs]

    alone = [tokens(engine.generate([p], seeded(i), False))[0] for i, p in enumerate(prompts)]
    # In a batch, between unseeded sampled and greedy requests, at other batch positions.
    others = [SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS), greedy_params(MAX_TOKENS)]
    batch_prompts, batch_params = [], []
    for i, prompt in enumerate(prompts):
        batch_prompts += [prompts[-1 - i], prompt]
        batch_params += [others[i % 2], seeded(i)]
    batched = tokens(engine.generate(batch_prompts, batch_params, use_tqdm=False))[1::2]
    for i, (got, want) in enumerate(zip(batched, alone, strict=True)):
        assert got == want, f"prompt {i}: in a batch {got}, alone {want}"


def test_async_scheduling_matches_one_step_at_a_time(tiny_checkpoint):
    """Async scheduling (the GPU default): each step's input ids come from the step before on
    the device. Under preemption, greedy outputs match one step at a time within the near-tie
    rule (steps can differ in shape); steps did run ahead."""
    checkpoint = tiny_checkpoint("llama")
    prompts = [ordinary_token_ids(checkpoint, 20, seed=s) for s in range(4)] + prompts_of(
        checkpoint
    )
    kwargs = {"max_tokens": 30, "max_model_len": 64, "block_size": 16, "num_kv_blocks": 8}
    want, _ = greedy_run(checkpoint, prompts, async_scheduling=False, **kwargs)
    got, stats = greedy_run(checkpoint, prompts, async_scheduling=True, **kwargs)
    assert stats.num_steps_launched_ahead > 0
    assert stats.num_preemptions > 0
    assert_close(got, want, "async scheduling")
