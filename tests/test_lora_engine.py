"""LoRA adapters served per request over one base model (serving/textgen/lora.py): requests of different adapters and
of the base decode in the same batch, each exactly as its adapter merged into the base (peft's `merge_and_unload`)
decodes alone, the base's rows with the bits they have without adapters; the prefix cache keeps each adapter's KV
apart; a wrong adapter is a one-line error before any compute."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.lora import make_lora_adapter, merged_model

from serving import textgen
from serving.textgen import kernels, lora

NAMES = ("dickens", "hardy", "eliot")
PROMPT = "It was the best of times, it was the worst of times, and the"
LONGEST = 1024  # prompt + new tokens: past the window, the context shifts
OTHERS = ["Mr. Pickwick rose early and", "The fog lay thick upon the river when", "She said nothing, but"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_export, modern_tiny_export) -> dict:
    """Three random adapters (different ranks and targets) of each layout: GPT-2's Conv1D and the modern nn.Linear."""
    root = tmp_path_factory.mktemp("lora")
    made = {}
    for layout, base in (("gpt2", tiny_export), ("modern", modern_tiny_export)):
        made[layout] = {
            "dickens": make_lora_adapter(base, root / layout / "dickens", seed=1, r=4, scale=0.1),
            "hardy": make_lora_adapter(base, root / layout / "hardy", seed=2, r=8, lora_alpha=4.0, scale=0.1),
            "eliot": make_lora_adapter(base, root / layout / "eliot", seed=3, r=2, target_modules=["c_attn"],
                                       scale=0.2),
        }
    return made


def sources(folders: dict) -> dict[str, str]:
    return {name: str(folder) for name, folder in folders.items()}


def cases(names=NAMES) -> list[tuple]:
    """(adapter, prompt, parameters): the same prompt greedily under the base and each adapter, then sampled and
    other prompts."""
    out = [(None, PROMPT, dict(max_new_tokens=16))]
    out += [(name, PROMPT, dict(max_new_tokens=16)) for name in names]
    out += [(names[1], OTHERS[0], dict(max_new_tokens=12, do_sample=True, temperature=1.0, top_k=40, seed=11)),
            (None, OTHERS[1], dict(max_new_tokens=12, do_sample=True, temperature=0.9, seed=12)),
            (names[0], OTHERS[2], dict(max_new_tokens=12, do_sample=True, top_p=0.9, seed=13))]
    return out


def result(generation) -> tuple[list[int], list[float]]:
    tokens = list(generation)
    return [t.id for t in tokens], [t.logprob for t in tokens]


def together(model, tokenizer, requests, **options) -> list:
    """Every request in one batch from the first step (held), through one engine."""
    limits = textgen.Limits.for_model(model, tokenizer, max_total_tokens=LONGEST)
    with textgen.Engine(model, tokenizer, limits=limits, **options) as engine:
        with engine.held():
            generations = [engine.submit(*textgen.prepare_request(tokenizer, prompt, limits, adapter_id=adapter,
                                                                  **parameters))
                           for adapter, prompt, parameters in requests]
        results = [result(g) for g in generations]
        assert engine.peak_batch_size == len(requests)
    return results


def alone(model, tokenizer, requests, adapter_of=lambda adapter: adapter, **options) -> list:
    """Each request by itself, one after the other, through one engine (`adapter_of` maps the adapter named)."""
    limits = textgen.Limits.for_model(model, tokenizer, max_total_tokens=LONGEST)
    with textgen.Engine(model, tokenizer, limits=limits, **options) as engine:
        return [result(engine.submit(*textgen.prepare_request(tokenizer, prompt, limits,
                                                              adapter_id=adapter_of(adapter), **parameters)))
                for adapter, prompt, parameters in requests]


# ---- parsing and validation (no model)


def test_parse_lora_adapters_gives_names_and_sources_and_refuses_bad_lists():
    assert textgen.parse_lora_adapters("dickens=runs/dickens/adapter, hardy=USER/hardy-lora@v1.0,") == {
        "dickens": "runs/dickens/adapter", "hardy": "USER/hardy-lora@v1.0"}
    assert textgen.parse_lora_adapters("") == {}
    for text, words in [("a=x,a=y", "given twice"), ("=x", "empty name"), ("a=", "empty source"),
                        ("a b=x", "not a valid model id"), ("a/b=x", "not a valid model id"),
                        ("runs/adapter", "not NAME=SOURCE")]:
        with pytest.raises(ValueError, match=words) as error:
            textgen.parse_lora_adapters(text)
        assert "\n" not in str(error.value)


