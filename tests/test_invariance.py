"""Batch invariance (serving/textgen/invariant.py): a request gets the same bits, so the same tokens for the same seed,
alone in the engine or beside any others, at the default precision and in int8, through chunked prefill and prefix
cache hits alike."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from serving import textgen
from serving.textgen import invariant, kernels

WORDS = ("the of and a to in was he it that his her with as had for I you at on my but not be she which have all "
         "by one said upon there this so were from").split()


def random_export(root, tokenizer_dir, preset: str):
    """A random model of `preset` with a 1,024-token context, its weights spread (a fresh head can start at zero):
    near-ties everywhere, so a single differing bit tends to show as a differing token."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset(preset, vocab_size=512, n_positions=1024))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = 1024
    return save_model_folder(model, tokenizer, root / preset)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("invariance")
    return {name: random_export(root, tiny_tokenizer_dir, preset)
            for name, preset in (("gpt2", "small"), ("modern", "modern-small"))}


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 70))) for _ in range(n)]
    opening = " ".join(rng.choice(WORDS) for _ in range(110))  # two prompts share 100+ tokens: a prefix cache hit
    out[1], out[2] = opening + " and so it", opening + " but then"
    return out


def parameters(i: int, max_new_tokens: int) -> dict:
    """Even requests greedy, odd ones sampled with their own seed."""
    if i % 2 == 0:
        return dict(max_new_tokens=max_new_tokens)
    return dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=40, seed=7 + i)


