"""Behaviour of VictorianGPTConfig / VictorianGPTForCausalLM: shapes, loss, causality, cache, padding, saving, each
architecture option, the attention implementations, mixed precision and the exports made before the options."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from helpers.isolation import REPO_ROOT
from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM, VictorianGPTModel
from victorian_gpt.configuration_victorian_gpt import MODERN
from victorian_gpt.modeling_victorian_gpt import CACHE_FIELD
from victorian_gpt.modeling_victorian_gpt import GENERATION_DEFAULTS

torch.set_num_threads(2)

# Each architecture option alone on the GPT-2 tiny model, and all of them together (the modern recipe).
VARIANTS = {
    "gpt2": {},
    "rope": dict(position_embedding_type="rope"),
    "rmsnorm": dict(norm_type="rmsnorm"),
    "relu2": dict(activation_function="relu2"),
    "swiglu": dict(activation_function="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_word_embeddings=False),
    "linear_no_bias": dict(weight_layout="linear", attention_bias=False, mlp_bias=False),
    "zero_init_residual": dict(zero_init_residual=True),
    "softcap": dict(final_logit_softcapping=2.0),
    "modern": MODERN,
    "attention_multiplier": {**MODERN, "attention_multiplier": 0.3},
}
variants = pytest.mark.parametrize("variant", list(VARIANTS))


def make_model(seed=0, variant="gpt2", **overrides):
    """A tiny model. Weights that start at zero (an untied head, zero-initialised residual projections) get small
    random values, as training would give them: a model that outputs constant logits tests nothing."""
    torch.manual_seed(seed)
    config = VictorianGPTConfig.from_preset(
        "tiny", **{**VARIANTS[variant], "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **overrides}
    )
    model = VictorianGPTForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model


def random_ids(batch, length, vocab=512, seed=1):
    return torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_outputs():
    model = make_model()
    ids = random_ids(3, 17)
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (3, 17, 512)
    assert isinstance(out.cache, DynamicCache)
    assert out.cache.get_seq_length() == 17
    assert len(out.hidden_states) == model.config.n_layer + 1
    assert out.hidden_states[0].shape == (3, 17, 64)
    base = model.transformer(ids, use_cache=False)
    assert base.last_hidden_state.shape == (3, 17, 64) and base.cache is None
    assert model(ids, logits_to_keep=1).logits.shape == (3, 1, 512)
    assert isinstance(model(ids, return_dict=False), tuple)


def test_loss_equals_hand_computed_cross_entropy():
    model = make_model()
    ids = random_ids(2, 12)
    labels = ids.clone()
    labels[0, 5] = -100  # ignored target
    out = model(ids, labels=labels)
    logits = out.logits
    nll, count = 0.0, 0
    for b in range(2):
        for t in range(11):
            target = labels[b, t + 1].item()
            if target == -100:
                continue
            nll += -torch.log_softmax(logits[b, t].double(), dim=-1)[target].item()
            count += 1
    assert count == 21
    assert out.loss.item() == pytest.approx(nll / count, rel=1e-5)
    # `num_items_in_batch` turns the mean into a sum over that count (gradient accumulation).
    summed = model(ids, labels=labels, num_items_in_batch=42).loss
    assert summed.item() == pytest.approx(nll / 42, rel=1e-5)


@variants
def test_causality_later_tokens_do_not_change_earlier_logits(variant):
    model = make_model(variant=variant)
    ids = random_ids(1, 20)
    changed = ids.clone()
    changed[0, 12:] = (changed[0, 12:] + 7) % 512
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3


@variants
def test_cached_and_uncached_decoding_agree(variant):
    model = make_model(variant=variant)
    prompt = random_ids(1, 9)
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, repetition_penalty=1.0,
                            output_logits=True, return_dict_in_generate=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, repetition_penalty=1.0,
                              output_logits=True, return_dict_in_generate=True)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # and by hand: prefill, then one token at a time through the Cache API, against full recomputation
    cache = DynamicCache(config=model.config)
    seq = cached.sequences[0]
    model(seq[None, :9], cache=cache)
    for t in range(9, seq.numel()):
        step = model(seq[None, t : t + 1], cache=cache).logits[0, -1]
        full = model(seq[None, : t + 1], use_cache=False).logits[0, -1]
        torch.testing.assert_close(step, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_generate_grows_its_kv_cache_in_place_with_identical_logits(variant):
    """generate()'s DynamicCache gets GrowingKVLayers (a decode step writes in place, no torch.cat of the whole cache);
    a cache of another class is left as it is. Both give the same logits bit for bit, in a left-padded batch, and a
    crop (what assisted decoding does) followed by new tokens matches recomputation."""
    from victorian_gpt.modeling_victorian_gpt import GrowingKVLayer

    class PlainCache(DynamicCache):
        pass

    model = make_model(variant=variant, initializer_range=0.3)
    ids, mask = random_ids(2, 9), torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=70, min_new_tokens=70, do_sample=False, repetition_penalty=1.0,
                  output_logits=True, return_dict_in_generate=True)
    grown = model.generate(ids, **kwargs)
    plain = model.generate(ids, **kwargs, **{CACHE_FIELD: PlainCache(config=model.config)})
    assert torch.equal(grown.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(grown.logits, plain.logits))
    layers = getattr(grown, CACHE_FIELD).layers
    assert all(type(layer) is GrowingKVLayer for layer in layers)
    assert layers[0]._room[0].shape[-2] > layers[0].keys.shape[-2] == 9 + 70 - 1  # room left: no copy per token
    assert all(type(layer) is not GrowingKVLayer for layer in getattr(plain, CACHE_FIELD).layers)

    seq = grown.sequences[:1, :40]
    cache = DynamicCache(config=model.config)
    model(seq[:, :30], cache=cache)
    model(seq[:, 30:31], cache=cache)  # room allocated
    cache.crop(-11)  # back to 20 tokens
    extended = model(seq[:, 20:40], cache=cache).logits
    torch.testing.assert_close(extended, model(seq, use_cache=False).logits[:, 20:40], rtol=0, atol=1e-5)


@variants
def test_multi_token_extension_of_a_cache_is_causal(variant):
    model = make_model(variant=variant)
    ids = random_ids(1, 16)
    cache = DynamicCache(config=model.config)
    model(ids[:, :10], cache=cache)
    chunk = model(ids[:, 10:], cache=cache).logits
    full = model(ids, use_cache=False).logits[:, 10:]
    torch.testing.assert_close(chunk, full, rtol=0, atol=1e-5)


@variants
def test_left_padded_batch_generates_what_each_prompt_does_alone(variant):
    model = make_model(variant=variant)
    prompts = [random_ids(1, n, seed=n)[0] for n in (4, 11, 7)]
    longest = max(p.numel() for p in prompts)
    pad = model.config.pad_token_id
    ids = torch.full((3, longest), pad)
    mask = torch.zeros((3, longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - p.numel():] = p
        mask[i, longest - p.numel():] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, repetition_penalty=1.0,
                             eos_token_id=None)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8, do_sample=False, repetition_penalty=1.0,
                               eos_token_id=None)
        assert torch.equal(batched[i, longest:], alone[0, p.numel():]), f"prompt {i} differs when batched"
    # the padded forward pass gives the same logits at real positions as the unpadded one
    logits = model(ids, attention_mask=mask).logits
    for i, p in enumerate(prompts):
        torch.testing.assert_close(logits[i, longest - p.numel():], model(p[None]).logits[0], rtol=0, atol=1e-5)
        assert torch.isfinite(logits[i]).all()


def test_generation_defaults_are_used_unless_overridden():
    model = make_model()
    gc = model.generation_config
    assert {name: getattr(gc, name) for name in GENERATION_DEFAULTS} == GENERATION_DEFAULTS
    assert (gc.bos_token_id, gc.eos_token_id, gc.pad_token_id) == (0, 0, 1)
    prompt = random_ids(1, 5)
    torch.manual_seed(3)
    a = model.generate(prompt, max_new_tokens=15)
    torch.manual_seed(4)
    b = model.generate(prompt, max_new_tokens=15)
    assert not torch.equal(a, b), "default generation should sample"
    g1 = model.generate(prompt, max_new_tokens=15, do_sample=False)
    g2 = model.generate(prompt, max_new_tokens=15, do_sample=False)
    assert torch.equal(g1, g2)


def test_tied_embeddings_and_gpt2_initialisation():
    model = make_model(n_layer=8, n_embd=128, n_head=4)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    std = model.config.initializer_range
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(std, rel=0.05)
    residual_std = std / (2 * model.config.n_layer) ** 0.5
    assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
    assert torch.all(block.ln_1.weight == 1) and torch.all(block.attn.c_attn.bias == 0)


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_save_load_round_trip_is_bit_exact(tmp_path, caplog, variant):
    model = make_model(variant=variant)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert {"configuration_victorian_gpt.py", "modeling_victorian_gpt.py"} <= set(files)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    with caplog.at_level(logging.WARNING):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert "newly initialized" not in caplog.text and "MISSING" not in caplog.text
    tied = loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert tied == model.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    ids = random_ids(2, 30)
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.generation_config.temperature == GENERATION_DEFAULTS["temperature"]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VictorianGPTConfig)


@variants
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    model = make_model(variant=variant).train()
    ids = random_ids(2, 16)
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # transformers 5.23 renamed it (the old name warns); the model supports both
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    assert all(block.gradient_checkpointing for block in model.transformer.h)
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-7)


def test_dropout_is_active_only_in_training():
    model = make_model(resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
    ids = random_ids(1, 16)
    assert torch.equal(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)


def test_sequence_longer_than_context_is_refused():
    model = make_model()
    with pytest.raises(ValueError, match="129 tokens exceed the model's context of 128: a prompt must fit in it"):
        model(random_ids(1, 129))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_embd=100, n_head=3), "divisible by `n_head`"),
        (dict(n_layer=0), "`n_layer` must be a positive integer"),
        (dict(vocab_size=-5), "`vocab_size` must be a positive integer"),
        (dict(n_positions=12.5), "`n_positions` must be a positive integer"),
        (dict(resid_pdrop=1.0), r"`resid_pdrop` must be in \[0, 1\)"),
        (dict(attn_pdrop=-0.1), r"`attn_pdrop` must be in \[0, 1\)"),
        (dict(activation_function="relu"), "activation_function"),
        (dict(layer_norm_epsilon=0), "layer_norm_epsilon"),
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(weight_layout="columns"), "weight_layout"),
        (dict(qk_norm="yes"), "`qk_norm` must be true or false"),
        (dict(attention_bias=False), "always has biases"),
        (dict(position_embedding_type="rope", rope_theta=0), "rope_theta"),
        (dict(n_embd=36, n_head=4, position_embedding_type="rope"), "even head size"),
        (dict(final_logit_softcapping=-1.0), "final_logit_softcapping"),
        (dict(attention_multiplier=0.0), "`attention_multiplier` must be > 0 or None"),
        (dict(attention_multiplier="1/8"), "`attention_multiplier` must be > 0 or None"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        VictorianGPTConfig(**overrides)


def test_attention_multiplier_scales_the_logits_as_the_query_norm_would():
    """`attention_multiplier` m is softmax(q k^T m): the default scale with the QK-norm's query weight times
    m * sqrt(head size), which is how a converted model carries it. And it is not the default."""
    scaled = make_model(variant="attention_multiplier")
    plain = make_model(variant="modern")
    plain.load_state_dict(scaled.state_dict())
    ids = random_ids(2, 16)
    with torch.no_grad():
        before = plain(ids).logits
        for block in plain.transformer.h:
            block.attn.q_norm.weight.mul_(0.3 * (64 // 4) ** 0.5)
        torch.testing.assert_close(plain(ids).logits, scaled(ids).logits, rtol=0, atol=1e-5)
        assert (before - scaled(ids).logits).abs().max() > 1e-3


def test_presets_and_attribute_map():
    big = VictorianGPTConfig.from_preset("gpt2-124m")
    assert (big.num_hidden_layers, big.hidden_size, big.num_attention_heads, big.max_position_embeddings) == (
        12, 768, 12, 2048)
    assert big.vocab_size == 50304 and big.vocab_size % 64 == 0 and big.resid_pdrop == 0.2 and big.tie_word_embeddings
    with torch.device("meta"):
        n_params = sum(p.numel() for p in VictorianGPTForCausalLM(big).parameters())
    assert 120e6 < n_params < 130e6  # "about 124M"
    with pytest.raises(ValueError, match="Unknown model preset"):
        VictorianGPTConfig.from_preset("gpt2-xxl")
    base = VictorianGPTModel(VictorianGPTConfig.from_preset("tiny"))
    assert base.get_input_embeddings().weight.shape == (512, 64)


def test_inference_logits_follow_weight_updates():
    """The cached transposed output projection used without autograd must never serve stale weights."""
    model = make_model()
    ids = random_ids(1, 8)
    with torch.no_grad():
        before = model(ids).logits
        expected = F.linear(model.transformer(ids).last_hidden_state, model.lm_head.weight)
        torch.testing.assert_close(before, expected, rtol=0, atol=1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(ids, labels=ids).loss.backward()
    optimizer.step()  # in-place update of the tied weight
    with torch.no_grad():
        after = model(ids).logits
        expected = F.linear(model.transformer(ids).last_hidden_state, model.lm_head.weight)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    assert (after - before).abs().max() > 1e-3
    with torch.no_grad():
        model.to(torch.float64)
        torch.testing.assert_close(model(ids).logits, after.double(), rtol=0, atol=1e-5)


def test_modern_options_build_the_modules_they_name():
    model = make_model(variant="modern")
    block = model.transformer.h[0]
    assert model.transformer.wpe is None  # rotary positions: no position embedding table
    assert type(block.ln_1).__name__ == "VictorianGPTRMSNorm" and block.attn.q_norm is not None
    assert isinstance(block.attn.c_attn, torch.nn.Linear) and block.attn.c_attn.bias is None
    assert block.mlp.c_fc.weight.shape == (2 * 192, 64)  # nn.Linear (out, in): SwiGLU's gate and value, 8/3 x 64 rounded up
    swiglu = make_model(variant="swiglu").transformer.h[0].mlp
    assert swiglu.c_fc.weight.shape == (64, 2 * 192)  # Conv1D (in, out): gate and value, 8/3 x 64 rounded up to 64


def test_untied_head_and_zero_init_residual_start_at_zero():
    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("modern-tiny", zero_init_residual=True))
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert not model.lm_head.weight.any()
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    ids = random_ids(1, 10)
    # blocks start as the identity and the head at zero: every next token is equally likely
    torch.testing.assert_close(model(ids).logits, torch.zeros(1, 10, 512))


def test_presets_modern_124m_has_the_gpt2_shape_and_every_modern_option():
    modern, gpt2 = VictorianGPTConfig.from_preset("modern-124m"), VictorianGPTConfig.from_preset("gpt2-124m")
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        assert getattr(modern, key) == getattr(gpt2, key)
    for key, value in MODERN.items():
        assert getattr(modern, key) == value
    with torch.device("meta"):
        n_params = sum(p.numel() for p in VictorianGPTForCausalLM(modern).parameters())
    assert 150e6 < n_params < 170e6  # the 124M body plus an untied 50,304 x 768 head


@pytest.mark.parametrize("variant", ["gpt2", "rope", "modern"])  # the options that change attention's inputs
def test_eager_and_sdpa_attention_agree(variant, tmp_path):
    model = make_model(variant=variant)
    model.save_pretrained(tmp_path)
    ids = random_ids(3, 20)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    real = mask.bool()
    outputs = {}
    for implementation in ("sdpa", "eager"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = (
                loaded(ids).logits,
                loaded(ids, attention_mask=mask).logits[real],
                loaded.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, repetition_penalty=1.0),
            )
    (a, a_pad, a_gen), (b, b_pad, b_gen) = outputs["sdpa"], outputs["eager"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a_pad, b_pad, rtol=0, atol=1e-5)
    assert torch.equal(a_gen, b_gen)
    with torch.no_grad():  # eager is the implementation that can return the attention weights
        weights = loaded(ids, output_attentions=True).attentions
    assert len(weights) == 2 and weights[0].shape == (3, 4, 20, 20)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 4, 20))


@pytest.mark.parametrize("variant", ["gpt2", "rmsnorm", "modern"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_autocast_stays_close_to_fp32(variant, dtype):
    """What `accelerate`'s fp16/bf16 mixed precision does: autocast around forward, fp32 weights and loss."""
    model = make_model(variant=variant).train()
    ids = random_ids(4, 32)
    reference = model(ids, labels=ids).loss
    with torch.autocast("cpu", dtype=dtype):
        out = model(ids, labels=ids)
    assert out.logits.dtype == dtype and out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(reference.item(), rel=2e-2)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):  # half-precision decoding: cached == uncached
        model.eval()
        prompt = random_ids(1, 6)
        cached = model.generate(prompt, max_new_tokens=10, do_sample=False, repetition_penalty=1.0)
        uncached = model.generate(prompt, max_new_tokens=10, do_sample=False, repetition_penalty=1.0, use_cache=False)
    assert cached.shape == uncached.shape == (1, 16)
    assert (cached == uncached).float().mean() >= 0.9  # a rare near-tie may round either way in half precision


