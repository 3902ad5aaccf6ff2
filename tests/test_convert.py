"""`victorian-gpt convert`: native transformers folders and GGUF files, proven by equal logits, tokens and tensors.

The native folder is loaded in a stranger's process (victorian_gpt not importable, `trust_remote_code=False`, no
stdin for a "run custom code?" prompt), and its fp32 logits and greedy tokens are compared with ours. The GGUF file is
read back with the `gguf` package's reader and each tensor compared with ours, re-derived here from the export's own
names. (llama.cpp itself runs in bench/bench_llamacpp.py, which CI does not build.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers.isolation import REPO_ROOT, run_isolated


def _main_command_shape() -> tuple[str, dict, str]:
    """The README main command's model, as its config names it: whatever the recipe adopts must still convert."""
    config = yaml.safe_load((REPO_ROOT / "training" / "configs" / "pg19-sample-cpu.yaml").read_text())
    return config["model_preset"], config.get("model_overrides") or {}, "Qwen3ForCausalLM"


# shape name -> (preset, overrides, the native class it must become)
SHAPES = {
    "qwen3": ("modern-tiny", {}, "Qwen3ForCausalLM"),
    "llama": ("modern-tiny", {"qk_norm": False}, "LlamaForCausalLM"),
    "gpt2": ("tiny", {}, "GPT2LMHeadModel"),
    "main-command": _main_command_shape(),
    # another attention scale folds into the queries: the QK-norm's weight, Llama's q_proj, GPT-2's c_attn
    "qwen3-attention-multiplier": ("modern-tiny", {"attention_multiplier": 0.2}, "Qwen3ForCausalLM"),
    "llama-attention-multiplier": ("modern-tiny", {"qk_norm": False, "attention_multiplier": 0.2}, "LlamaForCausalLM"),
    "gpt2-attention-multiplier": ("tiny", {"attention_multiplier": 0.2}, "GPT2LMHeadModel"),
}
GGUF_ARCH = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}
PROMPTS = ["It was the best of times, it was the worst of times,", "Call me"]


def _make_export(folder: Path, tokenizer_dir: Path, preset: str, **overrides) -> Path:
    """A random tiny export whose every weight is away from its init (an untied head starts at zero, norms at one:
    converting those would prove nothing)."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset(preset, **overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return save_model_folder(model, AutoTokenizer.from_pretrained(tokenizer_dir), folder)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("convert")
    return {name: _make_export(root / name / "export", tiny_tokenizer_dir, preset, **over)
            for name, (preset, over, _) in SHAPES.items()}


def _convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "victorian_gpt.cli", "convert", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _ours(export: Path) -> dict:
    """Our model's fp32 logits on one prompt and greedy tokens alone and in a left-padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    single = tokenizer(PROMPTS[0], return_tensors="pt")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**single).logits
    greedy = model.generate(**single, do_sample=False, max_new_tokens=16)
    padded = model.generate(**batch, do_sample=False, max_new_tokens=16)
    return {"input_ids": single["input_ids"], "logits": logits, "greedy": greedy, "padded": padded}


NATIVE_STRANGER = r"""
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

jobs, prompts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for folder, expected_class, out in jobs:
    assert not [n for n in os.listdir(folder) if n.endswith(".py")], os.listdir(folder)
    config = json.load(open(os.path.join(folder, "config.json")))
    assert "auto_map" not in config and config["architectures"] == [expected_class], config
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    assert type(model).__name__ == expected_class, type(model)
    assert type(model).__module__.startswith("transformers.models."), type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained(folder)  # no prompt: stdin is closed, a question would fail here
    assert model.generation_config.do_sample is True and model.generation_config.top_k == 50, model.generation_config
    single = tokenizer(prompts[0], return_tensors="pt")
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**single).logits
    greedy = model.generate(**single, do_sample=False, max_new_tokens=16)
    padded = model.generate(**batch, do_sample=False, max_new_tokens=16)
    save_file({"input_ids": single["input_ids"], "logits": logits, "greedy": greedy, "padded": padded}, out)
    print("NATIVE OK", type(model).__name__)
"""


