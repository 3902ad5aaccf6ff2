"""The engine's prefix cache (serving/textgen/prefix_cache.py): exact, bounded, and never half-written.

Every comparison is between the same engine settings with the cache off and on, on the same weights: greedy and
seeded sampled tokens must be identical, alone and in a left-padded batch, for both recipes (learned positions and
RoPE), with chunked prefill, in bf16 and in int8.
"""

from __future__ import annotations

import random
import threading

import pytest
import torch

from serving import textgen

OPENING = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
           "foolishness, it was the epoch of belief, it was the epoch of incredulity, ")
ENDINGS = ["it was the season of Light", "and Mr. Pickwick rose early", "when the fog lay thick upon the river", "A"]


@pytest.fixture(scope="module")
def rope_export(tmp_path_factory, tiny_tokenizer_dir):
    """A random modern-tiny export (RoPE, RMSNorm, SwiGLU, QK-norm), its zero-initialised parts randomised."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("modern-tiny"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return save_model_folder(model, AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
                             tmp_path_factory.mktemp("rope") / "modern-tiny")


def run(engine, tokenizer, limits, prompts, together=False, **parameters):
    """Tokens of `prompts` through `engine`. `together`: the first prompt's first forward pass waits until every
    prompt is submitted, so that the others join its batch whatever the machine's speed."""
    generations, gate, forward = [], threading.Event(), engine.model.forward

    def gated(*args, **kwargs):
        gate.wait(30)
        return forward(*args, **kwargs)

    if together:
        engine.model.forward = gated
    try:
        for prompt in prompts:
            generations.append(engine.submit(*textgen.prepare_request(tokenizer, prompt, limits, **parameters)))
    finally:
        gate.set()
        engine.model.forward = forward
    return [[t.id for t in g] for g in generations], generations


@pytest.mark.parametrize("recipe,dtype,quantize", [("learned", "float32", None), ("rope", "float32", None),
                                                   ("rope", "bfloat16", None), ("learned", "float32", "int8")])
def test_tokens_are_identical_with_and_without_the_cache(recipe, dtype, quantize, tiny_export, rope_export):
    export = tiny_export if recipe == "learned" else rope_export
    model, tokenizer = textgen.load_model(str(export), dtype=dtype, quantize=quantize)
    limits = textgen.Limits.for_model(model, tokenizer)
    prompts = [OPENING + ending for ending in ENDINGS]
    # chunked prefill (8 tokens a step) and small blocks, so a prompt is served partly from cache, partly computed
    options = dict(limits=limits, max_batch_prefill_tokens=8, prefix_cache_block_size=4)
    with textgen.Engine(model, tokenizer, **options) as off, \
            textgen.Engine(model, tokenizer, prefix_cache_tokens=512, **options) as on:
        for parameters in (dict(max_new_tokens=10), dict(max_new_tokens=10, seed=5, temperature=1.2, top_k=20)):
            expected = [run(off, tokenizer, limits, [p], **parameters)[0][0] for p in prompts]  # each alone
            first, _ = run(on, tokenizer, limits, prompts[:1], **parameters)  # fills the cache
            again, generations = run(on, tokenizer, limits, prompts, together=True, **parameters)  # a batch
            assert first[0] == expected[0] and again == expected, parameters
            assert all(g.cached_tokens >= 4 for g in generations)
            assert all(g.cached_tokens % 4 == 0 and g.cached_tokens < len(g.input_ids) for g in generations)
            assert on.peak_batch_size > 1
        assert on.prefix_cache.hits >= 8 and on.prefilled_tokens < off.prefilled_tokens
        assert on.info()["prefix_cache_tokens_served"] == on.prefix_cache.tokens_served > 0


def test_the_whole_prompt_but_its_last_token_comes_from_cache(tiny_export):
    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    limits = textgen.Limits.for_model(model, tokenizer)
    with textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=512, prefix_cache_block_size=4) as engine:
        (a,), _ = run(engine, tokenizer, limits, [OPENING], max_new_tokens=6)
        (b,), (generation,) = run(engine, tokenizer, limits, [OPENING], max_new_tokens=6)
        n = len(generation.input_ids)
        assert a == b and generation.cached_tokens == (n - 1) // 4 * 4