def test_an_unknown_adapter_id_is_refused_naming_the_available_ones():
    limits = textgen.Limits(max_input_tokens=10, max_total_tokens=20, adapters=("dickens", "hardy"))
    with pytest.raises(textgen.ValidationError, match=r"^unknown adapter 'eliot'; this server has: dickens, hardy$"):
        textgen.prepare_request(None, "text", limits, adapter_id="eliot")  # refused before the tokenizer is asked
    with pytest.raises(textgen.ValidationError, match=r"^unknown adapter 'eliot'; this server has none$"):
        textgen.prepare_request(None, "text", textgen.Limits(max_input_tokens=10, max_total_tokens=20),
                                adapter_id="eliot")


def test_the_generate_command_refuses_a_repeated_name_and_an_adapter_it_was_not_given(capsys):
    from serving.generate import main

    for argv, words in [(["m", "--prompt", "x", "--lora-adapters", "a=x,a=y"], "given twice"),
                        (["m", "--prompt", "x", "--lora-adapters", "a=x", "--adapter-id", "b"], "not one of")]:
        with pytest.raises(SystemExit) as code:
            main(argv)
        assert code.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert words in message, message


# ---- the layer


def test_each_row_gets_its_own_adapters_delta_and_base_rows_keep_their_bits():
    """`LoraLinear`: rows of the base, and of an adapter that leaves the layer (rank 0), get exactly the base layer's
    output; an adapter's row gets base + (x A^T) scaling B^T, the same bits alone or among any rows (the kernel), and
    the PyTorch stand-ins ("group", "bmm") agree with it."""
    generator = torch.Generator().manual_seed(0)
    k, n, rank = 40, 33, 4
    ranks = torch.tensor([4, 2, 0])
    a = torch.randn(3, k, rank, generator=generator) * (torch.arange(rank) < ranks[:, None, None])
    b = torch.randn(3, rank, n, generator=generator) * (torch.arange(rank)[:, None] < ranks[:, None, None])
    linear = torch.nn.Linear(k, n)
    adapters = lora.LoraAdapters(("x", "y", "z"))
    names = [None, "x", "y", "z", "x", None, "y", "x", "x"]
    for dtype in (torch.float32, torch.bfloat16):
        if dtype == torch.float32:  # the serving layers: the same bits for a row whatever the rows
            base = textgen.Float32Linear(linear.weight, linear.bias) if kernels.decode_kernels_available() else linear
        else:
            base = textgen.PackedLinear(linear.weight.bfloat16(), linear.bias.bfloat16())
        layer = lora.LoraLinear(base, adapters, a, b, ranks)
        x = torch.randn(len(names), 1, k, generator=generator).to(dtype)
        with torch.no_grad():
            plain = base(x)
            with adapters.rows(names):
                mixed = layer(x)
            expected = plain.double()
            for i, name in enumerate(names):
                s = adapters.slot(name)
                if s >= 0:
                    expected[i, 0] += x[i, 0].double() @ a[s].double() @ b[s].double()
            for i, name in enumerate(names):
                if name in (None, "z"):
                    assert torch.equal(mixed[i], plain[i]), (dtype, i)
            tolerance = 1e-5 if dtype == torch.float32 else 2e-2
            assert torch.allclose(mixed.double(), expected, atol=tolerance, rtol=tolerance), dtype
            if isinstance(base, textgen.Float32Linear) or (isinstance(base, textgen.PackedLinear) and base.kernel):
                base.invariant = True
                for i, name in enumerate(names):
                    with adapters.rows([name]):
                        assert torch.equal(layer(x[i : i + 1]), mixed[i : i + 1]), (dtype, i)
            for method in ("group", "bmm"):
                adapters.method = method
                with adapters.rows(names):
                    assert torch.allclose(layer(x).double(), expected, atol=tolerance, rtol=tolerance), (dtype, method)
                adapters.method = "kernel"
    with pytest.raises(ValueError, match="unknown adapter 'w'; this model has: x, y, z"):
        with adapters.rows(["w"]):
            pass


# ---- loading: each wrong adapter a one-line error before any compute


