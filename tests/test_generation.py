"""KV-cache generation against `model.generate`, seeded sampling, per-step invariants, consistency with
the one-pass trace, surprisal against a hand computation, bad inputs, and the station's charts/HTML."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from core.errors import InputError, SettingsError
from core.inspection.generation import MAX_NEW_TOKENS, GenerationResult, _Pieces, generate_steps, surprisal
from core.inspection.sampling import SamplingConfig, entropy, reshape, top_entries
from core.inspection.tokens import vocab_strings
from core.inspection.trace import run_trace
from core.tolerance import EPS64, check_close, check_within, log_softmax_tolerance
from core.views.output_charts import entropy_chart, generated_html, surprisal_chart, surprisal_frame

PROMPT = "The quick brown fox jumps over the lazy dog because"
GREEDY = SamplingConfig(greedy=True)


def _hf_greedy(loaded, text: str, n: int) -> list[int]:
    ids = torch.as_tensor(loaded.tokenizer(text)["input_ids"])[None]
    with torch.inference_mode():
        out = loaded.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_greedy_equals_model_generate(tiny_model):
    result = generate_steps(tiny_model, PROMPT, 12, GREEDY)
    assert result.token_ids.tolist() == _hf_greedy(tiny_model, PROMPT, 12)
    assert result.n_new == 12 and not result.stopped_at_eos
    assert [s.step for s in result.steps] == list(range(12))


@pytest.mark.slow
def test_greedy_equals_model_generate_on_smollm2(smollm2):
    text = "The capital of France is Paris. The capital of Germany is"
    result = generate_steps(smollm2, text, 16, SamplingConfig(temperature=0.0))
    assert result.token_ids.tolist() == _hf_greedy(smollm2, text, 16)[: result.n_new]
    assert "Berlin" in result.text
    assert result.steps[0].prob_model > 0.3  # a trained model is confident here


def test_seeded_sampling_is_reproducible(tiny_gpt2):
    config = SamplingConfig(temperature=1.0, seed=11)
    first = generate_steps(tiny_gpt2, PROMPT, 10, config)
    again = generate_steps(tiny_gpt2, PROMPT, 10, config)
    other = generate_steps(tiny_gpt2, PROMPT, 10, SamplingConfig(temperature=1.0, seed=12))
    assert first.token_ids.tolist() == again.token_ids.tolist()
    assert [s.prob for s in first.steps] == [s.prob for s in again.steps]
    # The tiny model is almost uniform over 50k tokens: two seeds agreeing on 10 draws would be a miracle.
    assert first.token_ids.tolist() != other.token_ids.tolist()


def test_every_step_records_a_valid_distribution(tiny_model):
    config = SamplingConfig(temperature=0.8, top_k=50, top_p=0.9, seed=3)
    result = generate_steps(tiny_model, PROMPT, 6, config, keep_distributions=True)
    assert result.final_probs is not None and result.final_probs.shape == (6, tiny_model.info.vocab_size)
    V = tiny_model.info.vocab_size
    for step, final in zip(result.steps, result.final_probs, strict=True):
        assert check_close(final.sum(), 1.0, reduction_length=V, eps=EPS64).passed
        assert final[step.token_id] > 0  # the drawn token survived top-k and top-p
        assert step.prob == final[step.token_id]  # the same float64 number, recorded
        assert 1 <= step.n_kept <= 50 and (final > 0).sum() <= step.n_kept
        # Entropy in float64 from log-probabilities vs from probabilities, summed over the kept tokens.
        expected = entropy(final).nats
        check = check_close(
            step.entropy_after.nats, expected, step.n_kept, reference=max(expected, 1.0), eps=EPS64
        )
        assert check.passed, check
        assert len(step.candidates) == 10
        p_original = [c.p_original for c in step.candidates]
        assert p_original == sorted(p_original, reverse=True)
        assert all((c.p_final > 0) <= c.kept for c in step.candidates)


def test_greedy_step_matches_the_trace_and_reshape(tiny_model):
    trace = run_trace(tiny_model, PROMPT)
    result = generate_steps(tiny_model, PROMPT, 1, GREEDY, keep_distributions=True)
    step = result.steps[0]
    assert step.token_id == int(np.argmax(trace.last_probs))
    # Two passes over the same prompt (with and without a KV cache) agree up to the rounding of the
    # logits' last d-term reductions; the trace also stores its probabilities as float32.
    tolerance = log_softmax_tolerance(trace.last_logits, reduction_length=tiny_model.info.d_model)
    check = check_within(math.log(step.prob_model), math.log(float(trace.last_probs.max())), tolerance)
    assert check.passed, check
    assert step.prob == 1.0 and step.n_kept == 1 and step.entropy_after.nats == 0.0
    # H = −Σ p log p moves by at most max|Δ log p| · (1 + H) when every log p moves by at most that.
    expected = entropy(trace.last_probs).nats
    check = check_within(step.entropy_before.nats, expected, tolerance * (1 + expected))
    assert check.passed, check
    # The greedy fast path records what reshape() says for the same logits.
    dist = reshape(trace.last_logits, GREEDY)
    np.testing.assert_array_equal(result.final_probs[0], dist.final)
    strings = vocab_strings(tiny_model.tokenizer)
    expected = top_entries(dist, strings, n=10)
    assert [c.token_id for c in step.candidates] == [e.token_id for e in expected]
    assert [c.text for c in step.candidates] == [e.text for e in expected]
    assert [c.kept for c in step.candidates] == [e.kept for e in expected]
    assert [c.p_final for c in step.candidates] == [e.p_final for e in expected]
    ours = np.log([c.p_original for c in step.candidates])
    check = check_within(ours, np.log([e.p_original for e in expected]), tolerance)
    assert check.passed, check


def test_on_step_sees_every_step_and_text_adds_up(tiny_llama):
    seen = []
    result = generate_steps(tiny_llama, PROMPT, 5, SamplingConfig(seed=1), on_step=seen.append)
    assert seen == list(result.steps)
    assert "".join(s.text for s in result.steps) == result.text
    assert result.text == tiny_llama.tokenizer.decode(result.token_ids.tolist())
    assert result.prompt_ids.tolist() == tiny_llama.tokenizer(PROMPT)["input_ids"]
    assert result.seconds > 0 and result.tokens_per_second > 0


def test_stops_at_end_of_sequence(tiny_gpt2):
    first = generate_steps(tiny_gpt2, PROMPT, 1, GREEDY).token_ids[0]
    tiny_gpt2.model.generation_config.eos_token_id = int(first)  # pretend the greedy pick ends the text
    stopped = generate_steps(tiny_gpt2, PROMPT, 8, GREEDY)
    assert stopped.stopped_at_eos and stopped.token_ids.tolist() == [first]
    free = generate_steps(tiny_gpt2, PROMPT, 8, GREEDY, stop_at_eos=False)
    assert not free.stopped_at_eos and free.n_new == 8


def test_unfinished_characters_are_held_back(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    text = " naïve café 😀 done"
    ids = tok(text)["input_ids"]
    pieces = _Pieces(tok)
    out = [pieces.add(i) for i in ids]
    assert "".join(out) == text
    assert "" in out  # the emoji's bytes span several tokens
    assert all("\ufffd" not in p for p in out)


class _SentencePieceLike:
    """Decodes like SentencePiece: the first token of what is decoded loses its leading space."""

    vocab = {0: " The", 1: " capital", 2: " is", 3: " Paris", 4: "."}

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids).removeprefix(" ")


def test_continuation_keeps_its_leading_space_after_the_prompt():
    pieces = _Pieces(_SentencePieceLike(), prompt_ids=[0, 1, 2])
    assert [pieces.add(3), pieces.add(4)] == [" Paris", "."]
    assert pieces.text() == " Paris."


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m: generate_steps(m, "   ", 4),
            InputError,
            "The text is empty. Type a sentence in the sidebar to trace it.",
        ),
        (
            lambda m: generate_steps(m, "hi", 0),
            SettingsError,
            f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS} (try 32).",
        ),
        (
            lambda m: generate_steps(m, "hi", 513),
            SettingsError,
            "max_new_tokens must be between 1 and 512 (try 32).",
        ),
        (lambda m: generate_steps(m, "hi", 4, top_n=0), SettingsError, "top_n must be at least 1 (try 10)."),
        (
            lambda m: generate_steps(m, "hi", 4, SamplingConfig(temperature=-1)),
            SettingsError,
            "temperature must be 0 or more (0 = always pick the most likely token; try 1.0).",
        ),
        (
            lambda m: generate_steps(m, "hi", 4, SamplingConfig(top_p=1.5)),
            SettingsError,
            "top_p must be between 0 and 1 (1 = off; try 0.9).",
        ),
        (
            lambda m: generate_steps(m, " ".join(["word"] * 120), 20),
            InputError,
            "The text has 120 tokens; with 20 new ones it would pass tiny GPT-2's limit of 128 positions. "
            "Shorten the text or ask for fewer tokens.",
        ),
    ],
)
def test_bad_inputs_give_exact_messages(tiny_gpt2, call, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call(tiny_gpt2)


def test_surprisal_matches_a_hand_computation(tiny_model):
    trace = run_trace(tiny_model, PROMPT)
    s = surprisal(trace)
    ids = torch.tensor(trace.token_ids)[None]
    with torch.inference_mode():
        logits = tiny_model.model(ids).logits[0].double()  # [T, V]
    logp = torch.log_softmax(logits, -1)[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy()  # [T-1]
    # The trace's log p (float32 logit − log-sum-exp) against float64 on the same float32 logits.
    tolerance = log_softmax_tolerance(logits.numpy(), reduction_length=1)
    check = check_within(s.bits * math.log(2), -logp, tolerance)
    assert check.passed, check
    assert check_within(np.log(s.probs), logp, tolerance).passed
    assert s.token_ids.tolist() == trace.token_ids[1:].tolist()
    assert s.positions.tolist() == list(range(1, trace.n_tokens))
    assert s.pieces == trace.pieces[1:]
    assert check_within(s.mean_nats, -logp.mean(), tolerance).passed  # a mean moves no more than its terms
    assert check_within(math.log(s.perplexity), -logp.mean(), tolerance).passed
    # exp(mean nats) and 2^(mean bits) are one float64 number taken two ways.
    assert check_close(
        s.perplexity, 2**s.mean_bits, 2, reference=s.perplexity * s.mean_nats, eps=EPS64
    ).passed
    assert "bits" in s.message


def test_surprisal_of_a_single_token_explains_itself(tiny_gpt2):
    trace = run_trace(tiny_gpt2, "Hello")
    assert trace.n_tokens == 1
    s = surprisal(trace)
    assert s.mean_bits is None and s.mean_nats is None and s.perplexity is None
    assert len(s.bits) == 0 and s.pieces == ()
    assert s.message.startswith("The text is a single token, so there is no next token to score")
    spec = surprisal_chart(s).to_dict()  # still draws: one empty bar chart, no mean line
    assert spec["mark"]["type"] == "bar"
    assert [len(rows) for rows in spec["datasets"].values()] == [0]


def test_surprisal_chart_and_entropy_chart(tiny_gpt2):
    s = surprisal(run_trace(tiny_gpt2, PROMPT))
    frame = surprisal_frame(s)
    assert len(frame) == len(s.bits) and frame["token"].is_unique
    spec = surprisal_chart(s, title="surprisal").to_dict()
    assert spec["layer"][0]["mark"]["type"] == "bar" and spec["layer"][1]["mark"]["type"] == "rule"
    sizes = sorted(len(rows) for rows in spec["datasets"].values())
    assert sizes == [1, len(s.bits)]  # one bar per scored token, one mean line
    assert spec["layer"][1]["encoding"]["y"]["field"] == "mean_bits"
    result = generate_steps(tiny_gpt2, PROMPT, 3, SamplingConfig(top_k=5))
    spec = entropy_chart(result).to_dict()
    assert spec["mark"]["type"] == "line" and spec["encoding"]["y"]["field"] == "bits"
    rows = next(iter(spec["datasets"].values()))
    assert len(rows) == 2 * result.n_new  # the model's entropy and the reshaped one, at every step
    after = [r["bits"] for r in rows if r["series"] == "final (drawn from)"]
    assert after == [st.entropy_after.bits for st in result.steps]


def test_generated_html_is_escaped_and_coloured(tiny_gpt2):
    result = generate_steps(tiny_gpt2, PROMPT, 4, GREEDY)
    steps = tuple(
        s.__class__(**{**s.__dict__, "text": t})
        for s, t in zip(result.steps, ['<script>alert("x")</script>', " & ", "", "ok"], strict=True)
    )
    hostile = GenerationResult(**{**result.__dict__, "prompt": "a <b>bold</b> prompt", "steps": steps})
    page = generated_html(hostile)
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; prompt" in page and " &amp; " in page
    assert page.count("hsl(") == 3  # the empty piece draws no span
    final = generated_html(result, by="final", show_prompt=False)
    assert "hsl(120, 85%, 82%)" in final  # greedy: p(final) = 1 → green
    with pytest.raises(ValueError, match=re.escape('by must be "model" or "final".')):
        generated_html(result, by="logits")