@pytest.fixture(scope="module")
def natives(exports, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each export converted (the first through the installed command line, the others through `main`), then
    loaded in ONE stranger's process (an interpreter start costs seconds on a busy 2-core machine)."""
    from victorian_gpt.conversion.cli import main

    root = tmp_path_factory.mktemp("natives")
    jobs = []
    for i, (shape, export) in enumerate(exports.items()):
        native = root / shape
        if i == 0:
            result = _convert(str(export), "--to", "transformers", "--output", str(native))
            assert result.returncode == 0, result.stderr
            assert SHAPES[shape][2] in result.stdout
        else:
            assert main([str(export), "--to", "transformers", "--output", str(native)]) == 0
        jobs.append((str(native), SHAPES[shape][2], str(root / f"{shape}.safetensors")))
    code = NATIVE_STRANGER.replace("sys.argv[1]", repr(json.dumps(jobs))).replace("sys.argv[2]", repr(json.dumps(PROMPTS)))
    stranger = run_isolated(code, root)
    assert stranger.returncode == 0, stranger.stderr[-3000:]
    from safetensors.torch import load_file

    return {shape: (root / shape, load_file(root / f"{shape}.safetensors")) for shape in exports}


@pytest.mark.slow  # the `natives` fixture converts and runs a stranger's process (~10 s)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_native_folder_matches_ours_without_remote_code(shape, exports, natives):
    export, (native, theirs) = exports[shape], natives[shape]
    assert {p.name for p in native.iterdir()} == {"config.json", "model.safetensors", "generation_config.json",
                                                    "tokenizer.json", "tokenizer_config.json"}
    assert (native / "generation_config.json").read_bytes() == (export / "generation_config.json").read_bytes()
    ours = _ours(export)
    assert torch.equal(theirs["input_ids"], ours["input_ids"]), "the tokenizer must encode as ours does"
    assert ours["logits"].abs().max() > 1.0, "a test on near-zero logits would prove nothing"
    # float32 rounding, relative to the logits' size (a folded attention scale rounds differently, by ~1e-6 relative)
    assert (theirs["logits"] - ours["logits"]).abs().max().item() <= 1e-5 * ours["logits"].abs().max().item()
    assert torch.equal(theirs["greedy"], ours["greedy"])
    assert torch.equal(theirs["padded"], ours["padded"]), "generate() on a left-padded batch: the same tokens"


@pytest.mark.slow  # the `natives` fixture (~10 s)
def test_native_config_speaks_every_readers_dialect(natives):
    """transformers 5 reads rope_parameters, 4.x and vLLM rope_theta; llama.cpp's GPT-2 converter reads n_ctx."""
    qwen3 = json.loads((natives["qwen3"][0] / "config.json").read_text())
    assert qwen3["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0} and qwen3["rope_theta"] == 10000.0
    assert (qwen3["head_dim"], qwen3["intermediate_size"], qwen3["rms_norm_eps"]) == (16, 192, 1e-5)
    assert (qwen3["bos_token_id"], qwen3["eos_token_id"], qwen3["pad_token_id"]) == (0, 0, 1)
    assert qwen3["tie_word_embeddings"] is False and qwen3["dtype"] == "float32"
    gpt2 = json.loads((natives["gpt2"][0] / "config.json").read_text())
    assert gpt2["n_ctx"] == gpt2["n_positions"] == 128 and gpt2["tie_word_embeddings"] is True
    tokenizer_config = json.loads((natives["gpt2"][0] / "tokenizer_config.json").read_text())
    assert "auto_map" not in tokenizer_config


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
        ({"activation_function": "relu2"}, "activation_function='relu2' with rotary positions"),
        ({"activation_function": "gelu"}, "activation_function='gelu' with rotary positions"),
        ({"mlp_bias": True}, "qk_norm with mlp_bias=True"),
        ({"norm_type": "layernorm"}, "norm_type='layernorm' with rotary positions"),
        ({"position_embedding_type": "learned"}, "norm_type='rmsnorm' with learned positions"),
    ],
)
def test_an_option_no_native_class_has_is_refused_by_name(overrides, named, tmp_path, tiny_tokenizer_dir, capsys):
    from victorian_gpt.conversion.cli import main

    export = _make_export(tmp_path / "export", tiny_tokenizer_dir, "modern-tiny", **overrides)
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    for to, output in (("transformers", tmp_path / "native"), ("gguf", tmp_path / "model.gguf")):
        assert main([str(export), "--to", to, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert named in err and len(err.strip().splitlines()) == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written, not even a temporary"


def _break(case: str, export: Path, tmp_path: Path) -> tuple[Path, str]:
    """A bad input and the words its one-line error must contain."""
    if case == "not_an_export":
        folder = tmp_path / "not-an-export"
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        return folder, "is not an export: no config.json"
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    if case == "other_model_type":
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
        return broken, "is not a VictorianGPT export: config.json has model_type 'gpt2'"
    if case == "missing_weights":
        (broken / "model.safetensors").unlink()
        return broken, "has no model.safetensors"
    if case == "corrupt_weights":
        data = (broken / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
        return broken, "model.safetensors is corrupt"
    if case == "wrong_shapes":
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "n_embd": 128}))
        return broken, "has shape"
    if case == "missing_path":
        return tmp_path / "nowhere", "does not exist"
    if case == "offline_hub_id":
        return Path("victoria/never-published"), "victoria/never-published is not in the local Hub cache"
    raise AssertionError(case)


