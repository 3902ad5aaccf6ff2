"""bench/bench_long.py: each token's NLL under a shift policy against a fresh forward of exactly the ids the policy
keeps (both position kinds: learned positions encode the kept ids again, rotary ones rotate the cached keys back);
the bench end to end on tiny exports, its ceiling, floor, policy and RoPE-scaling figures against NLLs computed
token by token from the context each is defined to see; the tables again from the saved lines; bad input as one line."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_long", REPO / "bench" / "bench_long.py")
bl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bl)

WINDOW = 128  # the tiny presets' context


@pytest.fixture(autouse=True)
def one_thread():
    """One computing thread, as the bench's --threads 1: the many small forwards here run faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(export)


def nll_from(model, contexts: list[list[int]], targets: list[int]) -> np.ndarray:
    """NLL (nats) of each target after its context: a forward of exactly those ids at positions 0 .., no cache
    (contexts of one length batched)."""
    out = np.empty(len(targets))
    groups: dict[int, list[int]] = {}
    for i, context in enumerate(contexts):
        groups.setdefault(len(context), []).append(i)
    with torch.no_grad():
        for members in groups.values():
            for start in range(0, len(members), 64):
                batch = members[start : start + 64]
                inputs = torch.tensor([contexts[i] for i in batch])
                positions = torch.arange(inputs.shape[1]).expand_as(inputs)  # explicit: past the context too
                logits = model(inputs, position_ids=positions, use_cache=False).logits[:, -1].double()
                nll = -torch.log_softmax(logits, dim=-1)[torch.arange(len(batch)), [targets[i] for i in batch]]
                out[batch] = nll.numpy()
    return out


def kept_contexts(ids, shift, window: int):
    """For each target 1 .. len(ids) - 1, the ids it is predicted from when the book is read with `shift`: the
    context grows by one token a step, and when it holds more than `window` tokens `ContextShift.apply` cuts it
    (as `recomputed` in test_context_shift.py does for generation). Also the number of shifts."""
    context, out, shifts = [int(ids[0])], [], 0
    for t in range(1, len(ids)):
        if len(context) > window:
            context, shifts = shift.apply(context), shifts + 1
        out.append(list(context))
        context.append(int(ids[t]))
    return out, shifts


def masked_nll(model, ids, contexts: list[list[int]]) -> np.ndarray:
    """Rotary positions, no opening kept: one forward of the whole book, unshifted (positions = book index), each
    token attending only to the book positions of its context (the engine's shifted cache holds the keys and values
    each token got when it was read, and rotary attention depends on distances only)."""
    n = len(ids)
    mask = torch.zeros(1, 1, n - 1, n - 1, dtype=torch.bool)
    for t in range(1, n):  # the query at t - 1 predicts t
        assert contexts[t - 1][-1] == t - 1
        mask[0, 0, t - 1, contexts[t - 1]] = True
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(ids[:-1], dtype=np.int64))[None], attention_mask=mask,
                       position_ids=torch.arange(n - 1)[None], use_cache=False).logits[0].double()
    return -torch.log_softmax(logits, dim=-1)[torch.arange(n - 1), torch.as_tensor(ids[1:])].numpy()


@pytest.mark.parametrize("fixture", ["tiny_export", "modern_tiny_export"])
def test_each_tokens_nll_under_a_policy_is_a_forward_of_the_context_it_keeps(fixture, request, pg19_tiny):
    """Learned positions: a fresh forward of exactly the kept ids (`ContextShift.apply`). Rotary positions (the
    cache shifted and rotated back, deeper layers remembering dropped text as llama.cpp's cache does): the whole
    book's cache with everything outside each token's kept context masked out; exact with no opening kept."""
    from serving.textgen.context_shift import ContextShift, rotary_frequencies

    model, tokenizer = load(request.getfixturevalue(fixture))
    frequencies = rotary_frequencies(model)
    learned = fixture == "tiny_export"
    assert (frequencies is None) == learned
    ids = bl.load_books(pg19_tiny, "validation", tokenizer, 1, 2 * WINDOW + 40)[0]
    assert len(ids) == 2 * WINDOW + 40
    targets = [int(t) for t in ids[1:]]
    policies = ((4, 0.5), (0, 0.25), (64, 0.75)) if learned else ((0, 0.5), (0, 0.25))
    for keep, discard in policies:
        shift = ContextShift(keep, discard)
        nll, seen, shifts = bl.policy_nll(model, ids, shift, WINDOW, frequencies)
        contexts, expected_shifts = kept_contexts(ids, shift, WINDOW)
        positions, _ = kept_contexts(range(len(ids)), shift, WINDOW)  # the same contexts as book positions
        assert shifts == expected_shifts >= 2
        assert seen.tolist() == [len(c) for c in contexts]
        assert max(seen) == WINDOW and min(seen[WINDOW:]) == WINDOW + 1 - shift.dropped(WINDOW + 1)
        expected = nll_from(model, contexts, targets) if learned else masked_nll(model, ids, positions)
        np.testing.assert_allclose(nll, expected, rtol=0, atol=5e-5, err_msg=f"keep={keep} discard={discard}")
        if not learned:  # not what a fresh encoding of the kept ids gives
            assert np.abs(nll - nll_from(model, contexts, targets)).max() > 1e-3


