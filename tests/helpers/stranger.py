"""The stranger script: an export folder loaded and run the way a Hub user would, with `trust_remote_code=True`, in a
Python that cannot import this package (run it with `helpers.isolation.run_isolated`). It takes the folder from
sys.argv[1] or a global FOLDER, checks left-padded batches against each prompt alone (eager and SDPA, cached and
uncached), `set_attn_implementation`, the pipeline and streaming, and prints `RESULT {json}` last.

tests/test_remote_code.py runs it on the installed transformers, tests/test_transformers_releases.py on the others.
"""

STRANGER = r"""
import json, sys, threading
import torch
import transformers
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer,
                          pipeline)
folder = sys.argv[1] if len(sys.argv) > 1 else FOLDER
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__name__ == "VictorianGPTConfig", type(config)
assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
base = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(base).__name__ == "VictorianGPTModel"
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
    assert tensor.device.type == "cpu", f"{name} left on {tensor.device} after from_pretrained"
if config.tie_word_embeddings:
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head is not tied"
tokenizer = AutoTokenizer.from_pretrained(folder)
eos = tokenizer.eos_token_id
N = 12


def new_tokens(output, prompt_len):
    # greedy tokens after the prompt, up to and including the first EOS (a batch pads finished rows after it)
    tokens = output[prompt_len:].tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def greedy(m, inputs, use_cache=True):
    # (new tokens, their logits) for each row
    out = m.generate(**inputs, max_new_tokens=N, do_sample=False, use_cache=use_cache,
                     pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True)
    rows = []
    for i, row in enumerate(out.sequences):
        tokens = new_tokens(row, inputs["input_ids"].shape[1])
        rows.append((tokens, torch.stack([step[i] for step in out.logits[: len(tokens)]])))
    return rows


def same(a, b):
    return a[0] == b[0] and torch.allclose(a[1], b[1], rtol=0, atol=1e-4)


def differ(a, b):
    gap = (a[1] - b[1]).abs().max().item() if a[1].shape == b[1].shape else "shapes differ"
    return f"tokens {a[0]} vs {b[0]}, largest logit difference {gap}"


# Prompts of different lengths, so a batch of them is left-padded.
PROMPTS = ["It was a dark and stormy night", "Reader, I married him", "Call me Ishmael. Some years ago"]
alone_inputs = [tokenizer(p, return_tensors="pt") for p in PROMPTS]
tokenizer.padding_side = "left"
batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
assert (batch["attention_mask"] == 0).any(), "the batch is not padded"
tokens = {}
models = {"sdpa": AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="sdpa"),
          "eager": AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")}
for implementation, m in models.items():
    assert m.config._attn_implementation == implementation, (implementation, m.config._attn_implementation)
    alone = [greedy(m, inputs)[0] for inputs in alone_inputs]
    for prompt, inputs, cached in zip(PROMPTS, alone_inputs, alone):
        uncached = greedy(m, inputs, use_cache=False)[0]
        assert same(cached, uncached), f"{implementation}, {prompt!r}: cached != uncached: {differ(cached, uncached)}"
    for use_cache in (True, False):
        batched = greedy(m, batch, use_cache=use_cache)
        for prompt, row, single in zip(PROMPTS, batched, alone):
            assert same(row, single), (
                f"{implementation}, use_cache={use_cache}, {prompt!r}: left-padded batch != alone: {differ(row, single)}")
    tokens[implementation] = [row[0] for row in alone]
assert tokens["sdpa"] == tokens["eager"], tokens
with torch.no_grad():  # the same model whichever attention implementation computes it, padded rows included
    real = batch["attention_mask"].bool()
    logits = {k: m(**batch).logits[real] for k, m in models.items()}
    assert torch.allclose(logits["eager"], logits["sdpa"], rtol=0, atol=1e-5)
    for i, inputs in enumerate(alone_inputs):  # each padded row's logits are the prompt's alone
        n = inputs["input_ids"].shape[1]
        alone_logits = models["eager"](**inputs).logits[0]
        padded_logits = models["eager"](**batch).logits[i, -n:]
        assert torch.allclose(alone_logits, padded_logits, rtol=0, atol=1e-4), (alone_logits - padded_logits).abs().max()
switched = None
if hasattr(model, "set_attn_implementation"):  # switching really switches (eager alone returns the weights)
    ids = alone_inputs[0]["input_ids"]
    with torch.no_grad():
        assert model(ids, output_attentions=True).attentions[0] is None  # sdpa
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager", model.config._attn_implementation
        assert model(ids, output_attentions=True).attentions[0] is not None
        model.set_attn_implementation("sdpa")
        assert model(ids, output_attentions=True).attentions[0] is None
    switched = True
inputs = alone_inputs[0]
greedy_ids = model.generate(**inputs, max_new_tokens=N, do_sample=False)
torch.manual_seed(0)
sampled = model.generate(**inputs, max_new_tokens=N)  # generation_config.json defaults: sampling
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
piped = generator("Reader, I married him", max_new_tokens=8, do_sample=False)[0]["generated_text"]
assert piped.startswith("Reader, I married him")
streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
thread = threading.Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer, max_new_tokens=N,
                                                             do_sample=False))
thread.start()
pieces = list(streamer)
thread.join()
streamed = "".join(pieces)
expected = tokenizer.decode(greedy_ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
assert streamed == expected, (streamed, expected)
# past the model's context: generate() goes on (the context shifts), neither crashing nor stopping
window = config.n_positions
past = model.generate(**inputs, max_new_tokens=window + 24, min_new_tokens=window + 24, do_sample=False)
assert past.shape[1] == inputs["input_ids"].shape[1] + window + 24, past.shape
print("\nRESULT " + json.dumps({"greedy": greedy_ids[0].tolist(), "alone": tokens["sdpa"],
                               "past_window": past[0].tolist(),
                               "streamed_pieces": len(pieces), "pipeline": piped, "switched": switched,
                               "transformers": transformers.__version__}))
"""
