"""textgen.Engine, the batching engine behind `victorian-gpt serve`, and the int8 CPU path, on small real models.

Every comparison is against plain `model.generate()` (or `textgen.Generation`, which runs it) on the same weights.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from serving import textgen

PROMPTS = [
    "It was a dark and stormy night; the rain fell in torrents",
    "Mr. Pickwick",
    "The fog lay thick upon the river, and the lamplighter had scarcely begun his round, when",
    "A",
    "My dear Mrs. Fairfax, I write to you from the parsonage",
]


@pytest.fixture(scope="module")
def loaded(small_export):
    model, tokenizer = textgen.load_model(str(small_export))
    return model, tokenizer, textgen.Limits.for_model(model, tokenizer)


@pytest.fixture
def engine(loaded):
    model, tokenizer, limits = loaded
    engine = textgen.Engine(model, tokenizer, limits=limits)
    yield engine
    engine.close()


def generate_ids(loaded, prompt, max_new_tokens, repetition_penalty=1.0):
    model, tokenizer, _ = loaded
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         top_k=None, top_p=None, temperature=None, repetition_penalty=repetition_penalty)
    return out[0, ids.shape[1]:].tolist()


def submit(engine, loaded, prompt, **parameters):
    _, tokenizer, limits = loaded
    return engine.submit(*textgen.prepare_request(tokenizer, prompt, limits, **parameters))


def drain(generation) -> list[int]:
    return [token.id for token in generation]


def test_greedy_matches_generate_alone_and_in_a_batch(engine, loaded):
    penalties = [1.0, 1.3, 1.0, 1.2, 1.0]
    expected = [generate_ids(loaded, p, 24, r) for p, r in zip(PROMPTS, penalties)]
    alone = submit(engine, loaded, PROMPTS[0], max_new_tokens=24)
    assert drain(alone) == expected[0] and alone.finish_reason == "length"
    assert all(t.logprob is not None and t.logprob <= 0 for t in alone.tokens)
    assert alone.tokens[-1].last and not any(t.last for t in alone.tokens[:-1])

    # staggered: later requests join a batch already decoding, with other prompt lengths (left padding)
    generations = []
    for prompt, penalty in zip(PROMPTS, penalties):
        generations.append(submit(engine, loaded, prompt, max_new_tokens=24, repetition_penalty=penalty))
        time.sleep(0.01)
    assert [drain(g) for g in generations] == expected
    assert engine.peak_batch_size > 1  # they really decoded together
    assert engine.in_flight() == 0 and textgen.active_generations() == 0


def test_seeded_sampling_repeats_itself_and_matches_generate(engine, loaded):
    model, tokenizer, limits = loaded
    kwargs = dict(max_new_tokens=20, temperature=1.3, top_k=50, top_p=0.95, typical_p=0.9, repetition_penalty=1.2)
    input_ids, params = textgen.prepare_request(tokenizer, PROMPTS[0], limits, seed=7, **kwargs)
    with textgen.Generation(model, tokenizer, input_ids, params) as generation:  # generate() in a thread
        expected = drain(generation)
    batch = [submit(engine, loaded, p, seed=7 if i == 0 else i, **kwargs) for i, p in enumerate(PROMPTS)]
    assert drain(batch[0]) == expected and batch[0].params.seed == 7
    assert drain(submit(engine, loaded, PROMPTS[0], seed=7, **kwargs)) == expected
    assert drain(submit(engine, loaded, PROMPTS[0], seed=8, **kwargs)) != expected


def test_stop_sequence_and_chunked_prefill(loaded):
    model, tokenizer, limits = loaded
    long_prompt = " ".join(PROMPTS) * 2  # ~70 tokens, prefilled 16 at a time between decode steps
    expected = generate_ids(loaded, long_prompt, 12)
    with textgen.Engine(model, tokenizer, limits=limits, max_batch_prefill_tokens=16) as engine:
        runner = submit(engine, loaded, PROMPTS[1], max_new_tokens=40)
        chunked = submit(engine, loaded, long_prompt, max_new_tokens=12)
        assert drain(chunked) == expected
        assert drain(runner) == generate_ids(loaded, PROMPTS[1], 40)
        text = tokenizer.decode(expected, skip_special_tokens=True)
        stop = text[4:8]
        stopped = submit(engine, loaded, long_prompt, max_new_tokens=12, stop=[stop])
        drain(stopped)
        assert stopped.finish_reason == "stop_sequence" and stopped.generated_text.endswith(stop)
        assert text.startswith(stopped.generated_text)


def test_cancelled_sequences_leave_and_nothing_leaks(loaded):
    """Requests cancelled at random points leave the batch; the others still equal their solo result."""
    model, tokenizer, limits = loaded
    threads_before = threading.active_count()
    expected = {i: generate_ids(loaded, p, 30) for i, p in enumerate(PROMPTS)}
    rng = random.Random(0)
    quitters = set(rng.sample(range(10), 4))
    with textgen.Engine(model, tokenizer, limits=limits) as engine:
        # quitters ask for far more than they will read, so they are still decoding when they hang up
        generations = [submit(engine, loaded, PROMPTS[i % 5], max_new_tokens=900 if i in quitters else 30)
                       for i in range(10)]
        streams = {i: iter(g) for i, g in enumerate(generations)}
        patience = {i: rng.randint(1, 5) for i in quitters}
        results = {i: [] for i in streams}
        while streams:  # read them in lockstep, as concurrent clients would
            for i in list(streams):
                token = next(streams[i], None)
                if token is None:
                    del streams[i]
                    continue
                results[i].append(token.id)
                if i in quitters and len(results[i]) == patience[i]:
                    streams.pop(i).close()  # closing the iterator cancels the request
        for generation in generations:
            assert generation.done.wait(10)
        assert {i: results[i] for i in results if i not in quitters} == \
            {i: expected[i % 5] for i in results if i not in quitters}
        assert all(generations[i].state == "cancelled" and len(generations[i].streamer.token_ids) < 900
                   for i in quitters)
        assert engine.in_flight() == 0 and not engine._running and engine._cache is None
        assert threading.active_count() == threads_before + 1  # the engine's own thread, nothing per request
    assert textgen.active_generations() == 0
    engine.thread.join(10)
    assert threading.active_count() == threads_before


def test_overload_is_refused_at_once(loaded):
    model, tokenizer, limits = loaded
    with textgen.Engine(model, tokenizer, limits=limits, max_concurrent_requests=2) as engine:
        first = submit(engine, loaded, PROMPTS[0], max_new_tokens=50)
        second = submit(engine, loaded, PROMPTS[1], max_new_tokens=50)
        start = time.monotonic()
        with pytest.raises(textgen.Overloaded):
            submit(engine, loaded, PROMPTS[2], max_new_tokens=5)
        assert time.monotonic() - start < 1
        first.close(), second.close()
        assert drain(submit(engine, loaded, PROMPTS[2], max_new_tokens=5))  # a slot is free again
    with pytest.raises(ValueError, match="max_batch_total_tokens"):
        textgen.Engine(model, tokenizer, limits=limits, max_batch_total_tokens=100)


def test_a_request_whose_last_token_arrived_no_longer_counts_as_in_flight(loaded):
    """A client that reads its last token and at once sends the next request is not refused as overloaded, however
    late the engine's thread gets round to finishing the first: here it is held just after handing the token over."""
    model, tokenizer, limits = loaded
    handed_over = threading.Event()
    with textgen.Engine(model, tokenizer, limits=limits, max_concurrent_requests=1) as engine:
        with engine.held():  # the engine takes nothing before the streamer is wrapped
            first = submit(engine, loaded, PROMPTS[0], max_new_tokens=3)
            emit = first.streamer._emit

            def emit_then_wait(item):
                emit(item)
                if getattr(item, "last", False):
                    assert handed_over.wait(10)

            first.streamer._emit = emit_then_wait
        try:
            tokens = []
            for token in first:
                tokens.append(token)
                if token.last:
                    second = submit(engine, loaded, PROMPTS[1], max_new_tokens=3)  # not Overloaded
                    handed_over.set()
        finally:
            handed_over.set()
        assert len(tokens) == 3 and len(drain(second)) == 3 and first.state == "finished"


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(loaded):
    model, tokenizer, limits = loaded
    calls = {"n": 0}
    forward = model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("boom at call 6")
        return forward(*args, **kwargs)

    with textgen.Engine(model, tokenizer, limits=limits) as engine:
        model.forward = failing_forward
        try:
            generation = submit(engine, loaded, PROMPTS[0], max_new_tokens=20)
            with pytest.raises(textgen.GenerationError, match="boom at call 6"):
                drain(generation)
            assert generation.state == "failed" and 0 < len(generation.tokens) < 20
        finally:
            del model.forward
        assert drain(submit(engine, loaded, PROMPTS[0], max_new_tokens=5)) == generate_ids(loaded, PROMPTS[0], 5)


