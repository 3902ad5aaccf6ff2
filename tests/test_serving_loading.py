"""How the serving front ends load a model: `--dtype auto` and the remote-code rule (textgen.load_model), and native
folders (`victorian-gpt convert --to transformers`) giving the same tokens as the remote-code export."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from serving import textgen

PROMPTS = ["It was a dark and stormy night; the rain fell in torrents", "Mr. Pickwick",
           "The fog lay thick upon the river, and the lamplighter had scarcely begun", "A"]


def test_dtype_auto_is_bf16_only_where_the_hardware_computes_it():
    auto = textgen.resolve_dtype
    assert auto("auto", "cpu", torch.float32, flags={"avx512f", "amx_bf16"})[0] == torch.bfloat16
    assert auto("auto", "cpu", torch.float32, flags={"avx512f", "avx512_bf16"})[0] == torch.bfloat16
    assert auto("auto", "cpu", torch.float32, flags={"avx2", "avx512f"}) == (
        torch.float32, "auto: the model's own (no native bf16 here)")
    assert auto("auto", "cpu", torch.float16, flags={"amx_bf16"})[0] == torch.float16  # a half model stays half
    assert auto("auto", "cpu", torch.float32, quantize="int8", flags={"amx_bf16"})[0] == torch.float32
    assert auto("float32", "cpu", torch.float32, flags={"amx_bf16"}) == (torch.float32, "asked")
    assert auto(None, "cpu", torch.float32, flags={"amx_bf16"})[0] == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        auto("float8", "cpu", torch.float32)


def test_load_model_auto_follows_this_machine_and_float32_is_exact(tiny_export):
    native = textgen.native_bf16("cpu")  # this machine's /proc/cpuinfo
    model, _ = textgen.load_model(str(tiny_export), dtype="auto")
    assert model.dtype == (torch.bfloat16 if native else torch.float32)
    assert model.serving_dtype.startswith("bfloat16 (auto: the CPU computes bf16" if native else "float32 (auto:")
    model, _ = textgen.load_model(str(tiny_export), dtype="float32")
    assert model.dtype == torch.float32 and model.serving_dtype == "float32 (asked; batch-invariant decoding)"
    model, _ = textgen.load_model(str(tiny_export), dtype="float32", batch_invariant=False)
    assert model.dtype == torch.float32 and model.serving_dtype == "float32 (asked)"


@pytest.mark.skipif(not textgen.packing_available(), reason="no oneDNN bf16 kernels on this CPU")
@pytest.mark.parametrize("layout", ["conv1d", "linear"])
def test_bf16_on_the_cpu_serves_through_packed_linear_layers_with_the_plain_models_tokens(layout, tiny_export,
                                                                                        modern_tiny_export):
    """`load_model(dtype="bfloat16")` on the CPU replaces every linear layer (GPT-2's Conv1D or nn.Linear, the head
    included) with `PackedLinear`: on the bf16 decode kernel where it runs natively (AVX-512 BF16), the plain bf16
    model's greedy tokens with logits within bf16 rounding; packed for oneDNN (`kernel=False`, and wherever the kernel
    does not run), the same tokens and logits bit for bit; one stream and a left-padded batch. fp32 and int8 models
    are left alone."""
    from transformers import AutoModelForCausalLM

    folder = str(tiny_export if layout == "conv1d" else modern_tiny_export)
    served, tokenizer = textgen.load_model(folder, dtype="bfloat16")
    assert served.packed_linear_layers > 0 and not any(type(m) in (torch.nn.Linear, Conv1D) for m in served.modules())
    assert isinstance(served.lm_head, textgen.PackedLinear) and served.lm_head.kernel == textgen.bf16_kernel_native()
    assert ("on the bf16 decode kernel; batch-invariant decoding)" if served.lm_head.kernel
            else "packed for oneDNN)") in served.serving_dtype
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    onednn = textgen.pack_bf16(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval(), kernel=False)
    assert not onednn.lm_head.kernel
    tokenizer.padding_side = "left"
    for prompts in (PROMPTS[:1], PROMPTS):
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        kwargs = dict(max_new_tokens=12, do_sample=False, repetition_penalty=1.0, output_logits=True,
                      return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        reference = plain.generate(**inputs, **kwargs)
        packed = onednn.generate(**inputs, **kwargs)
        assert torch.equal(packed.sequences, reference.sequences)
        assert all(torch.equal(x, y) for x, y in zip(packed.logits, reference.logits))
        kernel = served.generate(**inputs, **kwargs)
        assert torch.equal(kernel.sequences, reference.sequences)
        for x, y in zip(kernel.logits, reference.logits):
            assert (x.float() - y.float()).abs().max() <= 0.02 * y.float().abs().max()
    for kwargs in (dict(dtype="float32"), dict(dtype="float32", quantize="int8")):
        model, _ = textgen.load_model(folder, **kwargs)
        assert not any(isinstance(m, textgen.PackedLinear) for m in model.modules())


@pytest.mark.slow  # torch.compile (~6 s)
def test_torch_compile_decodes_through_a_static_cache_with_the_eager_tokens(modern_tiny_export, capsys):
    """`load_model(torch_compile=True)`: int8 (the CPU path, weights shown on the meta device so torch.compile traces
    them) decodes through transformers' static KV cache and the compiled forward (`_compiled_call`), one stream and a
    left-padded batch, with the eager model's greedy tokens and logits within the compiled kernels' rounding; one
    compilation serves every length. `victorian-gpt generate --torch-compile --prompts-file` is refused in one line."""
    from serving.generate import main as generate_main

    from torch._dynamo.utils import counters

    folder = str(modern_tiny_export)
    counters.clear()
    compiled, tokenizer = textgen.load_model(folder, dtype="float32", quantize="int8", torch_compile=True)
    eager, _ = textgen.load_model(folder, dtype="float32", quantize="int8")
    assert compiled.compiled_decode and compiled.generation_config.cache_implementation == "static"
    assert compiled.serving_dtype.endswith("generate() decodes through torch.compile)")
    assert compiled.lm_head.weight.device.type == "meta"
    tokenizer.padding_side = "left"
    for prompts, new in ((PROMPTS[:2], 12), (PROMPTS[:2], 20)):
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        kwargs = dict(max_new_tokens=new, do_sample=False, repetition_penalty=1.0, output_logits=True,
                      return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        a, b = compiled.generate(**inputs, **kwargs), eager.generate(**inputs, **kwargs)
        assert torch.equal(a.sequences, b.sequences)
        assert max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits)) < 1e-3
    assert hasattr(compiled, "_compiled_call")  # generate() went through transformers' compiled forward
    # one compilation for both lengths, with the eager model's steps in between
    assert counters["frames"]["total"] == 1 and counters["stats"]["unique_graphs"] == 1, dict(counters["frames"])
    assert generate_main([folder, "--prompts-file", "x.txt", "--torch-compile"]) == 2
    assert "--prompts-file runs the batching engine" in capsys.readouterr().err


def put_in_hub_cache(folder, cache, repo_id: str, commit: str = "a" * 40):
    """`folder` as the Hub cache holds a downloaded snapshot of `repo_id` (what hf_hub_download reads offline)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def native_folders(tiny_export, tmp_path_factory, tiny_tokenizer_dir):
    """(remote-code export, its native folder) for both recipes: GPT-2 (GPT2LMHeadModel) and modern (Qwen3)."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.conversion import to_transformers
    from victorian_gpt.export import save_model_folder

    root = tmp_path_factory.mktemp("native")
    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("modern-tiny"))
    with torch.no_grad():  # the recipe starts its head (and residual outputs) at zero: every logit would tie
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    modern = save_model_folder(model, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), root / "modern-export")
    return [(export, to_transformers(export, root / f"{name}-native")) for name, export in
            (("gpt2", tiny_export), ("modern", modern))]


def test_remote_code_runs_only_when_trusted_or_local(native_folders, hub_cache, capsys):
    from serving.generate import main as generate_main

    (export, native), _ = native_folders
    put_in_hub_cache(export, hub_cache, "someone/remote-code")
    put_in_hub_cache(native, hub_cache, "someone/native")
    # a Hub repo with remote code: a one-line error before any weights are read, naming the flag and --revision
    with pytest.raises(ValueError, match=r"runs its own code .*--trust-remote-code.*--revision"):
        textgen.load_model("someone/remote-code")
    assert generate_main(["someone/remote-code", "--prompt", "It was"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--trust-remote-code" in err
    # ...which loads once asked
    model, _ = textgen.load_model("someone/remote-code", trust_remote_code=True, dtype="float32")
    assert type(model).__name__ == "VictorianGPTForCausalLM"
    # a native repo needs no trust; a local remote-code folder is trusted by default
    model, _ = textgen.load_model("someone/native", dtype="float32")
    assert type(model).__name__ == "GPT2LMHeadModel"
    model, _ = textgen.load_model(str(export), dtype="float32")
    assert type(model).__name__ == "VictorianGPTForCausalLM"


def engine_ids(model, tokenizer, prompts, max_new_tokens=12):
    """Greedy tokens of `prompts` through one engine, all in one left-padded batch: made up while the engine is held,
    not by timing (staggered submissions batched differently from run to run, and not at all on a warm machine)."""
    limits = textgen.Limits.for_model(model, tokenizer)
    with textgen.Engine(model, tokenizer, limits=limits) as engine:
        with engine.held():
            generations = [engine.submit(*textgen.prepare_request(tokenizer, prompt, limits,
                                                                  max_new_tokens=max_new_tokens))
                           for prompt in prompts]
        out = [[t.id for t in g] for g in generations]
        assert engine.peak_batch_size == len(prompts)
    return out


def test_native_folder_gives_the_remote_code_tokens(native_folders):
    """generate() alone, the engine's left-padded batch and the thread path: the same tokens on both folders."""
    for export, native in native_folders:
        (ours, tokenizer), (theirs, native_tokenizer) = (textgen.load_model(str(f), dtype="float32")
                                                         for f in (export, native))
        assert type(theirs).__name__ in ("GPT2LMHeadModel", "Qwen3ForCausalLM")
        assert tokenizer(PROMPTS[0]).input_ids == native_tokenizer(PROMPTS[0]).input_ids
        batched = engine_ids(ours, tokenizer, PROMPTS)
        assert engine_ids(theirs, native_tokenizer, PROMPTS) == batched, type(theirs).__name__
        for model, tok in ((ours, tokenizer), (theirs, native_tokenizer)):
            assert textgen.generate_text(model, tok, PROMPTS[0], max_new_tokens=12) == \
                tokenizer.decode(batched[0], skip_special_tokens=True)