def scaled_model(export, theta: float):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, rope_theta=theta).eval()


@pytest.mark.parametrize("fixture", ["tiny_export", "modern_tiny_export"])
def test_the_bench_figures_are_the_nll_of_each_token_from_its_own_context(fixture, request, pg19_tiny, tmp_path,
                                                                        capsys):
    from serving.textgen.context_shift import ContextShift, rotary_frequencies
    from training.measures import token_byte_lengths

    export = request.getfixturevalue(fixture)
    rotary = fixture == "modern_tiny_export"
    n, rope_tokens, bucket = 64, 32, 32
    plot = tmp_path / "long.png"
    assert bl.main(["--model", str(export), "--dataset", str(pg19_tiny), "--books", "1",
                    "--max-tokens-per-book", str(n), "--keep", "0", "4", "--discard", "0.5", "--rope-factors", "2",
                    "--rope-tokens-per-book", str(rope_tokens), "--bucket", str(bucket), "--threads", "1",
                    "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    header, by = lines[0], {(x["method"], x["split"], x.get("range", "past")): x for x in lines[1:]
                            if x["bench"] == "long_text"}
    assert header["window"] == WINDOW and header["rotary"] is rotary
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model, tokenizer = load(export)
    byte_table = token_byte_lengths(tokenizer)
    ids = bl.load_books(pg19_tiny, "test", tokenizer, 1, 10**9)[0]
    past = range(WINDOW, WINDOW + n)  # the scored targets
    # the bytes, from the text itself: the decoded targets' UTF-8 length, in all and segment by segment
    assert by[("ceiling", "test", "past")]["bytes"] == len(tokenizer.decode(ids[past.start : past.stop]).encode())
    assert [b for _, b in by[("ceiling", "test", "past")]["segments"]] == [
        len(tokenizer.decode(ids[a : a + bucket]).encode()) for a in range(past.start, past.stop, bucket)]

    def per_byte(nll, targets):  # NLL per target (nats) to bits per byte of the targets
        return float(np.sum(nll)) / math.log(2) / sum(int(byte_table[ids[t]]) for t in targets)

    def bits_per_byte(model, context_of, targets):
        contexts = [[int(i) for i in ids[context_of(t) : t]] for t in targets]
        return per_byte(nll_from(model, contexts, [int(ids[t]) for t in targets]), targets)

    # ceiling: the W tokens before each target; floor: the tokens since the last multiple of W (1 .. W of them)
    ceiling = bits_per_byte(model, lambda t: t - WINDOW, past)
    floor = bits_per_byte(model, lambda t: (t - 1) // WINDOW * WINDOW, past)
    assert by[("ceiling", "test", "past")]["bits_per_byte"] == pytest.approx(ceiling, abs=2e-5)
    assert by[("floor", "test", "past")]["bits_per_byte"] == pytest.approx(floor, abs=2e-5)
    assert floor != pytest.approx(ceiling, abs=1e-4)  # (a random model: not necessarily higher)
    assert by[("ceiling", "test", "past")]["mean_context"] == WINDOW
    assert by[("floor", "test", "past")]["mean_context"] == pytest.approx(np.mean([(t - 1) % WINDOW + 1 for t in past]))

    # a policy's figure: each target from the context the policy keeps, the book read from its start (as in the
    # test above: the kept ids encoded afresh, or for rotary positions the whole book's cache masked to them)
    book = ids[: 2 * WINDOW + max(n, rope_tokens)]  # the longest the bench reads (the RoPE section's end)
    contexts, _ = kept_contexts(book, ContextShift(0, 0.5), WINDOW)
    if rotary:
        nll = masked_nll(model, book, kept_contexts(range(len(book)), ContextShift(0, 0.5), WINDOW)[0])
    else:
        nll = nll_from(model, contexts, [int(t) for t in book[1:]])
    policy = per_byte(nll[past.start - 1 : past.stop - 1], past)
    assert by[("shift keep=0 discard=0.5", "test", "past")]["bits_per_byte"] == pytest.approx(policy, abs=2e-5)
    assert policy != pytest.approx(ceiling, abs=1e-4)  # the shift loses context the ceiling has

    choice = next(x for x in lines if x["bench"] == "long_text_choice")
    assert choice["select_split"] == "validation" and choice["incumbent"] == "shift keep=4 discard=0.5"
    assert choice["method"] in choice["within_sigmas_of_lowest"]

    rope = {m: x for (m, s, r), x in by.items() if r == "rope"}
    if not rotary:
        assert rope == {}  # learned positions: no RoPE section
    else:
        start = 2 * WINDOW  # s_max x W
        targets = range(start, start + rope_tokens)
        assert sorted(rope) == sorted([choice["method"], "sliding window", "rotary unscaled x2",
                                       "dynamic NTK x2", "YaRN x2"])
        chosen = ContextShift(choice["keep"], choice["discard"])
        nll = bl.policy_nll(model, book, chosen, WINDOW, rotary_frequencies(model))[0]
        assert rope[choice["method"]]["bits_per_byte"] == pytest.approx(
            per_byte(nll[start - 1 : start - 1 + rope_tokens], targets), abs=2e-5)

        def window_start(t, size, stride):  # `eval --stride` windows: the first from 0, then one every `stride`
            return 0 if t <= size else math.ceil((t - size) / stride) * stride

        stride = WINDOW // 2
        sliding = bits_per_byte(model, lambda t: window_start(t, WINDOW, stride), targets)
        unscaled = bits_per_byte(model, lambda t: window_start(t, 2 * WINDOW, stride), targets)
        assert rope["sliding window"]["bits_per_byte"] == pytest.approx(sliding, abs=2e-5)
        assert rope["rotary unscaled x2"]["bits_per_byte"] == pytest.approx(unscaled, abs=2e-5)
        # dynamic NTK at 2 W: the same model with its base raised to theta x 2^(d / (d - 2)), d the head size
        d = model.config.n_embd // model.config.n_head
        theta = model.config.rope_theta * 2 ** (d / (d - 2))
        assert rope["dynamic NTK x2"]["theta"] == pytest.approx(theta, abs=0.1)
        ntk = bits_per_byte(scaled_model(export, theta), lambda t: window_start(t, 2 * WINDOW, stride), targets)
        assert rope["dynamic NTK x2"]["bits_per_byte"] == pytest.approx(ntk, abs=2e-5)
        assert ntk != pytest.approx(unscaled, abs=1e-4)
        assert rope["YaRN x2"]["attention_factor"] == pytest.approx(0.1 * math.log(2) + 1, abs=1e-5)

    # the tables and the plot again from the saved lines, with no model
    saved = tmp_path / "long.jsonl"
    saved.write_text(out)
    again = tmp_path / "again.png"
    assert bl.main(["--results", str(saved), "--plot", str(again)]) == 0
    redo = capsys.readouterr().out
    tables = out[out.index("\nBits per byte") : out.index("\nplot:")]
    assert tables.strip() and tables in redo
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--keep", "4", "200"], "context keep (200) must be at most half the model's context (128 tokens)"),
    (["--discard", "1.5"], "context discard must be a fraction between 0 and 1"),
    (["--select-split", "test"], "--select-split and --report-split must differ"),
    (["--max-tokens-per-book", "100000"], "validation: need 1 books of at least 100128 tokens"),
])
def test_bad_input_is_a_one_line_error_before_any_figure(args, message, tiny_export, pg19_tiny, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bl.main(["--model", str(tiny_export), "--dataset", str(pg19_tiny), "--books", "1", "--threads", "1", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing measured, not even the set-up line
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert errors == [captured.err.strip().splitlines()[-1]], captured.err  # one line, the last
    assert message in errors[0], errors
