"""Writing past the window: the context shift (serving/textgen/context_shift.py) in the engine and in the model's own
generate(), on both position kinds (learned: GPT-2 recipe; rotary: modern recipe), against a reference that encodes
the kept context afresh at every step."""

from __future__ import annotations

import re

import pytest
import torch

from serving import textgen
from serving.textgen.context_shift import ContextShift, rotary_frequencies, shift_cache
from victorian_gpt import VictorianGPTConfig

WINDOW = 128  # the tiny presets' context


@pytest.fixture(scope="module", params=["learned", "rope"])
def loaded(request, tiny_export, modern_tiny_export):
    folder = tiny_export if request.param == "learned" else modern_tiny_export
    model, tokenizer = textgen.load_model(str(folder), dtype="float32")
    assert model.config.n_positions == WINDOW
    return model, tokenizer


def recomputed(model, prompt_ids: list[int], max_new_tokens: int, shift: ContextShift) -> tuple[list[int], int]:
    """Greedy tokens, every step a fresh forward pass of the context the policy leaves (no KV cache), and the
    number of shifts."""
    context, out, shifts = list(prompt_ids), [], 0
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if len(context) > WINDOW:
                context, shifts = shift.apply(context), shifts + 1
            token = int(model(torch.tensor([context]), use_cache=False).logits[0, -1].argmax())
            out.append(token)
            context.append(token)
    return out, shifts


def test_the_policy_keeps_the_opening_and_drops_the_oldest_of_the_rest():
    shift = ContextShift(keep=4, discard=0.5)
    tokens = list(range(129))
    kept = shift.apply(tokens)
    assert kept[:4] == [0, 1, 2, 3] and kept[-1] == 128
    assert len(kept) == 4 + (129 - 4) - (129 - 4) // 2 and kept[4] == 4 + (129 - 4) // 2
    assert ContextShift(keep=0, discard=0.001).dropped(129) == 1  # at least one token goes


@pytest.mark.parametrize("keep, discard, message, in_config", [
    (65, 0.5, "context keep (65) must be at most half the model's context (128 tokens)", "got 65"),
    (-1, 0.5, "context keep must be 0 or more", "got -1"),
    (4, 0.0, "context discard must be a fraction between 0 and 1", "`context_discard` must be between 0 and 1"),
    (4, 1.0, "context discard must be a fraction between 0 and 1", "`context_discard` must be between 0 and 1"),
])
def test_a_policy_that_cannot_work_is_refused_in_one_line(keep, discard, message, in_config):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        ContextShift(keep, discard).check(WINDOW)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=re.escape(in_config)) as error:  # the model's own policy, as its config holds it
        VictorianGPTConfig.from_preset("tiny", context_keep=keep, context_discard=discard)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def rotary(modern_tiny_export):
    model, _ = textgen.load_model(str(modern_tiny_export), dtype="float32")
    frequencies = rotary_frequencies(model)
    assert frequencies is not None
    tokens = torch.randint(0, model.config.vocab_size, (WINDOW + 1,), generator=torch.Generator().manual_seed(0))
    return model, frequencies, tokens.tolist()


def test_keys_rotated_back_are_the_keys_of_the_earlier_positions(rotary):
    """The first layer's keys see only their own token: rotated back by d, a key at position p is the key at p - d."""
    model, frequencies, tokens = rotary
    shift = ContextShift(keep=4, discard=0.5)
    kept = shift.apply(tokens)
    with torch.no_grad():
        cache = model(torch.tensor([tokens[:WINDOW]]), use_cache=True).past_key_values
        shift_cache(cache.layers, shift, WINDOW, frequencies)
        fresh = model(torch.tensor([kept[:-1]]), use_cache=True).past_key_values
    assert cache.get_seq_length() == fresh.get_seq_length() == len(kept) - 1
    torch.testing.assert_close(cache.layers[0].keys, fresh.layers[0].keys, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, fresh.layers[0].values)
    # deeper layers remember the dropped text (as llama.cpp's shifted cache does): a shift is not a fresh encoding
    assert (cache.layers[1].keys - fresh.layers[1].keys).abs().max() > 0.1


