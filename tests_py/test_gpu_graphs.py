"""Decode steps replayed from CUDA graphs (the default) against the same steps run eagerly
(enforce_eager=True). A batch whose size is a captured size replays kernels with the shapes the
eager step launches, so its tokens must be equal; a batch padded up to the next captured size
runs its GEMMs on more rows, which may round differently, so it is held to vLLM's near-tie rule.
"""

import pytest

from conftest import cuda_engine
from hf_reference import (
    check_outputs_close,
    ember_sequences,
    greedy_params,
    load_hf_tokenizer,
    mixed_prompts,
)

pytestmark = pytest.mark.gpu
MAX_TOKENS = 16
# cpp/src/runtime/decode_graphs.cpp captures 1, 2, 4 and every multiple of 8 up to
# max_num_seqs; 3 and 6 replay the graphs of 4 and 8 with padding rows.
CAPTURED_SIZES = [1, 2, 4, 8]
PADDED_SIZES = [3, 6]


@pytest.fixture(scope="module")
def outputs_by_mode(tiny_checkpoint):
    """{"graphs"|"eager": {batch size: greedy outputs of the first `size` prompts}}.

    Every prompt fits the first step's token budget and all ask for MAX_TOKENS with EOS
    ignored, so each decode step of a batch holds all of its sequences; the step count proves it.
    """
    checkpoint = tiny_checkpoint("llama")
    tokenizer = load_hf_tokenizer(checkpoint)
    prompts = [*mixed_prompts(tokenizer, len(tokenizer)), "Once upon a time a fox and a crow"]
    # NOTE: max_model_len 256 keeps every attention launch unsplit in both modes (a graph plans
    # attention for max_model_len, an eager step for its longest sequence).
    results = {}
    for mode in ("graphs", "eager"):
        engine = cuda_engine(
            checkpoint,
            enforce_eager=mode == "eager",
            enable_prefix_caching=False,
            max_model_len=256,
        )
        captured = set(engine.model_info.cuda_graph_batch_sizes)
        if mode == "graphs":
            assert captured >= set(CAPTURED_SIZES), f"captured batch sizes {sorted(captured)}"
            assert not captured & set(PADDED_SIZES), f"captured batch sizes {sorted(captured)}"
        else:
            assert not captured, f"enforce_eager=True captured batch sizes {sorted(captured)}"
        results[mode] = {}
        for size in CAPTURED_SIZES + PADDED_SIZES:
            steps_before = engine.stats().num_steps
            outputs = engine.generate(prompts[:size], greedy_params(MAX_TOKENS), use_tqdm=False)
            num_steps = engine.stats().num_steps - steps_before
            assert num_steps == MAX_TOKENS, (
                f"{mode}, batch {size}: {num_steps} steps for {MAX_TOKENS} tokens; a prefill "
                "was chunked, so not every decode step held the whole batch"
            )
            results[mode][size] = outputs
        del engine
    return results


@pytest.mark.parametrize("size", CAPTURED_SIZES)
def test_graphs_equal_eager_at_captured_batch_sizes(size, outputs_by_mode):
    graphs = [list(o.outputs[0].token_ids) for o in outputs_by_mode["graphs"][size]]
    eager = [list(o.outputs[0].token_ids) for o in outputs_by_mode["eager"][size]]
    for i, (got, want) in enumerate(zip(graphs, eager, strict=True)):
        assert got == want, f"batch {size}, prompt {i}: graphs {got}, eager {want}"


@pytest.mark.parametrize("size", PADDED_SIZES)
def test_graphs_close_to_eager_at_padded_batch_sizes(size, outputs_by_mode):
    check_outputs_close(
        ember_sequences(outputs_by_mode["graphs"][size]),
        ember_sequences(outputs_by_mode["eager"][size]),
        "graphs",
        "eager",
    )
