"""AsyncEngine on the CPU with a tiny checkpoint: streams equal Engine.generate's outputs,
delta/cumulative/final_only agree, hundreds of concurrent and cancelled requests leave nothing
behind, bad input fails alone, a dead core loop and a shutdown end every request clearly."""

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import cpu_engine
from ember import AsyncEngine, EngineDeadError, SamplingParams
from ember.request_tracker import RequestTracker
from hf_reference import mixed_prompts

# Tests wait on the engine through these; a hang fails the test instead of the run.
TIMEOUT_S = 120


def cpu_async_engine(model, **kwargs) -> AsyncEngine:
    """An AsyncEngine on the CPU (see conftest.cpu_engine for why the device is pinned)."""
    return AsyncEngine(str(model), device="cpu", **kwargs)


def run(coroutine):
    async def bounded():
        return await asyncio.wait_for(coroutine, TIMEOUT_S)

    return asyncio.run(bounded())


def greedy(max_tokens=12, **kwargs):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


async def collect(engine, prompt, params, request_id, output_kind="cumulative"):
    return [o async for o in engine.generate(prompt, params, request_id, output_kind=output_kind)]


async def wait_until_idle(engine):
    """Polls (the test's own waiting) until no request is unfinished: the core has ended them
    all and the output thread has processed their last outputs."""
    deadline = time.monotonic() + 10
    while engine.stats()["num_unfinished_requests"] > 0:
        assert time.monotonic() < deadline, f"requests still unfinished: {engine.stats()}"
        await asyncio.sleep(0.01)


async def wait_until_core_idle(engine):
    """Polls until the core runs and queues nothing, whatever the output thread is doing."""
    deadline = time.monotonic() + 10
    while (stats := engine.stats())["num_running"] + stats["num_waiting"] > 0:
        assert time.monotonic() < deadline, f"the core still has work: {stats}"
        await asyncio.sleep(0.01)