def test_the_decode_kernels_give_int8linears_bits_and_bf16_rounded_once(monkeypatch, caplog):
    """The int8 decode kernel (built at first use) computes `Int8Linear`'s forward with the same bits as its PyTorch
    operators (`kernel=False`: per-row quantizing, `torch._int_mm`, scaling, the bias's fused multiply-add) for every
    shape, 1 to `INT8_KERNEL_MAX_ROWS` rows and beyond; the bf16 one rounds the exact float32 sum (with the bias) once, as
    F.linear does; where the kernels cannot be built, one warning and PyTorch's operators for every call."""
    import shutil

    from serving.textgen import kernels

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler here: the layers keep PyTorch's kernels")
    assert kernels.decode_kernels_available()  # a C++ compiler, and ninja (a dependency)
    generator = torch.Generator().manual_seed(0)
    for bias in (False, True):
        for k, n in [(768, 2304), (3072, 768), (776, 33), (40, 7), (64, 50304)]:
            layer = torch.nn.Linear(k, n, bias=bias)
            with torch.no_grad():
                layer.weight.normal_(0, 0.02, generator=generator)
            fast, slow = textgen.Int8Linear.from_module(layer), textgen.Int8Linear.from_module(layer, kernel=False)
            assert fast.kernel and not slow.kernel
            for rows in (1, 2, 5, kernels.INT8_KERNEL_MAX_ROWS, kernels.INT8_KERNEL_MAX_ROWS + 1):
                x = torch.randn(rows, k, generator=generator) * 3
                assert torch.equal(fast(x), slow(x)), (bias, k, n, rows)
            x = torch.randn(17, k, generator=generator)  # the operator itself takes any number of rows
            assert torch.equal(torch.ops.victorian_gpt.int8_linear(x, fast.qweight, fast.weight_scale, fast.bias), slow(x))
    if kernels.bf16_kernel_native():  # bf16: float32 sums rounded once, as F.linear: within one bf16 step of it
        for m, k, n in [(1, 768, 2304), (3, 776, 33), (9, 40, 7), (16, 40, 8)]:
            a = torch.randn(m, k, generator=generator).bfloat16()
            b, bias = (torch.randn(n, k, generator=generator) * 0.05).bfloat16(), torch.randn(n).bfloat16()
            for with_bias in (None, bias):
                ours, theirs = torch.ops.victorian_gpt.bf16_gemm_nt(a, b, with_bias), F.linear(a, b, with_bias)
                exact = (a.float() @ b.float().t() + (0 if with_bias is None else with_bias.float()))
                assert ours.dtype == torch.bfloat16 and ours.shape == (m, n)
                assert ((ours.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all(), (m, k, n)  # rounded once
                assert (ours == theirs).float().mean() > 0.99
    layer = torch.nn.Linear(104, 200)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    with caplog.at_level("WARNING"):
        assert not textgen.Int8Linear.from_module(layer).kernel and not kernels.decode_kernels_available()
    assert [r.message for r in caplog.records] == [
        "the decode kernels could not be built (Ninja is required to load C++ extensions); using PyTorch's"]


@pytest.mark.parametrize("preset", ["tiny", "modern-tiny"])
def test_int8_quantizes_conv1d_and_linear_layouts(preset, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer
    from transformers.pytorch_utils import Conv1D

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset(preset))
    if not model.config.tie_word_embeddings:  # the modern head starts at zero: give it something to quantize
        torch.nn.init.normal_(model.lm_head.weight, std=0.02)
    folder = save_model_folder(model, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), tmp_path / preset)
    fp32, tokenizer = textgen.load_model(str(folder))
    int8, _ = textgen.load_model(str(folder), quantize="int8")
    assert not any(isinstance(m, (torch.nn.Linear, Conv1D)) for m in int8.modules())
    assert isinstance(int8.lm_head, textgen.Int8Linear)
    assert int8.get_input_embeddings().weight.dtype == torch.float32  # embeddings stay float

    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        reference, quantized = fp32(ids).logits, int8(ids).logits
    assert (quantized - reference).abs().max() < 0.05 * reference.abs().max()
    # per-token activation scales and an exact integer product: a row's result does not depend on the batch
    layer = int8.lm_head
    rows = torch.randn(5, layer.in_features)
    assert torch.equal(layer(rows)[2:3], layer(rows[2:3]))

    limits = textgen.Limits.for_model(int8, tokenizer)
    input_ids, params = textgen.prepare_request(tokenizer, PROMPTS[0], limits, max_new_tokens=8)
    with textgen.Engine(int8, tokenizer, limits=limits) as engine:
        batched = drain(engine.submit(input_ids, params))
    with textgen.Generation(int8, tokenizer, input_ids, params) as generation:
        assert drain(generation) == batched
    with pytest.raises(ValueError, match="unknown quantization"):
        textgen.load_model(str(folder), quantize="int4")


def test_a_process_that_leaves_while_the_engine_computes_exits_cleanly(tiny_export, tmp_path):
    """A caller that stops reading and exits (a script, a Space shutting down) while the engine thread and a
    `generate()` thread are inside torch: both are stopped and joined at exit, not torn down mid-step (which aborts
    the process with "terminate called without an active exception")."""
    import os
    import subprocess
    import sys

    code = (
        "from serving import textgen\n"
        f"model, tokenizer = textgen.load_model({str(tiny_export)!r})\n"
        "limits = textgen.Limits.for_model(model, tokenizer)\n"
        "ids, params = textgen.prepare_request(tokenizer, 'It was', limits, max_new_tokens=100, ignore_eos=True)\n"
        "engine = textgen.Engine(model, tokenizer, limits=limits)\n"
        "generations = [engine.submit(list(ids), params) for _ in range(4)]\n"
        "generations.append(textgen.Generation(model, tokenizer, list(ids), params))\n"
        "for generation in generations:\n"
        "    next(iter(generation))\n"
        "print('left', engine.in_flight(), flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "VICTORIAN_GPT_DECODE_KERNELS": "0"})
    assert result.stdout.startswith("left 4"), result.stderr[-2000:]  # it left with every engine request running
    assert result.returncode == 0, result.stderr[-2000:]