LEGACY_EXPORT = REPO_ROOT / "tests" / "fixtures" / "legacy-gpt2-export"


def test_exports_made_before_the_options_load_as_the_same_model():
    """tests/fixtures/legacy-gpt2-export was written by victorian_gpt 0.1.0 (its config.json has none of the new
    keys), with the logits that code computed. Loaded by today's code it is the same GPT-2: every option at its GPT-2
    value, the same weights, the same logits (identical on the machine that made them: the tolerance only absorbs
    another CPU's matmul rounding) and the same greedy tokens."""
    from safetensors.torch import load_file

    assert "position_embedding_type" not in json.loads((LEGACY_EXPORT / "config.json").read_text())
    model = VictorianGPTForCausalLM.from_pretrained(LEGACY_EXPORT).eval()
    config = model.config
    assert (config.position_embedding_type, config.norm_type, config.weight_layout, config.activation_function) == (
        "learned", "layernorm", "conv1d", "gelu_new")
    assert not config.qk_norm and config.tie_word_embeddings and config.final_logit_softcapping is None
    reference = load_file(LEGACY_EXPORT / "reference_outputs.safetensors")
    ids, mask = reference["input_ids"], reference["attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference["logits"], rtol=0, atol=2e-6)
        padded = model(ids, attention_mask=mask).logits
        real = mask.bool()
        torch.testing.assert_close(padded[real], reference["padded_logits"][real], rtol=0, atol=2e-6)
        generated = model.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=10, do_sample=False,
                                   repetition_penalty=1.0)
    assert torch.equal(generated, reference["generated"])


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_continuous_batching_generates_the_greedy_tokens_of_generate(variant, tmp_path):
    """transformers' continuous batching (`generate_batch`: paged KV cache, requests packed into one sequence) runs
    the model unchanged through the attention interface."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    model = make_model(variant=variant, initializer_range=0.3)  # large weights: varied, non-degenerate tokens
    model.save_pretrained(tmp_path)
    paged = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="paged|eager").eval()
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (5, 17, 30)]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, repetition_penalty=1.0, eos_token_id=None,
                              pad_token_id=1)
    # a paged cache sized for the test (transformers sizes it from free memory, and eager attention then builds a
    # mask of max_batch_tokens x cache length at every step: seconds per step for nothing)
    small = ContinuousBatchingConfig(num_blocks=4, max_batch_tokens=64)
    results = paged.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small,
                                   progress_bar=False, warmup=False)
    by_prompt = {tuple(r.prompt_ids): r.generated_tokens for r in results.values()}
    for prompt in prompts:
        alone = model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()
        assert by_prompt[tuple(prompt)] == alone
    assert len(set(map(tuple, by_prompt.values()))) == 3