def concatenated(deltas):
    """Per sample index: the deltas' text, token ids and logprobs joined, and the finish
    reasons in the order they came."""
    joined = {}
    for output in deltas:
        for c in output.outputs:
            j = joined.setdefault(c.index, {"text": "", "ids": [], "logprobs": [], "reasons": []})
            j["text"] += c.text
            j["ids"] += c.token_ids
            j["logprobs"] += c.logprobs or []
            j["reasons"].append(c.finish_reason)
    return joined


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return str(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    engine = cpu_async_engine(checkpoint, num_kv_blocks=1024)
    yield engine
    engine.shutdown()


def test_greedy_streams_equal_engine_generate(engine, checkpoint):
    prompts = mixed_prompts(engine.tokenizer, engine.model_info.vocab_size)
    reference = cpu_engine(checkpoint).generate(prompts, greedy(), use_tqdm=False)

    async def main():
        return await asyncio.gather(
            *(collect(engine, p, greedy(), f"greedy-{i}") for i, p in enumerate(prompts))
        )

    for i, (outputs, want) in enumerate(zip(run(main()), reference, strict=True)):
        final = outputs[-1]
        assert final.finished and all(not o.finished for o in outputs[:-1])
        assert final.request_id == f"greedy-{i}"
        assert final.prompt_token_ids == want.prompt_token_ids
        assert final.outputs[0].token_ids == want.outputs[0].token_ids, f"prompt {i}"
        assert final.outputs[0].text == want.outputs[0].text
        assert final.outputs[0].finish_reason == "length"
        # Cumulative outputs only grow.
        lengths = [len(o.outputs[0].token_ids) for o in outputs]
        assert lengths == sorted(lengths)
        m = final.metrics
        assert m.arrival_time <= m.first_token_time <= m.last_token_time <= m.finished_time
        assert m.num_generation_tokens == 12
    stats = engine.stats()
    assert stats["num_generation_tokens"] >= 12 * len(prompts)
    assert stats["num_prompt_tokens"] >= sum(len(r.prompt_token_ids) for r in reference)


def test_delta_and_final_only_agree_with_cumulative(engine):
    # Seeded sampling gives a request the same tokens whatever runs beside it.
    params = SamplingParams(temperature=0.9, seed=11, n=2, max_tokens=20, logprobs=2)

    async def main():
        return await asyncio.gather(
            collect(engine, "Once upon a time", params, "cumulative"),
            collect(engine, "Once upon a time", params, "delta", output_kind="delta"),
            collect(engine, "Once upon a time", params, "final", output_kind="final_only"),
        )

    cumulative, deltas, final_only = run(main())
    assert len(final_only) == 1 and final_only[0].finished
    # (A consumer slower than the engine gets several steps' deltas merged into one.)
    assert deltas[-1].finished and all(not d.finished for d in deltas[:-1])
    joined = concatenated(deltas)
    want = cumulative[-1]
    for sample in want.outputs:
        got = joined[sample.index]
        assert got["ids"] == sample.token_ids
        assert got["text"] == sample.text
        assert got["logprobs"] == sample.logprobs
        # finish_reason only on the sample's last delta
        assert got["reasons"][-1] == sample.finish_reason
        assert all(r is None for r in got["reasons"][:-1])
        assert final_only[0].outputs[sample.index] == sample


def test_delta_text_holds_back_a_possible_stop_string(engine):
    async def main():
        full = (await collect(engine, "The river", greedy(24), "full"))[-1].outputs[0]
        stop = full.text[6:9]
        deltas = await collect(
            engine, "The river", greedy(24, stop=[stop]), "stopped", output_kind="delta"
        )
        cumulative = await collect(engine, "The river", greedy(24, stop=[stop]), "stopped-c")
        await wait_until_idle(engine)
        return full, stop, deltas, cumulative[-1].outputs[0]

    full, stop, deltas, stopped = run(main())
    assert stopped.text == full.text[: full.text.find(stop)]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    joined = concatenated(deltas)[0]
    assert joined["text"] == stopped.text
    assert joined["ids"] == stopped.token_ids
    assert engine.stats()["kv_cache_usage"] == 0.0  # the core aborted it after the stop


def test_n_samples_equal_engine_generate(engine, checkpoint):
    params = SamplingParams(temperature=1.0, seed=7, n=3, max_tokens=10)
    want = cpu_engine(checkpoint).generate("Paris is", params, use_tqdm=False)[0]
    final = run(collect(engine, "Paris is", params, "n3"))[-1]
    assert [c.index for c in final.outputs] == [0, 1, 2]
    assert [c.token_ids for c in final.outputs] == [c.token_ids for c in want.outputs]
    assert [c.text for c in final.outputs] == [c.text for c in want.outputs]


def test_two_hundred_concurrent_requests_complete(engine):
    vocab = engine.model_info.vocab_size

    async def main():
        requests = [
            collect(engine, [(7 * i + j) % vocab for j in range(1 + i % 30)], greedy(8), f"c{i}")
            for i in range(200)
        ]
        return await asyncio.gather(*requests)

    results = run(main())
    assert len(results) == 200
    for i, outputs in enumerate(results):
        final = outputs[-1]
        assert final.request_id == f"c{i}"
        assert final.finished and len(final.outputs[0].token_ids) == 8
        assert final.outputs[0].finish_reason == "length"
    stats = engine.stats()
    assert stats["num_unfinished_requests"] == 0
    assert stats["num_running"] == stats["num_waiting"] == 0
    assert stats["kv_cache_usage"] == 0.0


def test_cancelling_a_hundred_streams_frees_everything(engine):
    params = greedy(200)  # far more tokens than anyone waits for
    started = []

    async def consume(i):
        # Three ways a client goes away: break (the generator is finalized), aclose(), and a
        # cancelled task (below).
        stream = engine.generate(f"Request number {i} says", params, f"cancel-{i}")
        if i % 3 == 0:
            async for output in stream:
                if len(output.outputs[0].token_ids) >= 3:
                    break
        else:
            async with contextlib.aclosing(stream):
                async for output in stream:
                    if len(output.outputs[0].token_ids) >= 3:
                        started.append(i)
                        if i % 3 == 1:
                            return
                        await asyncio.sleep(3600)  # cancelled below

    async def main():
        generated_before = engine.stats()["num_generation_tokens"]
        tasks = [asyncio.create_task(consume(i)) for i in range(100)]
        deadline = time.monotonic() + 60
        while sum(1 for i in started if i % 3 == 2) < 33:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        for i, task in enumerate(tasks):
            if i % 3 == 2:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await wait_until_idle(engine)
        stats = engine.stats()
        assert stats["num_running"] == stats["num_waiting"] == 0
        assert stats["kv_cache_usage"] == 0.0
        assert not engine._requests  # no request left waiting for a core output
        # Aborted at once, not run to their 200 tokens.
        generated = engine.stats()["num_generation_tokens"] - generated_before
        assert generated < 100 * 200 / 4
        start = time.monotonic()
        final = (await collect(engine, "After the storm", greedy(8), "after"))[-1]
        return final, time.monotonic() - start

    final, seconds = run(main())
    assert final.finished and len(final.outputs[0].token_ids) == 8
    assert seconds < 5


def test_abort_ends_the_stream_with_abort(engine):
    async def main():
        outputs = []
        async for output in engine.generate("Abort me", greedy(200), "to-abort"):
            outputs.append(output)
            if len(outputs) == 2:
                await engine.abort("to-abort")
        return outputs

    outputs = run(main())
    assert outputs[-1].finished
    assert outputs[-1].outputs[0].finish_reason == "abort"
    assert len(outputs[-1].outputs[0].token_ids) < 200


def test_bad_input_raises_value_error_and_disturbs_nobody(engine):
    vocab = engine.model_info.vocab_size
    long_prompt = [5] * (engine.max_model_len + 1)

    async def expect_error(prompt, params=None, request_id="bad", **kwargs):
        with pytest.raises(ValueError) as error:
            await collect(engine, prompt, params or greedy(), request_id, **kwargs)
        return str(error.value)

    zero_tokens = greedy()
    zero_tokens.max_tokens = 0  # changed after construction: generate() validates again

    async def main():
        messages, good = [], []
        async for output in engine.generate("A good request", greedy(200), "good"):
            if not good:  # the bad ones come while "good" runs (199 steps to go)
                messages = [
                    await expect_error("x", request_id="good"),
                    await expect_error(long_prompt),
                    await expect_error([1, vocab]),
                    await expect_error([444, 29019524783]),  # does not fit the core's int
                    await expect_error(""),
                    await expect_error(["two", "prompts"]),
                    await expect_error("x", zero_tokens),
                    await expect_error("x", output_kind="everything"),
                ]
            good.append(output)
        return messages, good

    messages, good = run(main())
    max_len = engine.max_model_len
    assert "request_id 'good' is already in use" in messages.pop(0)
    assert messages[0] == f"prompt has {max_len + 1} tokens but max_model_len is {max_len}"
    assert (
        messages[1]
        == f"prompt token id {vocab} at position 1 is outside the vocabulary [0, {vocab})"
    )
    assert messages.pop(2) == (
        f"prompt token id 29019524783 at position 1 is outside the vocabulary [0, {vocab})"
    )
    assert messages[2] == "prompt is empty: give at least one character"
    assert "expected one prompt" in messages[3]
    assert "max_tokens" in messages[4]
    assert "output_kind must be one of" in messages[5]
    assert good[-1].finished and len(good[-1].outputs[0].token_ids) == 200


def test_output_thread_stalls_do_not_stall_the_core(engine, monkeypatch):
    """The core never waits for Python: while the output thread is held, every request still
    finishes in the core, and the held outputs then arrive complete, merged."""
    release = threading.Event()
    held = threading.Event()
    route = type(engine)._route

    first_batch_tokens = []

    def slow_route(self, outputs):
        if not held.is_set():
            first_batch_tokens.extend(len(c.token_ids) for o in outputs for c in o.outputs)
            held.set()
            release.wait(TIMEOUT_S)
        route(self, outputs)

    async def main():
        monkeypatch.setattr(type(engine), "_route", slow_route)
        streams = [
            asyncio.create_task(collect(engine, f"Stalled {i}", greedy(200), f"stall-{i}"))
            for i in range(20)
        ]
        try:
            while not held.is_set():
                await asyncio.sleep(0.01)
            # The core finishes all 20 while the output thread is held.
            await wait_until_core_idle(engine)
        finally:
            release.set()
        return await asyncio.gather(*streams)

    results = run(main())
    # The held batch came early: the core ran the rest of the 200 steps on its own.
    assert max(first_batch_tokens) < 200
    for outputs in results:
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 200


def test_each_output_carries_its_own_metrics(engine):
    """Every output gets a copy of the request's metrics as they were when it was made: later
    outputs do not change an earlier one's."""

    async def main():
        outputs = []
        async for output in engine.generate("Metrics", greedy(24), "metrics", output_kind="delta"):
            outputs.append((output, output.metrics.num_generation_tokens))
            await asyncio.sleep(0.005)  # some outputs come merged, most one by one
        return outputs

    outputs = run(main())
    assert len(outputs) > 1
    assert len({id(output.metrics) for output, _ in outputs}) == len(outputs)
    received = 0
    for output, seen in outputs:
        received += len(output.outputs[0].token_ids)
        assert output.metrics.num_generation_tokens == seen == received
    first = outputs[0][0].metrics
    assert first.finished_time is None and outputs[-1][0].metrics.finished_time is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_core_and_output_threads_are_named_for_the_os(engine):
    """So top -H, py-spy and .ci/serve-host-cost can tell where a server's time goes."""
    names = {
        Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        for tid in os.listdir("/proc/self/task")
    }
    assert {"ember-core", "ember-output"} <= names


def test_text_helpers(engine):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = engine.apply_chat_template(messages)
    assert text == "<s>user\nWhat is the capital of France?</s>\n<s>assistant\n"
    assert engine.encode("Paris") == engine.tokenizer("Paris").input_ids
    prompt = engine.chat_prompt(messages)
    assert prompt["prompt_token_ids"] == engine.encode(text, add_special_tokens=False)
    final = run(collect(engine, prompt, greedy(4), "chat"))[-1]
    assert final.prompt == text and final.prompt_token_ids == prompt["prompt_token_ids"]
    assert engine.model_dir.is_dir() and engine.max_model_len == 256


def test_a_dead_core_loop_fails_live_and_new_requests(checkpoint):
    engine = cpu_async_engine(checkpoint, num_kv_blocks=256)

    async def consume(i):
        async for _ in engine.generate(f"Doomed {i}", greedy(200), f"doomed-{i}"):
            if i == 0 and engine.is_running:  # all five run, 199 steps to go: fail the next
                engine._core.fail_next_step("the forward pass failed (injected)")

    async def main():
        tasks = [asyncio.create_task(consume(i)) for i in range(5)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(EngineDeadError) as new_request:
            await collect(engine, "Too late", greedy(), "late")
        return results, str(new_request.value)

    try:
        results, late_message = run(main())
        for result in results:
            assert isinstance(result, EngineDeadError), result
            assert isinstance(result, RuntimeError)
            assert "the forward pass failed (injected)" in str(result)
        assert "the forward pass failed (injected)" in late_message
        assert engine.errored and not engine.is_running
        assert isinstance(engine.dead_error, EngineDeadError)
        assert "the forward pass failed (injected)" in str(engine.dead_error)
    finally:
        engine.shutdown()


def test_shutdown_with_requests_in_flight_ends_them_with_abort(checkpoint):
    engine = cpu_async_engine(checkpoint, num_kv_blocks=256)

    async def consume(i, started):
        outputs = []
        async for output in engine.generate(f"In flight {i}", greedy(200), f"flight-{i}"):
            outputs.append(output)
            started.set()
        return outputs

    async def main():
        started = asyncio.Event()
        async with engine:
            tasks = [asyncio.create_task(consume(i, started)) for i in range(10)]
            await started.wait()  # all ten run, with about 199 steps to go
        results = await asyncio.gather(*tasks)
        with pytest.raises(EngineDeadError, match="shut down"):
            await collect(engine, "After shutdown", greedy(), "after")
        await engine.shutdown()  # idempotent, and awaitable
        return results

    for outputs in run(main()):
        final = outputs[-1]
        assert final.finished and final.outputs[0].finish_reason == "abort"
        assert len(final.outputs[0].token_ids) < 200
    assert not engine.is_running and not engine.errored
    assert not engine._output_thread.is_alive()
    assert engine.stats()["kv_cache_usage"] == 0.0


def test_interpreter_exit_without_shutdown_does_not_hang(checkpoint):
    script = textwrap.dedent(
        """
        import asyncio, sys
        from ember import AsyncEngine, SamplingParams

        engine = AsyncEngine(sys.argv[1], device="cpu", num_kv_blocks=64)
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

        async def main():
            async for output in engine.generate("Left running", params, "r"):
                if len(output.outputs[0].token_ids) >= 2:
                    return  # the request is still running in the core
        asyncio.run(main())
        print("exiting")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, checkpoint], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exiting"


def test_tracker_deltas_concatenate_to_its_output_and_hold_back_stop_prefixes(checkpoint):
    """Token by token, as the core may hand them out: each delta carries only the new part, a
    possible stop-string start is held back, and the finish comes once, on the last delta."""
    engine = cpu_engine(checkpoint)  # for its tokenizer; nothing runs
    tokenizer = engine.get_tokenizer()
    ids = tokenizer("The river starts high in the hills", add_special_tokens=False).input_ids
    params = SamplingParams(stop=["the hills"], max_tokens=50, logprobs=1)
    tracker = RequestTracker("r", "p", [1], params, tokenizer, engine._decode_token)
    deltas, streamed = [], ""
    for token_id in ids:
        logprob = SimpleNamespace(token_id=token_id, logprob=-0.5, rank=1, top=[(token_id, -0.5)])
        core = SimpleNamespace(
            outputs=[
                SimpleNamespace(
                    index=0,
                    token_ids=[token_id],
                    logprobs=[logprob],
                    finish_reason=None,
                    stop_token_id=None,
                )
            ],
            num_cached_tokens=0,
        )
        tracker.apply(core)
        delta = tracker.take_delta_output()
        if delta is not None:
            deltas.append(delta)
            streamed += delta.outputs[0].text
            # Never ahead of what the finished text will be.
            assert "The river starts high in ".startswith(streamed)
        if tracker.finished:
            break
    full = tracker.to_output().outputs[0]
    assert full.text == "The river starts high in " and full.finish_reason == "stop"
    joined = concatenated(deltas)[0]
    assert joined["text"] == full.text
    assert joined["ids"] == full.token_ids
    assert joined["logprobs"] == full.logprobs
    assert joined["reasons"][-1] == "stop" and set(joined["reasons"][:-1]) == {None}
    assert tracker.take_delta_output() is None  # nothing new


def test_stream_merges_deltas_a_busy_consumer_has_not_taken():
    from ember.async_engine import _Stream
    from ember.outputs import CompletionOutput, RequestOutput

    def delta(text, ids, index=0, reason=None, finished=False):
        completion = CompletionOutput(index, text, ids, finish_reason=reason)
        return RequestOutput("r", "p", [1], [completion], finished=finished)

    async def main():
        stream = _Stream("delta")
        stream.put(delta("a", [1]))
        stream.put(delta("b", [2], index=1))
        stream.put(delta("c", [3]))
        first = await stream.get()
        stream.put(delta("d", [4], reason="length", finished=True))
        stream.put(EngineDeadError("late error, after the last output"))
        return first, await stream.get()

    first, last = run(main())
    assert [(c.index, c.text, c.token_ids) for c in first.outputs] == [
        (0, "ac", [1, 3]),
        (1, "b", [2]),
    ]
    assert not first.finished
    assert [(c.text, c.finish_reason) for c in last.outputs] == [("d", "length")]
    assert last.finished