BAD_INPUTS = ["not_an_export", "other_model_type", "missing_weights", "corrupt_weights", "wrong_shapes", "missing_path",
              "offline_hub_id"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_before_anything_is_written(case, exports, tmp_path, capsys):
    from victorian_gpt.conversion.cli import main

    export, expected = _break(case, exports["qwen3"], tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for to, output in (("transformers", out_dir / "native"), ("gguf", out_dir / "model.gguf")):
        assert main([str(export), "--to", to, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert list(out_dir.iterdir()) == [], "nothing written"


def test_existing_output_needs_overwrite_and_failure_half_way_leaves_nothing(exports, tmp_path, capsys, monkeypatch):
    import victorian_gpt.conversion.native

    from victorian_gpt.conversion.cli import main

    export = exports["llama"]
    native, gguf_file = tmp_path / "native", tmp_path / "model.gguf"
    native.mkdir()
    (native / "keep.txt").write_text("mine")
    gguf_file.write_bytes(b"mine")
    assert main([str(export), "--to", "transformers", "--output", str(native)]) == 2
    assert main([str(export), "--to", "gguf", "--output", str(gguf_file)]) == 2
    assert capsys.readouterr().err.count("already exists (pass --overwrite to replace it)") == 2
    assert (native / "keep.txt").read_text() == "mine" and gguf_file.read_bytes() == b"mine"
    # the export itself is never an output, even with --overwrite
    assert main([str(export), "--to", "transformers", "--output", str(export), "--overwrite"]) == 2
    assert "is the export itself" in capsys.readouterr().err and (export / "config.json").is_file()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(victorian_gpt.conversion.native, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main([str(export), "--to", "transformers", "--output", str(native), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "native"], "no temporary left behind"
    assert [p.name for p in native.iterdir()] == ["keep.txt"], "the old output is intact"
    monkeypatch.undo()

    assert main([str(export), "--to", "transformers", "--output", str(native), "--overwrite"]) == 0
    assert main([str(export), "--to", "gguf", "--output", str(gguf_file), "--overwrite"]) == 0
    assert not (native / "keep.txt").exists() and (native / "model.safetensors").is_file()
    assert gguf_file.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "native"]


# --------------------------------------------------------------------------------------------------- GGUF
def _permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's pairwise-RoPE row order, written out independently of the converter: within each head, row r of
    the first half goes to 2r and row r of the second half to 2r + 1."""
    head = weight.shape[0] // n_head
    order = []
    for h in range(n_head):
        for r in range(head // 2):
            order += [h * head + r, h * head + head // 2 + r]
    return weight[order]


def _expected_gguf(export: Path, shape: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    config = json.loads((export / "config.json").read_text())
    ours = load_file(export / "model.safetensors")
    C, L, H = config["n_embd"], config["n_layer"], config["n_head"]
    kind = GGUF_ARCH[SHAPES[shape][2]]
    # llama.cpp scales attention by 1/sqrt(head size): another scale is a factor on the queries
    factor = 1.0 if config.get("attention_multiplier") is None else config["attention_multiplier"] * (C // H) ** 0.5
    expected = {"token_embd.weight": ours["transformer.wte.weight"], "output_norm.weight": ours["transformer.ln_f.weight"]}
    if not config["tie_word_embeddings"]:
        expected["output.weight"] = ours["lm_head.weight"]
    for i in range(L):
        h = lambda name: ours[f"transformer.h.{i}.{name}"]  # noqa: E731
        b = f"blk.{i}."
        expected[b + "attn_norm.weight"], expected[b + "ffn_norm.weight"] = h("ln_1.weight"), h("ln_2.weight")
        if kind == "gpt2":  # Conv1D (in, out) -> (out, in)
            expected["position_embd.weight"] = ours["transformer.wpe.weight"]
            expected["output_norm.bias"] = ours["transformer.ln_f.bias"]
            for src, dst in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm")):
                expected[b + dst + ".bias"] = h(src + ".bias")
            for src, dst in (("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"),
                             ("mlp.c_proj", "ffn_down")):
                expected[b + dst + ".weight"], expected[b + dst + ".bias"] = h(src + ".weight").T, h(src + ".bias")
            qkv_weight, qkv_bias = expected[b + "attn_qkv.weight"].clone(), expected[b + "attn_qkv.bias"].clone()
            qkv_weight[:C] *= factor
            qkv_bias[:C] *= factor
            expected[b + "attn_qkv.weight"], expected[b + "attn_qkv.bias"] = qkv_weight, qkv_bias
            continue
        q, k, v = h("attn.c_attn.weight").split(C)
        if kind == "llama":
            q, k = _permute(q * factor, H), _permute(k, H)
        else:
            expected[b + "attn_q_norm.weight"] = h("attn.q_norm.weight") * factor
            expected[b + "attn_k_norm.weight"] = h("attn.k_norm.weight")
        expected[b + "attn_q.weight"], expected[b + "attn_k.weight"], expected[b + "attn_v.weight"] = q, k, v
        expected[b + "attn_output.weight"] = h("attn.c_proj.weight")
        gate, up = h("mlp.c_fc.weight").chunk(2)
        expected[b + "ffn_gate.weight"], expected[b + "ffn_up.weight"] = gate, up
        expected[b + "ffn_down.weight"] = h("mlp.c_proj.weight")
    return expected


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gguf_f32_holds_our_tensors_and_llama_cpp_metadata(shape, exports, tmp_path):
    import gguf
    import numpy as np

    export = exports[shape]
    out = tmp_path / "model.gguf"
    from victorian_gpt.conversion.cli import main

    assert main([str(export), "--to", "gguf", "--output", str(out)]) == 0
    reader = gguf.GGUFReader(out)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    config = json.loads((export / "config.json").read_text())
    arch = GGUF_ARCH[SHAPES[shape][2]]
    assert fields["general.architecture"] == arch and fields["general.file_type"] == 0  # ALL_F32
    assert fields[f"{arch}.block_count"] == config["n_layer"]
    assert fields[f"{arch}.context_length"] == config["n_positions"]
    assert fields[f"{arch}.embedding_length"] == config["n_embd"]
    assert fields[f"{arch}.attention.head_count"] == config["n_head"]
    inner = 4 * config["n_embd"] if arch == "gpt2" else fields[f"{arch}.feed_forward_length"]
    assert fields[f"{arch}.feed_forward_length"] == inner
    if arch == "gpt2":
        assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(config["layer_norm_epsilon"])
    else:
        assert fields[f"{arch}.rope.freq_base"] == config["rope_theta"]
        assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config["layer_norm_epsilon"])
        assert fields[f"{arch}.attention.head_count_kv"] == config["n_head"]
        assert fields[f"{arch}.attention.key_length"] == config["n_embd"] // config["n_head"]

    # the tokenizer: our vocabulary in id order, our merges, "gpt-2" pre-tokenizer, no BOS added
    tokenizer = json.loads((export / "tokenizer.json").read_text())
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()} | {a["id"]: a["content"] for a in tokenizer["added_tokens"]}
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == [by_id.get(i, f"[PAD{i}]") for i in range(config["vocab_size"])]
    assert fields["tokenizer.ggml.token_type"][:2] == [gguf.TokenType.CONTROL] * 2  # <|endoftext|>, <|pad|>
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.padding_token_id"]) == (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"])
    assert fields["tokenizer.ggml.add_bos_token"] is False

    expected = _expected_gguf(export, shape)
    written = {t.name: t for t in reader.tensors}
    assert set(written) == set(expected)
    for name, tensor in expected.items():
        assert written[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        assert list(written[name].shape) == list(reversed(tensor.shape)), name  # ggml order
        assert np.array_equal(np.asarray(written[name].data).reshape(tensor.shape), tensor.numpy()), name


def test_gguf_f16_and_q8_0_types_and_values(exports, tmp_path, capsys, tiny_tokenizer_dir):
    import gguf
    import numpy as np

    from victorian_gpt.conversion.cli import main

    export = exports["gpt2"]
    expected = _expected_gguf(export, "gpt2")
    for outtype, file_type, matrix_type, tolerance in (("f16", 1, gguf.GGMLQuantizationType.F16, 1e-3),
                                                       ("q8_0", 7, gguf.GGMLQuantizationType.Q8_0, 0.02)):
        out = tmp_path / f"model-{outtype}.gguf"
        assert main([str(export), "--to", "gguf", "--output", str(out), "--outtype", outtype]) == 0
        reader = gguf.GGUFReader(out)
        assert reader.fields["general.file_type"].contents() == file_type
        for t in reader.tensors:
            matrix = t.name.endswith(".weight") and len(t.shape) == 2 and t.name != "position_embd.weight"
            assert t.tensor_type == (matrix_type if matrix else gguf.GGMLQuantizationType.F32), t.name
            values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[t.name].shape)
            assert np.abs(values - expected[t.name].numpy()).max() <= tolerance, t.name

    # q8_0 needs rows that are whole blocks of 32: a 48-wide model cannot be q8_0, and it is said before writing
    odd = _make_export(tmp_path / "odd", tiny_tokenizer_dir, "tiny", n_embd=48)
    capsys.readouterr()
    assert main([str(odd), "--to", "gguf", "--output", str(tmp_path / "odd.gguf"), "--outtype", "q8_0"]) == 2
    err = capsys.readouterr().err
    assert "--outtype q8_0: " in err and "has rows of 48 values, not a multiple of 32" in err, err
    assert not (tmp_path / "odd.gguf").exists()
    assert main([str(odd), "--to", "gguf", "--output", str(tmp_path / "odd.gguf"), "--outtype", "q4_0"]) == 2
    assert "--outtype 'q4_0' is not one of f32, f16, q8_0" in capsys.readouterr().err
