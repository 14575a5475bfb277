"""One token's journey: every stop read from the trace agrees with the model's weights and with an
independent computation, on both tiny families; the page draws every step with its checks green."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from streamlit import dataframe_util

from core.errors import InputError
from core.inspection.journey import attention_stop, embedding_stop, final_stop, residual_stop
from core.inspection.layers import logit_lens
from core.inspection.tokens import embedding_matrix
from core.inspection.trace import run_trace
from core.tolerance import check_close, float64_tolerance
from core.views.journey_charts import STRIP_HEIGHT, residual_journey, vector_strips
from tests.test_pages import app_test, assert_clean, check_shown_passed, metrics

TEXT = "The cat sat on the mat because the cat was tired"
PAGE = "pages/9_journey.py"


@pytest.fixture
def traced(tiny_model):
    return tiny_model, run_trace(tiny_model, TEXT)


def test_embedding_row_is_the_models_row_and_enters_block_0(traced):
    loaded, trace = traced
    E = embedding_matrix(loaded.model)
    learned = getattr(loaded.model, "transformer", None)
    for t in range(trace.n_tokens):
        stop = embedding_stop(trace, t, E[trace.token_ids[t]])
        assert stop.token_id == int(trace.token_ids[t]) and stop.piece == trace.pieces[t]
        assert np.array_equal(stop.embedding, E[trace.token_ids[t]])  # a lookup: exact
        assert stop.lookup_check.passed and stop.lookup_check.error == 0.0
        assert stop.input_check.passed
        assert np.isclose(stop.embedding_norm, np.linalg.norm(E[trace.token_ids[t]].astype(np.float64)))
        if learned is not None:  # GPT-2: P[t] is row t of wpe, and E[id] + P[t] is block 0's input
            wpe = learned.wpe.weight.detach().numpy()
            assert np.array_equal(stop.position_vector, wpe[t])
            assert np.array_equal(stop.embedding + stop.position_vector, trace.block_input[t])
            assert stop.angles is None
        else:  # rotary: nothing is added; the angles are t·θ_i wrapped to [0, 2π)
            assert stop.position_vector is None
            assert np.array_equal(stop.embedding, trace.block_input[t])
            inv_freq = loaded.model.model.rotary_emb.inv_freq.numpy()
            assert np.allclose(stop.angles, np.mod(t * inv_freq, 2 * np.pi))


def test_a_wrong_row_fails_the_lookup_check(traced):
    _, trace = traced
    stop = embedding_stop(trace, 1, trace.token_embeddings[1] + 1e-3)
    assert not stop.lookup_check.passed


def test_a_token_outside_the_text_is_refused(traced):
    loaded, trace = traced
    last = trace.n_tokens - 1
    message = f"Token {trace.n_tokens} does not exist: choose 0–{last}."
    with pytest.raises(InputError, match=re.escape(message)):
        embedding_stop(trace, trace.n_tokens, trace.token_embeddings[0])
    with pytest.raises(InputError, match=re.escape(message)):
        residual_stop(trace, trace.n_tokens)
    with pytest.raises(InputError, match=re.escape(message)):
        final_stop(loaded, trace, trace.n_tokens)


def test_attention_stop_reads_the_models_row(traced):
    _, trace = traced
    t = trace.n_tokens - 1
    for layer in range(trace.n_layer):
        for head in range(trace.n_head):
            stop = attention_stop(trace, t, layer, head, k=4)
            kv = head // (trace.n_head // trace.n_kv_head)
            assert np.array_equal(stop.q, trace.q[layer, head, t])
            assert np.array_equal(stop.k, trace.k[layer, kv, t]) and np.array_equal(
                stop.v, trace.v[layer, kv, t]
            )
            row = trace.attentions[layer, head, t]
            assert [a.weight for a in stop.top] == sorted(row.tolist(), reverse=True)[:4]
            assert all(a.weight == row[a.position] for a in stop.top)
            assert stop.steps.weights_check.passed and stop.steps.output_check.passed
            assert (stop.rotary_check is None) == (trace.rotary is None)
            assert stop.rotary_check is None or stop.rotary_check.passed


def test_residual_stop_matches_the_trace(traced):
    _, trace = traced
    for t in (0, trace.n_tokens - 1):
        stop = residual_stop(trace, t)
        r = trace.residual[:, t].astype(np.float64)
        assert len(stop.norms) == trace.n_layer + 1
        assert check_close(stop.norms, np.sqrt((r**2).sum(-1)), r.shape[-1], eps=2.2e-16).passed
        for layer in range(trace.n_layer):
            attn = trace.attn_out_layers[layer][t].astype(np.float64)
            mlp = trace.mlp_out_layers[layer][t].astype(np.float64)
            assert np.isclose(
                stop.attn_norms[layer],
                np.sqrt(attn @ attn),
                rtol=0,
                atol=float64_tolerance(np.sqrt(attn @ attn), len(attn)),
            )
            assert np.isclose(
                stop.mlp_norms[layer],
                np.sqrt(mlp @ mlp),
                rtol=0,
                atol=float64_tolerance(np.sqrt(mlp @ mlp), len(mlp)),
            )
            cos = r[layer + 1] @ r[layer] / (np.linalg.norm(r[layer + 1]) * np.linalg.norm(r[layer]))
            assert abs(stop.cos_prev[layer] - cos) <= float64_tolerance(1.0, r.shape[-1])
        assert stop.sum_check.passed


def test_lens_top1_at_the_last_depth_is_the_models_top1(traced):
    loaded, trace = traced
    with torch.inference_mode():  # the model's own logits, from Hugging Face's forward pass
        logits = loaded.model(input_ids=torch.tensor(np.array(trace.token_ids))[None]).logits[0].numpy()
    for t in range(trace.n_tokens):
        lens = logit_lens(loaded, trace, [t])
        assert lens.top_ids[-1, 0, 0] == int(np.argmax(logits[t])) == trace.top_ids[t, 0]
        final = final_stop(loaded, trace, t)
        assert final.check.passed
        assert np.array_equal(final.top_ids, np.argsort(-logits[t], kind="stable")[: len(final.top_ids)])
        if t + 1 < trace.n_tokens:
            assert final.next_id == int(trace.token_ids[t + 1])
            p = np.exp(logits[t].astype(np.float64) - logits[t].max())
            assert np.isclose(final.next_prob, p[final.next_id] / p.sum(), rtol=1e-4)
        else:
            assert final.next_id is None and final.next_prob is None


def test_journey_charts_are_specs_of_the_numbers():
    spec = vector_strips({"a": np.arange(4.0), "b": np.ones(4)}).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert len(values) == 8 and {v["vector"] for v in values} == {"a", "b"}
    with pytest.raises(ValueError, match=re.escape("vector_strips needs vectors of one width, got [3, 4].")):
        vector_strips({"a": np.zeros(4), "b": np.zeros(3)})
    sizes, turns = residual_journey(["input", "after block 0"], np.array([1.0, 2.0]), [0.5], [0.7], [0.9])
    assert sizes.to_dict()["layer"][1]["mark"]["type"] == "line"
    assert [v["cosine"] for v in next(iter(turns.to_dict()["datasets"].values()))] == [0.9]


# ---------------------------------------------------------------- the page

STEPS = [f"{i} ·" for i in range(1, 9)]


def check_labels(at) -> list[str]:
    return [m.label for m in at.metric if m.label.startswith("Check:")]


def test_journey_page_draws_every_step_with_green_checks(tiny_model_dir):
    at = app_test(PAGE, tiny_model_dir, TEXT).run()
    assert_clean(at)
    assert at.title[0].value.startswith("9 · ")
    subheaders = [s.value for s in at.subheader]
    assert [next(s for s in subheaders if s.startswith(step)) for step in STEPS]
    labels = check_labels(at)
    # the lookup, the input, two attention checks (+ rotary), the residual sum, the lens, the final softmax
    assert len(labels) >= 7
    assert all(check_shown_passed(at, label) for label in labels), labels
    # No index in this data directory: the page says so and sends the learner to station 7.
    assert any(i.value.startswith("Nothing is indexed in the collection 'documents'") for i in at.info)
    # Another token, layer and head: still every check green.
    at.selectbox(key="journey_token").select(2).run()
    at.slider(key="journey_layer").set_value(1).run()
    at.slider(key="journey_head").set_value(1).run()
    assert_clean(at)
    assert metrics(at)["Position t"].startswith("2 of")
    assert all(check_shown_passed(at, label) for label in check_labels(at))


def test_journey_page_finds_the_texts_nearest_chunks(tiny_gpt2_dir, tmp_path, monkeypatch):
    from core.retrieval.index import DocumentIndex
    from core.retrieval.store import CHROMA_HOST_ENV, CHROMA_PORT_ENV, make_client, store_location
    from tests.fixtures_search import CORPUS, load_minilm

    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(CHROMA_HOST_ENV, raising=False)
    monkeypatch.delenv(CHROMA_PORT_ENV, raising=False)
    files = [(p.name, p.read_bytes()) for p in (CORPUS / "tides.txt", CORPUS / "chess.txt")]
    DocumentIndex(make_client(store_location().path), load_minilm()).add_files(files)
    text = (CORPUS / "tides.txt").read_text(encoding="utf-8")[:300]
    at = app_test(PAGE, str(tiny_gpt2_dir), text).run()
    assert_clean(at)
    [table] = [d.value for d in at.dataframe if "document" in d.value.columns]
    assert table["document"].iloc[0] == "tides.txt"  # the text was taken from it
    assert list(table["rank"]) == [1, 2, 3][: len(table)]
    assert check_shown_passed(at, "Check: Chroma's cosine − q·c computed here")


def test_every_journey_chart_keeps_its_plot_height_in_the_browser(tiny_model_dir):
    """A spec without an autosize of its own gets Streamlit's "fit": title, axes and legend squeezed into
    `height` with the plot, which leaves a one-row strip 40 px high no plot at all. Every chart here
    asks to have only its width fitted, so its `height` is the plot's own, as in the SVG/PNG download."""
    at = app_test(PAGE, tiny_model_dir, TEXT).run()
    assert_clean(at)
    charts = at.get("vega_lite_chart")
    specs = [json.loads(chart.proto.spec) for chart in charts]
    # embedding, position or angles, q/k/v, where it looks, residual sizes and turns, final distribution
    assert len(specs) == 7
    assert [s["autosize"] for s in specs] == [{"type": "fit-x", "contains": "padding"}] * len(specs)
    strips = [(c, s) for c, s in zip(charts, specs, strict=True) if s.get("mark", {}).get("type") == "rect"]
    assert len(strips) == 3
    for chart, spec in strips:
        [data] = chart.proto.datasets
        rows = dataframe_util.convert_arrow_bytes_to_pandas_df(data.data.data)["vector"].nunique()
        assert spec["height"] >= STRIP_HEIGHT * rows


@pytest.mark.slow
def test_journey_page_on_smollm2_has_every_check_green(smollm2):
    at = app_test(PAGE, "bundled-smollm2").run()
    assert_clean(at)
    labels = check_labels(at)
    assert any("RoPE" in label for label in labels)  # a rotary model checks its rotation too
    assert all(check_shown_passed(at, label) for label in labels), labels