def test_a_cancelled_or_failed_prefill_leaves_nothing_behind(tiny_export):
    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    limits = textgen.Limits.for_model(model, tokenizer)
    forward = model.forward
    with textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=512, prefix_cache_block_size=4,
                        max_batch_prefill_tokens=8) as engine:
        # cancelled while its first chunk is computed: the next step drops it before its prompt is complete
        pending = []

        def cancel_during(*args, **kwargs):
            pending[0].cancel()
            return forward(*args, **kwargs)

        model.forward = cancel_during
        try:
            pending.append(engine.submit(*textgen.prepare_request(tokenizer, OPENING, limits, max_new_tokens=5)))
            assert [t.id for t in pending[0]] == [] and pending[0].state == "cancelled"
        finally:
            model.forward = forward
        assert engine.prefix_cache.size_tokens == 0 and engine.prefix_cache.bytes == 0

        # failed on its second chunk: an error for the request, nothing in the cache
        calls = []

        def fail_second(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("out of memory (simulated)")
            return forward(*args, **kwargs)

        model.forward = fail_second
        try:
            generation = engine.submit(*textgen.prepare_request(tokenizer, OPENING, limits, max_new_tokens=5))
            with pytest.raises(textgen.GenerationError, match="simulated"):
                list(generation)
        finally:
            model.forward = forward
        assert engine.prefix_cache.size_tokens == 0
        # and the engine goes on, filling the cache from a request that succeeds
        (ids,), _ = run(engine, tokenizer, limits, [OPENING], max_new_tokens=5)
        assert ids and engine.prefix_cache.size_tokens > 0 and engine.in_flight() == 0


def test_least_recently_used_blocks_leave_first_within_the_budget(tiny_export):
    """The cache itself: block-aligned, LRU, bounded; a hit refreshes its whole chain."""
    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    cache = textgen.PrefixCache(max_tokens=16, block_size=4)

    def prefilled(ids):
        kv = textgen.kv_cache._new_cache(model.config)
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids]), use_cache=True, past_key_values=kv)
        return kv

    a, b, c = ([base + i for i in range(9)] for base in (10, 40, 70))  # 2 whole blocks each (+1 token)
    assert cache.insert(a, prefilled(a)) == 2 and cache.insert(b, prefilled(b)) == 2 and cache.size_tokens == 16
    assert cache.lookup(a + [5], model.config)[0] == 8  # a is now more recent than b
    assert cache.insert(c, prefilled(c)) == 2  # over budget: b's blocks go, a's stay
    assert cache.size_tokens == 16 and cache.evictions == 2
    assert cache.lookup(b + [5], model.config) == (0, None)
    found, kv = cache.lookup(a[:6], model.config)  # a shorter prompt: one block, its last token left to prefill
    assert found == 4 and textgen.kv_cache._cache_layers(kv)[0].keys.shape[-2] == 4
    assert torch.equal(textgen.kv_cache._cache_layers(kv)[0].keys[0],
                       textgen.kv_cache._cache_layers(prefilled(a))[0].keys[0, :, :4])
    assert textgen.PrefixCache(max_tokens=0).lookup(a, model.config) == (0, None)  # 0 = off


def test_memory_stays_within_the_budget_under_random_prompts(tiny_export):
    """A soak of random prompts (many sharing openings): the cache never holds more than its budget, and its bytes
    are exactly its blocks' tensors."""
    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    limits = textgen.Limits.for_model(model, tokenizer)
    rng = random.Random(0)
    words = OPENING.split() + [e for ending in ENDINGS for e in ending.split()]
    per_token = 2 * model.config.n_layer * model.config.n_embd * 4  # keys and values, fp32
    with textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=64, prefix_cache_block_size=8) as engine:
        for _ in range(20):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
            if rng.random() < 0.5:
                prompt = OPENING + prompt
            run(engine, tokenizer, limits, [prompt], max_new_tokens=2)
            assert engine.prefix_cache.size_tokens <= 64
            assert engine.prefix_cache.bytes == engine.prefix_cache.size_tokens * per_token
        assert engine.prefix_cache.evictions > 0 and engine.prefix_cache.hits > 0