def load_error(monkeypatch, base, adapters: dict, before: str = "weights") -> str:
    """The one-line ValueError of loading `base` with `adapters`, checked to come before the model's weights are read
    (`before="weights"`) or before its layers are prepared for serving (`before="serving"`)."""
    from serving.textgen import loading

    def refuse(*args, **kwargs):
        raise AssertionError(f"got as far as the model's {before}")

    with monkeypatch.context() as patch, pytest.raises(ValueError) as error:
        if before == "weights":
            patch.setattr(loading.AutoModelForCausalLM, "from_pretrained", refuse)
        else:
            patch.setattr(loading, "prepare_for_serving", refuse)
        textgen.load_model(str(base), dtype="float32", lora_adapters=adapters)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_adapter_of_another_base_is_refused_before_loading(monkeypatch, adapters, modern_tiny_export, tmp_path):
    message = load_error(monkeypatch, modern_tiny_export, {"dickens": str(adapters["gpt2"]["dickens"])})
    assert message.startswith("LoRA adapter 'dickens'") and "made for another model" in message
    assert "position_embedding_type 'learned' (this model: 'rope')" in message
    # a base that cannot be read (not in the Hub cache, offline): the weights' shapes and layout decide
    unreadable = tmp_path / "unreadable"
    shutil.copytree(adapters["gpt2"]["hardy"], unreadable)
    config = json.loads((unreadable / "adapter_config.json").read_text())
    (unreadable / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/else"}))
    message = load_error(monkeypatch, modern_tiny_export, {"hardy": str(unreadable)}, before="serving")
    assert message.startswith("LoRA adapter 'hardy'") and "another model" in message


def test_an_adapter_with_another_tokenizer_is_refused(monkeypatch, adapters, tiny_export, tmp_path):
    folder = tmp_path / "retokenized"
    shutil.copytree(adapters["gpt2"]["dickens"], folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = list(vocab)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    message = load_error(monkeypatch, tiny_export, {"dickens": str(adapters["gpt2"]["dickens"]), "odd": str(folder)})
    assert message.startswith("LoRA adapter 'odd'") and "tokenizer's vocabulary" in message


def test_an_adapter_that_does_not_load_is_refused(monkeypatch, adapters, tiny_export, tmp_path):
    from safetensors.torch import load_file, save_file

    good = adapters["gpt2"]["dickens"]
    missing, garbled, stray = (tmp_path / name for name in ("missing", "garbled", "stray"))
    for folder in (missing, garbled, stray):
        shutil.copytree(good, folder)
    (missing / "adapter_model.safetensors").unlink()
    (garbled / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    tensors = load_file(str(stray / "adapter_model.safetensors"))
    tensors = {key.replace(".h.1.", ".h.7."): value for key, value in tensors.items()}  # a layer the model lacks
    save_file(tensors, str(stray / "adapter_model.safetensors"))
    for name, folder, words, before in [
        ("missing", missing, "no adapter_model.safetensors", "weights"),
        ("garbled", garbled, "cannot read adapter_model.safetensors", "weights"),
        ("stray", stray, "adapts transformer.h.7.", "serving"),
        ("nowhere", tmp_path / "nowhere", "no such folder", "weights"),
    ]:
        message = load_error(monkeypatch, tiny_export, {name: str(folder)}, before=before)
        assert message.startswith(f"LoRA adapter '{name}'") and words in message, message


def test_an_unknown_adapter_id_is_refused_by_the_engine(adapters, tiny_export):
    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32",
                                          lora_adapters={"dickens": str(adapters["gpt2"]["dickens"])})
    assert model.lora_adapters == ("dickens",)
    limits = textgen.Limits.for_model(model, tokenizer)
    assert limits.adapters == ("dickens",)
    with pytest.raises(textgen.ValidationError, match=r"^unknown adapter 'hardy'; this server has: dickens$"):
        textgen.prepare_request(tokenizer, PROMPT, limits, adapter_id="hardy")
    with textgen.Engine(model, tokenizer, limits=limits) as engine:
        with pytest.raises(textgen.ValidationError, match="unknown adapter 'hardy'"):
            engine.submit([1, 2, 3], textgen.GenerationParameters(max_new_tokens=2, adapter_id="hardy"))
        assert engine.in_flight() == 0
    plain, _ = textgen.load_model(str(tiny_export), dtype="float32")
    assert plain.lora_adapters == () and textgen.Limits.for_model(plain, tokenizer).adapters == ()


# ---- decoding


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["gpt2", "modern"])
def test_a_mixed_batch_decodes_each_request_as_its_merged_adapter_alone(layout, adapters, tiny_export,
                                                                        modern_tiny_export):
    """float32: the base and three adapters in one batch (greedy and seeded sampling, one request writing past the
    window); each adapter's request gives the tokens of its adapter merged into the base, alone through the same
    engine; the base's requests the bits of the base served without adapters."""
    base = {"gpt2": tiny_export, "modern": modern_tiny_export}[layout]
    model, tokenizer = textgen.load_model(str(base), dtype="float32", lora_adapters=sources(adapters[layout]))
    assert model.lora_adapters == NAMES and model.batch_invariant
    requests = cases()
    requests.append(("hardy", OTHERS[0], dict(max_new_tokens=140)))  # past the 128-token window: the context shifts
    mixed = together(model, tokenizer, requests)
    greedy = [tokens for (adapter, prompt, _), (tokens, _) in zip(requests, mixed) if prompt == PROMPT]
    assert len({tuple(tokens) for tokens in greedy}) == 4, "each adapter changes the continuation"

    plain, _ = textgen.load_model(str(base), dtype="float32")
    for (adapter, prompt, parameters), got in zip(requests, mixed):
        if adapter is None:
            assert got == alone(plain, tokenizer, [(None, prompt, parameters)])[0]  # tokens and logprobs, bit for bit
    for name in NAMES:
        reference = textgen.prepare_for_serving(merged_model(base, adapters[layout][name]), "asked")
        mine = [(i, request) for i, request in enumerate(requests) if request[0] == name]
        expected = alone(reference, tokenizer, [request for _, request in mine], adapter_of=lambda _: None)
        for (i, request), (tokens, logprobs) in zip(mine, expected):
            assert mixed[i][0] == tokens, (name, request[1])
            assert max(abs(x - y) for x, y in zip(mixed[i][1], logprobs)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("dtype,quantize", [("bfloat16", None), ("float32", "int8")])
def test_bf16_and_int8_mix_adapters_in_a_batch(dtype, quantize, adapters, modern_tiny_export):
    """bf16 and int8: the mixed batch gives each request what it gets alone on the same path; the base's requests
    what the base gets on that path without adapters."""
    if dtype == "bfloat16" and not kernels.bf16_kernel_native():
        pytest.skip("no native bf16 here")
    model, tokenizer = textgen.load_model(str(modern_tiny_export), dtype=dtype, quantize=quantize,
                                          lora_adapters=sources(adapters["modern"]))
    requests = cases()
    mixed = together(model, tokenizer, requests)
    assert mixed == alone(model, tokenizer, requests)
    greedy = [tokens for (adapter, prompt, _), (tokens, _) in zip(requests, mixed) if prompt == PROMPT]
    assert len({tuple(tokens) for tokens in greedy}) == 4, "each adapter changes the continuation"
    plain, _ = textgen.load_model(str(modern_tiny_export), dtype=dtype, quantize=quantize)
    base_requests = [request for request in requests if request[0] is None]
    assert [got for request, got in zip(requests, mixed) if request[0] is None] == alone(plain, tokenizer,
                                                                                         base_requests)


@pytest.mark.slow
def test_the_prefix_cache_keeps_each_adapters_kv_apart(adapters, modern_tiny_export):
    """The same prompt under two adapters: each gets its own continuation (what it gets with no cache), the second
    adapter finds nothing of the first's in the cache, and a repeat under the first finds its own."""
    model, tokenizer = textgen.load_model(str(modern_tiny_export), dtype="float32",
                                          lora_adapters=sources(adapters["modern"]))
    prompt = " ".join([PROMPT] * 3)
    requests = [("dickens", prompt, dict(max_new_tokens=10)), ("hardy", prompt, dict(max_new_tokens=10)),
                (None, prompt, dict(max_new_tokens=10)), ("dickens", prompt, dict(max_new_tokens=10))]
    uncached = alone(model, tokenizer, requests)
    limits = textgen.Limits.for_model(model, tokenizer)
    hits, cached = [], []
    with textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=1024,
                        prefix_cache_block_size=16) as engine:
        for adapter, text, parameters in requests:
            cached.append(result(engine.submit(*textgen.prepare_request(tokenizer, text, limits, adapter_id=adapter,
                                                                        **parameters))))
            hits.append(engine.prefix_cache.hits)
    assert cached == uncached
    assert len({tuple(tokens) for tokens, _ in uncached[:3]}) == 3
    assert hits == [0, 0, 0, 1]


@pytest.mark.slow
def test_generate_continues_with_the_adapter_named(adapters, tiny_export, capsys):
    from serving.generate import main

    folder = str(adapters["gpt2"]["hardy"])
    argv = [str(tiny_export), "--dtype", "float32", "--prompt", PROMPT, "--greedy", "--max-new-tokens", "12",
            "--repetition-penalty", "1.0",
            "--lora-adapters", f"dickens={adapters['gpt2']['dickens']},hardy={folder}"]
    assert main(argv + ["--adapter-id", "hardy"]) == 0
    adapted = capsys.readouterr().out
    assert main(argv) == 0
    plain = capsys.readouterr().out
    reference = textgen.prepare_for_serving(merged_model(tiny_export, adapters["gpt2"]["hardy"]), "asked")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_export))
    (tokens, _), = alone(reference, tokenizer, [(None, PROMPT, dict(max_new_tokens=12))])
    assert adapted.strip() == tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert adapted != plain