def test_a_shifted_cache_predicts_as_the_unshifted_one_with_the_dropped_tokens_masked(rotary):
    """Rotary attention depends on distances only: the new token at p - d over the shifted cache attends exactly as at
    p over the whole cache with the dropped tokens masked out (no opening kept, so every distance is the same)."""
    model, frequencies, tokens = rotary
    length = 100  # the unshifted reference's query sits at position `length`, inside the model's positions
    shift = ContextShift(keep=0, discard=0.5)
    dropped = shift.dropped(length + 1)
    token = torch.tensor([tokens[length : length + 1]])
    with torch.no_grad():
        whole = model(torch.tensor([tokens[:length]]), use_cache=True).past_key_values
        mask = torch.ones(1, length + 1, dtype=torch.long)
        mask[0, :dropped] = 0
        masked = model(token, past_key_values=whole, attention_mask=mask,
                       position_ids=torch.tensor([[length]])).logits[0, -1]
        cache = model(torch.tensor([tokens[:length]]), use_cache=True).past_key_values
        shift_cache(cache.layers, shift, length, frequencies)
        shifted = model(token, past_key_values=cache, position_ids=torch.tensor([[length - dropped]])).logits[0, -1]
        cache = model(torch.tensor([tokens[:length]]), use_cache=True).past_key_values
        for layer in cache.layers:  # dropped, not rotated: the distances are wrong
            layer.keys, layer.values = layer.keys[:, :, dropped:], layer.values[:, :, dropped:]
        unrotated = model(token, past_key_values=cache, position_ids=torch.tensor([[length - dropped]])).logits[0, -1]
    torch.testing.assert_close(shifted, masked, atol=1e-5, rtol=1e-5)
    assert (unrotated - masked).abs().max() > 1e-2


def generate_ids(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         top_k=None, top_p=None, temperature=None, repetition_penalty=1.0)
    return out[0, len(prompt_ids) :].tolist()


def test_learned_positions_go_on_from_a_fresh_encoding_of_the_kept_context(tiny_export):
    """GPT-2's learned positions cannot be moved in a cache: the kept context is encoded again at every shift, so the
    model's own generate() gives what a forward pass of the kept context, step by step, gives."""
    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    prompt_ids = tokenizer("The fog lay thick upon the river").input_ids
    expected, shifts = recomputed(model, prompt_ids, 200, ContextShift.for_model(model))
    assert shifts >= 2
    assert generate_ids(model, prompt_ids, 200) == expected


@pytest.mark.slow
def test_the_engine_writes_past_the_window_as_the_models_own_generate_does(loaded):
    """Two implementations of one policy: the engine's (a row leaves the batch, shifts, joins again) and the model's
    (remote code, for anyone's generate()); a short neighbour decodes beside the long one undisturbed."""
    model, tokenizer = loaded
    prompt = "It was a dark and stormy night; the rain fell in torrents"
    prompt_ids = tokenizer(prompt).input_ids
    expected = generate_ids(model, prompt_ids, 300)  # 300 new tokens in a 128-token window
    _, shifts = recomputed(model, prompt_ids, 300, ContextShift.for_model(model))
    assert shifts >= 3
    limits = textgen.Limits.for_model(model, tokenizer, max_total_tokens=4096)
    engine = textgen.Engine(model, tokenizer, limits=limits)
    try:
        short = textgen.prepare_request(tokenizer, "Mr. Pickwick", limits, max_new_tokens=110)
        # the neighbour stays within the window, and is still decoding when the long one first shifts
        assert len(short[0]) + 110 <= WINDOW and WINDOW - len(prompt_ids) < 110
        alone = [t.id for t in engine.submit(*short)]
        long = engine.submit(*textgen.prepare_request(tokenizer, prompt, limits, max_new_tokens=300))
        neighbour = engine.submit(*short)  # decodes beside the long one while it shifts
        assert [t.id for t in neighbour] == alone
        assert [t.id for t in long] == expected
        assert long.shifts == shifts and long.finish_reason == "length"
        assert engine.peak_batch_size == 2
    finally:
        engine.close()


def test_a_padded_batch_past_the_window_is_refused_in_one_line_by_generate(loaded):
    model, tokenizer = loaded
    tokenizer.padding_side = "left"
    batch = tokenizer(["A", "The fog lay thick upon the river"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match=r"tokens exceed the model's context of 128: a prompt must fit in it") as error:
        model.generate(**batch, max_new_tokens=WINDOW, do_sample=False, top_k=None, top_p=None, temperature=None,
                       repetition_penalty=1.0)
    assert "\n" not in str(error.value)
