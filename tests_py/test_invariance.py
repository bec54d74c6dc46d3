"""Features that must not change greedy outputs: each run is compared, token for token, with a
reference run of the same checkpoint without the feature."""

import random

import pytest

from conftest import cpu_engine
from ember import SamplingParams
from hf_reference import load_hf_tokenizer, mixed_prompts

MAX_TOKENS = 12


def greedy(max_tokens=MAX_TOKENS):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def generate_tokens(engine, prompts, max_tokens=MAX_TOKENS):
    outputs = engine.generate(prompts, greedy(max_tokens), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def assert_same_tokens(got, want, what):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, f"{what}: prompt {i} differs\n got {a}\nwant {b}"


def ordinary_token_ids(checkpoint, count, seed):
    tokenizer = load_hf_tokenizer(checkpoint)
    special = set(tokenizer.all_special_ids)
    ordinary = [t for t in range(len(tokenizer)) if t not in special]
    rng = random.Random(seed)
    return [rng.choice(ordinary) for _ in range(count)]


def checkpoint_prompts(checkpoint):
    tokenizer = load_hf_tokenizer(checkpoint)
    return mixed_prompts(tokenizer, len(tokenizer))


def shared_prefix_waves(checkpoint):
    """Two waves of prompts sharing a 64-token prefix (four 16-token blocks); one prompt is the
    bare prefix, block-aligned, so a full hit must still compute its last token."""
    prefix = ordinary_token_ids(checkpoint, 64, seed=1)
    suffixes = [ordinary_token_ids(checkpoint, n, seed=n) for n in (3, 10, 17)]
    first = [prefix + suffixes[0], prefix]
    second = [prefix + suffixes[1], prefix + suffixes[2], prefix, prefix + suffixes[0]]
    return first, second


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_prefix_caching_on_matches_off(arch, tiny_checkpoint):
    checkpoint = str(tiny_checkpoint(arch))
    first, second = shared_prefix_waves(checkpoint)
    results = {}
    for caching in (False, True):
        engine = cpu_engine(checkpoint, enable_prefix_caching=caching)
        engine.generate(first, greedy(), use_tqdm=False)
        outputs = engine.generate(second, greedy(), use_tqdm=False)
        results[caching] = outputs
        cached = [o.num_cached_tokens for o in outputs]
        if caching:
            assert all(n > 0 for n in cached), f"second wave cached tokens: {cached}"
            assert all(n < len(o.prompt_token_ids) for n, o in zip(cached, outputs, strict=True))
            assert engine.stats().num_prefix_cache_hits > 0
        else:
            assert cached == [0] * len(second)
    tokens = {k: [list(o.outputs[0].token_ids) for o in v] for k, v in results.items()}
    assert_same_tokens(tokens[True], tokens[False], "prefix caching")


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_chunked_prefill_matches_whole_prefill(arch, tiny_checkpoint):
    checkpoint = str(tiny_checkpoint(arch))
    prompts = checkpoint_prompts(checkpoint)
    want = generate_tokens(cpu_engine(checkpoint, enable_prefix_caching=False), prompts)
    chunked = cpu_engine(
        checkpoint, max_num_batched_tokens=8, max_num_seqs=4, enable_prefix_caching=False
    )
    assert_same_tokens(generate_tokens(chunked, prompts), want, "chunked prefill")


def test_preemption_matches_roomy_cache(tiny_checkpoint):
    checkpoint = str(tiny_checkpoint("llama"))
    # Four 20-token prompts growing to 50 tokens need 4 x 4 blocks; 6 blocks hold one
    # max-length (64-token) sequence and a bit, so running requests must be preempted.
    prompts = [ordinary_token_ids(checkpoint, 20, seed=s) for s in range(4)]
    want = generate_tokens(cpu_engine(checkpoint, max_model_len=64), prompts, max_tokens=30)
    tight = cpu_engine(checkpoint, max_model_len=64, block_size=16, num_kv_blocks=6)
    got = generate_tokens(tight, prompts, max_tokens=30)
    assert tight.stats().num_preemptions > 0
    assert_same_tokens(got, want, "preemption")


def test_prompt_alone_matches_prompt_in_batch(tiny_checkpoint):
    checkpoint = str(tiny_checkpoint("qwen2"))
    prompts = checkpoint_prompts(checkpoint)
    engine = cpu_engine(checkpoint, enable_prefix_caching=False)
    alone = [generate_tokens(engine, [p])[0] for p in prompts]
    assert_same_tokens(generate_tokens(engine, prompts), alone, "batched")
    reversed_batch = generate_tokens(engine, prompts[::-1])[::-1]
    assert_same_tokens(reversed_batch, alone, "batched in reverse order")


def test_max_num_seqs_one_matches_many(tiny_checkpoint):
    checkpoint = str(tiny_checkpoint("qwen3"))
    prompts = checkpoint_prompts(checkpoint)
    want = generate_tokens(cpu_engine(checkpoint, max_num_seqs=256), prompts)
    got = generate_tokens(cpu_engine(checkpoint, max_num_seqs=1), prompts)
    assert_same_tokens(got, want, "max_num_seqs=1")


@pytest.mark.parametrize("block_size", [8, 32])
def test_block_size_does_not_change_outputs(block_size, tiny_checkpoint):
    checkpoint = str(tiny_checkpoint("llama3_rope"))
    prompts = checkpoint_prompts(checkpoint)
    want = generate_tokens(cpu_engine(checkpoint, block_size=16), prompts)
    got = generate_tokens(cpu_engine(checkpoint, block_size=block_size), prompts)
    assert_same_tokens(got, want, f"block_size={block_size}")


def test_async_scheduling_matches_one_step_at_a_time(tiny_checkpoint):
    """Async scheduling (each step scheduled while the one before runs) under preemption, with
    seeded sampling, stop tokens and n > 1: the tokens of one step at a time, and steps did run
    ahead."""
    checkpoint = str(tiny_checkpoint("llama"))
    prompts = [ordinary_token_ids(checkpoint, 12 + 5 * s, seed=s) for s in range(6)]
    reference = cpu_engine(checkpoint, max_model_len=64, async_scheduling=False)
    free_run = generate_tokens(reference, prompts, max_tokens=20)
    params = []
    for i, tokens in enumerate(free_run):
        kwargs = {"seed": 50 + i, "temperature": 0.9} if i % 2 else {"temperature": 0.0}
        params.append(
            SamplingParams(
                max_tokens=20,
                ignore_eos=True,
                n=1 + i % 3,
                stop_token_ids=[tokens[7]] if i % 3 == 0 else None,
                logprobs=2,
                **kwargs,
            )
        )
    runs = {}
    for async_scheduling in (False, True):
        engine = cpu_engine(
            checkpoint,
            max_model_len=64,
            num_kv_blocks=8,
            async_scheduling=async_scheduling,
        )
        outputs = engine.generate(prompts, params, use_tqdm=False)
        runs[async_scheduling] = [
            [(list(c.token_ids), c.finish_reason, c.cumulative_logprob) for c in o.outputs]
            for o in outputs
        ]
        stats = engine.stats()
        assert stats.num_preemptions > 0
        assert (stats.num_steps_launched_ahead > 0) == async_scheduling
    assert runs[True] == runs[False]


def test_async_scheduling_is_off_on_the_cpu_by_default(tiny_checkpoint):
    engine = cpu_engine(str(tiny_checkpoint("llama")))
    engine.generate([[5, 6, 7]], greedy(), use_tqdm=False)
    assert engine.stats().num_steps_launched_ahead == 0