def alone_and_together(model, tokenizer, texts: list[str], max_new_tokens: int, **options):
    """(tokens and logprobs of each request alone in a fresh engine, the same of all of them at once in one engine
    whose prefix cache already holds the shared opening, beside a request cancelled part-way), and that engine's
    largest batch and cache hits. `options`:
    the engines' (e.g. a small prefill budget, which the prompts then share step by step)."""
    limits = textgen.Limits.for_model(model, tokenizer)
    requests = [textgen.prepare_request(tokenizer, text, limits, **parameters(i, max_new_tokens))
                for i, text in enumerate(texts)]

    def result(generation):
        tokens = list(generation)
        return [t.id for t in tokens], [t.logprob for t in tokens]

    with textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=0, **options) as engine:
        alone = [result(engine.submit(*request)) for request in requests]
    with textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=4096, **options) as engine:
        list(engine.submit(requests[1][0], textgen.GenerationParameters(max_new_tokens=1)))  # the opening, cached
        with engine.held():  # every request in one batch from the first step (timing would vary it run to run)
            together = [engine.submit(*request) for request in requests[: len(requests) // 2]]
            quitter = engine.submit(requests[0][0], textgen.GenerationParameters(max_new_tokens=500))
        together += [engine.submit(*request) for request in requests[len(requests) // 2 :]]  # and joining later
        stream = iter(quitter)
        for _ in range(3):  # a neighbour that hangs up part-way leaves the batch
            next(stream)
        quitter.cancel()
        together = [result(generation) for generation in together]
        return alone, together, engine.peak_batch_size, engine.prefix_cache.hits


def test_the_kernels_give_a_row_the_same_bits_whatever_the_batch():
    """The float32 and bf16 decode kernels sum each output in an order fixed by K alone: any number of rows gives
    every row the bits it gets alone (PyTorch's GEMMs change their blocking with the number of rows)."""
    if not kernels.decode_kernels_available():
        pytest.skip("no C++ compiler here: no decode kernels")
    generator = torch.Generator().manual_seed(0)
    ops = [(torch.float32, torch.ops.victorian_gpt.f32_gemm_nt)]
    if kernels.bf16_kernel_native():
        ops.append((torch.bfloat16, torch.ops.victorian_gpt.bf16_gemm_nt))
    for dtype, op in ops:
        for k, n in [(768, 2304), (3072, 768), (776, 33), (40, 7), (384, 1000)]:
            weight = (torch.randn(n, k, generator=generator) * 0.05).to(dtype)
            bias = torch.randn(n, generator=generator).to(dtype)
            x = torch.randn(19, k, generator=generator).to(dtype)
            for b in (None, bias):
                alone = torch.cat([op(x[i : i + 1], weight, b) for i in range(len(x))])
                for rows in (2, 3, 8, 9, 16, 19):
                    assert torch.equal(op(x[:rows], weight, b), alone[:rows]), (dtype, k, n, rows)
                exact = x.double() @ weight.double().t() + (0 if b is None else b.double())
                tolerance = 1e-5 if dtype == torch.float32 else 2**-7
                assert ((alone.double() - exact).abs() <= tolerance * (exact.abs() + 1)).all(), (dtype, k, n)


def test_attention_takes_each_row_of_a_decode_step_over_its_own_keys():
    """A left-padded decode step (one query per row, a mask of the valid keys) gives each row exactly what it gets
    alone over its own keys, and what SDPA gives over them (float rounding apart); a prompt's prefill (several
    queries) is transformers' SDPA as it was."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not kernels.decode_kernels_available():
        pytest.skip("no C++ compiler here: no decode kernels")
    module = torch.nn.Module()
    module.is_causal = True
    generator = torch.Generator().manual_seed(0)
    lengths = [37, 120, 5, 200, 64, 1]
    rows, heads, dim, total = len(lengths), 4, 32, max(lengths)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(rows, heads, n, dim, generator=generator).to(dtype) for n in (1, total, total))
        mask = torch.zeros(rows, 1, 1, total, dtype=torch.bool)
        for i, n in enumerate(lengths):
            mask[i, ..., total - n :] = True
        out, weights = invariant.batch_invariant_attention(module, q, k, v, mask, scaling=dim**-0.5)
        assert weights is None and out.shape == (rows, 1, heads, dim)
        for i, n in enumerate(lengths):
            keys, values = k[i : i + 1, :, total - n :], v[i : i + 1, :, total - n :]
            alone, _ = invariant.batch_invariant_attention(module, q[i : i + 1], keys, values, None, scaling=dim**-0.5)
            assert torch.equal(out[i : i + 1], alone), (dtype, i)
            sdpa = F.scaled_dot_product_attention(q[i : i + 1].float(), keys.float(), values.float(), scale=dim**-0.5)
            tolerance = 1e-5 if dtype == torch.float32 else 2e-2
            assert (alone.float() - sdpa.transpose(1, 2)).abs().max() < tolerance, (dtype, i)
        prompt = torch.randn(1, heads, 9, dim, generator=generator).to(dtype)
        ours, _ = invariant.batch_invariant_attention(module, prompt, prompt, prompt, None, scaling=0.2)
        theirs, _ = sdpa_attention_forward(module, prompt, prompt, prompt, None, scaling=0.2)
        assert torch.equal(ours, theirs)


def test_float32_linear_is_the_layer_it_replaces():
    """`Float32Linear` computes what the `nn.Linear` / GPT-2 `Conv1D` it replaces computes: a prompt through PyTorch's
    GEMM (the same bits as `nn.Linear`; `Conv1D` stores its weight transposed, and on some CPUs, AMD Zen 5 among them,
    the GEMM sums in another order for the other layout), a decode step's rows through the kernel (float32 rounding
    apart)."""
    from transformers.pytorch_utils import Conv1D

    if not kernels.decode_kernels_available():
        pytest.skip("no C++ compiler here: no decode kernels")
    torch.manual_seed(0)
    for layer in (torch.nn.Linear(96, 40), Conv1D(40, 96)):
        ours = invariant.Float32Linear.from_module(layer)
        prompt, step = torch.randn(1, 7, 96), torch.randn(5, 1, 96)
        if isinstance(layer, torch.nn.Linear):
            assert torch.equal(ours(prompt), layer(prompt).detach())
        assert torch.allclose(ours(prompt), layer(prompt).detach(), rtol=1e-5, atol=1e-6)
        assert torch.allclose(ours(step), layer(step).detach(), rtol=1e-5, atol=1e-6)
        assert ours.weight.device.type == "meta" and ours.weight.shape == (40, 96)


@pytest.mark.parametrize("recipe, options", [("gpt2", {}), ("modern", {}),
                                             ("modern", dict(max_batch_prefill_tokens=16, prefix_cache_block_size=32))])
def test_a_batch_decodes_to_each_requests_own_bits(recipe, options, exports):
    """Twelve requests, greedy and seeded, alone and together (one batch at once, then others joining, one of them
    reading a cached opening; with a small prefill budget, prompts prefilled a piece per step between the others'
    decoding): the same tokens and the same log-probabilities, bit for bit, at the default precision."""
    if not kernels.decode_kernels_available():
        pytest.skip("no C++ compiler here: no decode kernels, no batch invariance")
    model, tokenizer = textgen.load_model(str(exports[recipe]), dtype="auto")
    assert model.batch_invariant and "batch-invariant decoding" in model.serving_dtype
    alone, together, peak, hits = alone_and_together(model, tokenizer, prompts(12), max_new_tokens=10, **options)
    assert peak >= (3 if options else 6) and hits >= 1
    assert together == alone


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "int8", "bfloat16", "float32"])
def test_24_concurrent_streams_each_equal_their_solo_run(precision, exports):
    """The load test: 24 concurrent streams on the server's engine, greedy and seeded, a prefix cache hit among
    them, each equal to its solo run, at the default precision, int8, and (where the CPU computes it) bf16."""
    if not kernels.decode_kernels_available():
        pytest.skip("no C++ compiler here: no decode kernels, no batch invariance")
    if precision == "bfloat16" and not kernels.bf16_kernel_native():
        pytest.skip("no AVX-512 BF16 here: bf16 is not served by the decode kernel")
    quantize = "int8" if precision == "int8" else None
    model, tokenizer = textgen.load_model(str(exports["modern"]), dtype="auto" if quantize else precision,
                                          quantize=quantize)
    assert model.batch_invariant, model.serving_dtype
    alone, together, peak, hits = alone_and_together(model, tokenizer, prompts(24, seed=1), max_new_tokens=24)
    assert peak >= 12 and hits >= 1
    differing = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    assert not differing, f"{len(differing)} of 24 streams differ from their solo run: {differing}"


def test_without_a_kernel_the_model_loads_without_invariance_and_says_why(exports, caplog):
    """Batch invariance needs the decode kernels for the model's linear layers: a float16 model has none, so it loads
    as it would have (SDPA, its own layers) with one warning saying why."""
    model, _ = textgen.load_model(str(exports["gpt2"]), dtype="float16")
    assert not model.batch_invariant and "batch-invariant" not in model.serving_dtype
    assert model.config._attn_implementation != invariant.BATCH_INVARIANT
    assert any("without batch invariance" in r.message and "float16" in r.message for r in caplog.records)
    model, _ = textgen.load_model(str(exports["gpt2"]), dtype="float32", batch_invariant=False)
    assert not model.batch_invariant and not any(isinstance(m, invariant.Float32Linear) for m in model.modules())

