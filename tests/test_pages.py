"""Every page under Streamlit's AppTest: directly, through app.py navigation, with widgets and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui import state
from ui.stations import STATIONS

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/home.py"] + [s.page for s in STATIONS]
TIMEOUT = 180


def app_test(script: str, spec: str, text: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / script), default_timeout=TIMEOUT)
    at.session_state[state.MODEL_SPEC] = spec
    if text is not None:
        at.session_state[state.TEXT] = text
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def metric_colour(metric) -> str:
    from streamlit.proto.Metric_pb2 import Metric as MetricProto

    return MetricProto.MetricColor.Name(metric.color).lower()


def check_shown_passed(at: AppTest, label: str) -> bool:
    """The page shows the check `label` as passed: its difference is within float rounding."""
    [metric] = [m for m in at.metric if m.label == label]
    return metric.delta.startswith(("within rounding", "exact")) and metric_colour(metric) == "green"


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_each_page_runs_on_both_tiny_families(page, tiny_model_dir):
    at = app_test(page, tiny_model_dir).run()
    assert_clean(at)
    numbers = {s.page: s.number for s in STATIONS}
    expected = f"{numbers[page]} ·" if page in numbers else "Vector Lab"
    assert at.title[0].value.startswith(expected)


def test_navigation_visits_every_station(tiny_gpt2_dir):
    at = app_test("app.py", str(tiny_gpt2_dir)).run()
    assert_clean(at)
    assert at.title[0].value == "Vector Lab"  # drawn without waiting for the model
    for station in STATIONS:
        at.switch_page(station.page).run()
        assert_clean(at)
        assert at.title[0].value.startswith(f"{station.number} ·")
        assert metrics(at)["Layers"] == "2" and metrics(at)["Width d"] == "32"  # each station waits for it


def test_tokens_page_widgets(tiny_gpt2_dir):
    at = app_test("pages/1_tokens.py", str(tiny_gpt2_dir), "Hello world, hello vectors").run()
    assert_clean(at)
    from core.model.loading import gpt2_tokenizer

    assert (
        metrics(at)["Tokens"] == str(len(gpt2_tokenizer()("Hello world, hello vectors")["input_ids"])) == "5"
    )
    assert any("max |trace's token vectors − E[ids]| = 0.00e+00" in c.value for c in at.caption)
    assert at.slider(key="tok_dims").value == 32  # the tiny model's whole width: under the 64 shown first
    at.selectbox(key="tok_choice").select(1).run()
    at.slider(key="tok_k").set_value(5).run()
    # The 2-D map is drawn only once its section is opened.
    assert [e.label for e in at.expander] == [
        "A 2-D map of the sentence among its neighbours",
        "Predict, then reveal",
    ]
    assert not [s for s in at.slider if s.key == "tok_map_k"]
    at.session_state["tok_exp_map"] = True
    at.run()
    at.slider(key="tok_map_k").set_value(2).run()
    assert_clean(at)
    assert any(c.value.startswith("PCA keeps the two directions along which these") for c in at.caption)
    # GPT-2's own tokenizer gives the same pieces, so no comparison row is shown.
    assert not any("GPT-2's tokenizer on the same text" in m.value for m in at.markdown)


def open_section(at: AppTest, key: str) -> AppTest:
    """Open the lazy expander `key` (drawn with on_change="rerun") and rerun the page, as a click does."""
    at.session_state[key] = True
    return at.run()


def test_tokens_page_computes_neighbours_once_per_model_and_input(tiny_gpt2_dir, monkeypatch):
    from core.inspection import tokens

    calls = []

    def counted(name: str):
        compute = getattr(tokens, name)

        def run(*args, **kwargs):
            calls.append(name)
            return compute(*args, **kwargs)

        return run

    for name in ("nearest_tokens", "neighbourhood_map"):
        monkeypatch.setattr(tokens, name, counted(name))
    state._nearest_tokens.clear()
    state._token_map.clear()
    at = app_test("pages/1_tokens.py", str(tiny_gpt2_dir), "Hello world, hello vectors")
    at.session_state["tok_exp_map"] = True
    at.run()
    assert_clean(at)
    assert calls == ["nearest_tokens", "neighbourhood_map"]
    at.run()  # a rerun with the same model and inputs reuses both
    assert calls == ["nearest_tokens", "neighbourhood_map"]
    at.slider(key="tok_k").set_value(5).run()
    at.slider(key="tok_map_k").set_value(2).run()
    assert calls == ["nearest_tokens", "neighbourhood_map"] * 2


def test_positions_page_gpt2_check_is_exact(tiny_gpt2_dir):
    at = app_test("pages/2_positions.py", str(tiny_gpt2_dir)).run()
    assert_clean(at)
    assert float(metrics(at)["Check: max |(E[id] + P[t]) − block input|"]) == 0.0
    assert check_shown_passed(at, "Check: max |(E[id] + P[t]) − block input|")
    # The sum's three heatmaps are the first view; the table comparisons wait until opened.
    assert len(at.get("vega_lite_chart")) == 3
    assert not [s for s in at.slider if s.key == "pos_n"]
    open_section(at, "pos_exp_similarity")
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == 3 + 4
    at.slider(key="pos_n").set_value(16).run()
    assert_clean(at)


def test_positions_page_runs_the_text_without_positions(tiny_model_dir):
    at = app_test("pages/2_positions.py", tiny_model_dir, "The cat sat on the mat and the cat").run()
    assert_clean(at)
    assert "KL(with ‖ without positions)" not in metrics(at)  # not run until the section is opened
    open_section(at, "pos_exp_removed")
    assert_clean(at)
    assert float(metrics(at)["KL(with ‖ without positions)"].split()[0]) > 0
    # The default pair reorders the same tokens: block 0 cannot tell them apart without positions.
    removed = "Block 0 output at the last token, max |A − B|, positions removed"
    assert check_shown_passed(at, removed)
    kept = float(metrics(at)["Block 0 output at the last token, max |A − B|, positions kept"])
    assert kept > float(metrics(at)[removed])
    # Texts that are not a reordering compare only their predictions.
    at.text_input(key="order_b").input("A completely different sentence.").run()
    assert_clean(at)
    assert removed not in metrics(at)
    assert any(i.value.startswith("B is not A's tokens reordered") for i in at.info)
    at.text_input(key="order_b").input("   ").run()
    assert not at.exception
    assert [e.value for e in at.main.error] == ["Type a text into both A and B to compare their word order."]


def test_a_failed_check_is_shown_in_red():
    def page():
        from core.tolerance import CheckResult
        from ui.widgets import check_metric

        check_metric("ok", CheckResult(error=1e-7, tolerance=1e-6))
        check_metric("broken", CheckResult(error=1e-3, tolerance=1e-6))
        check_metric("copy", CheckResult(error=0.0, tolerance=0.0))

    at = AppTest.from_function(page).run()
    assert not at.exception
    shown = {m.label: (m.value, m.delta, metric_colour(m)) for m in at.metric}
    assert shown["ok"] == ("1.00e-07", "within rounding (≤ 1.0e-06)", "green")
    assert shown["broken"] == ("1.00e-03", "FAILED: above 1.0e-06", "red")
    assert shown["copy"] == ("0.00e+00", "exact", "green")


@pytest.mark.slow
def test_pages_on_bundled_smollm2_show_rotary_and_both_tokenizers(smollm2):
    at = app_test("pages/2_positions.py", "bundled-smollm2").run()
    assert_clean(at)
    assert "Check: spread of q·k over pairs with offset 2" not in metrics(at)
    open_section(at, "pos_exp_distance")
    open_section(at, "pos_exp_removed")
    assert_clean(at)
    m = metrics(at)
    assert float(m["Check: max |E[id] − block input|"]) == 0.0  # a copy: exact
    for label in (
        "Check: max |E[id] − block input|",
        "Check: max |our RoPE(q before rotation) − the model's q| (all layers, heads, tokens)",
        "Check: spread of q·k over pairs with offset 2",
        "Block 0 output at the last token, max |A − B|, positions removed",
    ):
        assert check_shown_passed(at, label), label
    # SmolLM2 without positions still predicts differently after "dog bites man" and "man bites dog".
    assert float(m["KL(A ‖ B), positions removed"].split()[0]) > 0.01
    at.slider(key="rope_layer").set_value(5).run()
    at.slider(key="rope_head").set_value(4).run()
    assert_clean(at)
    at = app_test("pages/1_tokens.py", "bundled-smollm2", "Tokenization of naïve text").run()
    assert_clean(at)
    assert any("GPT-2's tokenizer on the same text" in m.value for m in at.markdown)
    assert at.slider(key="tok_dims").value == 64  # of 576: the first view stays light


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_empty_text_gives_a_message(tiny_gpt2_dir, text):
    at = app_test("pages/1_tokens.py", str(tiny_gpt2_dir)).run()
    assert_clean(at)
    at.text_area(key=state.TEXT_WIDGET).input(text).run()  # typed into the shared sidebar box
    assert not at.exception
    assert [e.value for e in at.main.error] == [
        "The text is empty. Type a sentence in the sidebar to trace it."
    ]


def test_huge_and_mixed_script_text(tiny_gpt2_dir):
    long_text = ("Vectors everywhere. 🙂 Привет 你好 " * 200)[:5000]
    for page in ("pages/1_tokens.py", "pages/2_positions.py"):
        at = app_test(page, str(tiny_gpt2_dir), long_text).run()
        assert not at.exception and not at.error
        # The tiny GPT-2 has 128 positions, fewer than the 512-token trace limit.
        assert any("the first 128 are traced" in w.value for w in at.warning)


def test_unknown_model_id_is_a_message_not_a_traceback(tiny_gpt2_dir, monkeypatch):
    from core.model import loading as models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=1.5: False)
    at = app_test("pages/1_tokens.py", str(tiny_gpt2_dir)).run()
    at.selectbox(key=state.MODEL_CHOICE).select("another model…").run()
    at.text_input(key=state.MODEL_CUSTOM).input("nobody/no-such-model").run()
    assert not at.exception
    assert at.session_state[state.MODEL_SPEC] == "nobody/no-such-model"
    # The sidebar says why, once; no traceback.
    assert [e.value for e in at.error if "Could not load 'nobody/no-such-model'" in e.value] == [
        e.value for e in at.sidebar.error
    ]
    assert len(at.error) == 1
    # Picking a working model again recovers.
    at.session_state[state.MODEL_SPEC] = str(tiny_gpt2_dir)
    at.run()
    assert_clean(at)


def test_directory_that_is_not_a_model(tmp_path):
    at = app_test("pages/1_tokens.py", str(tmp_path)).run()
    assert not at.exception
    message = (
        f"'{tmp_path}' is not a model directory: it has no config.json. "
        "Point to a folder written by `save_pretrained` (config.json + model.safetensors)."
    )
    # Said once, in the sidebar's model card under the picker; the page only points there.
    assert [e.value for e in at.sidebar.error] == [message]
    assert [e.value for e in at.main.error] == []
    assert [i.value for i in at.main.info] == [
        "No model is loaded: the sidebar says why. Pick another model there — the bundled "
        "SmolLM2 always works offline."
    ]


def expander_labels(at: AppTest) -> list[str]:
    return [e.label for e in at.main.expander]


def test_attention_page_widgets_and_checks(tiny_model_dir):
    at = app_test("pages/3_attention.py", tiny_model_dir, "The cat sat on the mat and the cat slept.").run()
    assert_clean(at)
    # First view: one head's map and the step-by-step table with its checks; the rest waits until opened.
    assert len(at.get("vega_lite_chart")) == 1
    assert len(at.dataframe) == 1 and not at.image
    assert not [r for r in at.radio if r.key == "att_stat"]
    assert check_shown_passed(at, "Check: max |hand-computed output − model's head output|")
    assert check_shown_passed(at, "Every layer, head and token")
    at.selectbox(key="att_layer").select(1).run()
    at.selectbox(key="att_head").select(1).run()
    at.selectbox(key="att_token").select(2).run()
    assert_clean(at)
    assert check_shown_passed(at, "Check: max |hand-computed output − model's head output|")
    assert at.info[0].value.startswith(("Puts", "Spreads"))
    steps = at.dataframe[0].value
    assert [k.split(":")[0] for k in steps["key token"]] == ["0", "1", "2"]  # query token 2 sees 0–2

    open_section(at, "att_exp_heads")
    assert_clean(at)
    assert len(at.image) == 1 and len(at.get("vega_lite_chart")) == 2
    at.radio(key="att_stat").set_value("entropy (bits)").run()
    assert_clean(at)
    assert "Mean entropy of each head's rows" in at.get("vega_lite_chart")[1].proto.spec

    open_section(at, "att_exp_vectors")
    assert len(at.get("vega_lite_chart")) == 2 + 4  # q, K, the weights, the output by hand and the model's
    open_section(at, "att_exp_qkv")
    assert_clean(at)
    assert check_shown_passed(
        at, "Check: max |projections of norm(x), split into heads − the trace's Q, K, V| (this layer)"
    )
    # Rotary and shared keys only for a family with rotary positions (the tiny Llama, not GPT-2).
    rotary = "Rotary positions and shared keys" in expander_labels(at)
    assert rotary == ("llama" in tiny_model_dir)
    if rotary:
        open_section(at, "att_exp_rotary")
        assert_clean(at)
        assert len(at.get("vega_lite_chart")) == 2 + 4 + 1
    open_section(at, "att_exp_download")
    assert_clean(at)
    assert {"dl_csv_att_map", "dl_npz_att_map", "dl_csv_att_vectors", "dl_npz_att_vectors"} <= {
        b.key for b in at.download_button
    }


def test_layers_page_widgets_and_checks(tiny_model_dir):
    at = app_test("pages/4_layers.py", tiny_model_dir, "The cat sat on the mat and the cat slept.").run()
    assert_clean(at)
    # First view: the stream's size and its sum checked; the other sections wait until opened.
    assert len(at.get("vega_lite_chart")) == 1
    assert check_shown_passed(at, "Check: max |x_ℓ + attention + MLP − x_(ℓ+1)|")
    assert "Check: last layer vs the model's output" not in metrics(at)
    assert not at.dataframe

    open_section(at, "layers_exp_lens")
    assert_clean(at)
    assert check_shown_passed(at, "Check: last layer vs the model's output")
    at.selectbox(key="lens_token").select(0).run()
    lens_table = at.dataframe[0].value
    assert list(lens_table["layer"]) == ["input", "after block 0", "after block 1"]

    open_section(at, "layers_exp_norm")
    at.slider(key="norm_layer").set_value(0).run()
    at.selectbox(key="norm_token").select(1).run()
    assert_clean(at)
    assert check_shown_passed(at, "Check: max |formula − the model's norm module|")

    n_charts = len(at.get("vega_lite_chart"))
    open_section(at, "layers_exp_updates")
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == n_charts + 3  # cosine, ‖attention update‖, ‖MLP update‖


def test_single_token_text_on_every_station(tiny_model_dir):
    for station in STATIONS:
        at = app_test(station.page, tiny_model_dir, "Hi").run()
        assert_clean(at)


@pytest.mark.slow
def test_two_thousand_token_text_stays_usable(smollm2):
    text = " ".join(f"word{i % 50}" for i in range(1000))  # about 2,000 tokens for SmolLM2
    for page in ("pages/3_attention.py", "pages/4_layers.py"):
        at = app_test(page, "bundled-smollm2", text).run()
        assert_clean(at)
        assert any("the first 512 are traced" in w.value for w in at.warning)
        at.slider(key="att_window" if "attention" in page else "layers_window").set_value(100).run()
        assert_clean(at)
        if "layers" in page:  # the logit lens reads the window's last tokens
            open_section(at, "layers_exp_lens")
            assert_clean(at)
            assert check_shown_passed(at, "Check: last layer vs the model's output")


def _vocab_size(model_dir: str) -> int:
    import json

    return json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]


def test_output_page_controls_and_generation(tiny_model_dir):
    at = app_test("pages/5_output.py", tiny_model_dir, "The cat sat on the mat and the cat").run()
    assert_clean(at)
    assert check_shown_passed(at, "Check: Σ p")
    vocab = f"{_vocab_size(tiny_model_dir):,}"
    assert metrics(at)["Tokens kept"] == vocab  # nothing cut at the defaults
    # Temperature 0 collapses onto one token.
    at.number_input(key="out_temperature").set_value(0.0).run()
    assert metrics(at)["Tokens kept"] == "1"
    assert metrics(at)["Entropy (reshaped)"] == "0.00 bits"
    # Top-k 5 keeps five; top-p 0 keeps exactly the top token.
    at.number_input(key="out_temperature").set_value(1.0).run()
    at.number_input(key="out_top_k").set_value(5).run()
    assert metrics(at)["Tokens kept"] == "5"
    at.number_input(key="out_top_k").set_value(0).run()
    at.slider(key="out_top_p").set_value(0.0).run()
    assert metrics(at)["Tokens kept"] == "1"
    at.slider(key="out_top_p").set_value(1.0).run()
    at.number_input(key="out_temperature").set_value(100.0).run()
    assert_clean(at)
    assert check_shown_passed(at, "Check: Σ p")
    # Greedy generation, then seeded sampling; both show every step.
    at.slider(key="gen_n").set_value(5).run()
    at.button(key="gen_go").click().run()
    assert_clean(at)
    assert any(c.value.startswith("5 tokens in") for c in at.caption)
    assert not [s for s in at.slider if s.key == "gen_step"]  # one step's details wait until opened
    open_section(at, "out_exp_step")
    assert any(m.value.startswith("Step 0: chose") for m in at.markdown)
    at.radio(key="gen_mode").set_value("sample with the settings above").run()
    at.number_input(key="out_temperature").set_value(0.8).run()
    at.button(key="gen_go").click().run()
    assert_clean(at)
    open_section(at, "out_exp_step")  # the new generation's steps: the section is opened again
    at.slider(key="gen_step").set_value(3).run()
    assert any(m.value.startswith("Step 3: chose") for m in at.markdown)
    assert "Perplexity" not in metrics(at)
    open_section(at, "out_exp_surprisal")
    assert_clean(at)
    assert float(metrics(at)["Perplexity"]) > 1.0


def test_output_page_reshapes_once_per_model_text_and_settings(tiny_model_dir, monkeypatch):
    from core.inspection import sampling

    calls = []
    reshape = sampling.reshape

    def counted(logits, config=None):
        calls.append(config)
        return reshape(logits, config)

    monkeypatch.setattr(sampling, "reshape", counted)
    state._next_token.clear()
    at = app_test("pages/5_output.py", tiny_model_dir, "Reshaped once: the cat sat on the").run()
    assert_clean(at)
    assert len(calls) == 1
    first = metrics(at)
    at.run()  # a rerun with the same model, text and settings reuses the distribution
    assert len(calls) == 1 and metrics(at) == first
    at.number_input(key="out_temperature").set_value(0.5).run()
    assert len(calls) == 2 and calls[-1].temperature == 0.5
    assert metrics(at)["Entropy (reshaped)"] != first["Entropy (reshaped)"]
    at.number_input(key="out_temperature").set_value(1.0).run()  # back to settings already computed
    assert len(calls) == 2 and metrics(at) == first
    at.session_state[state.TEXT] = "Another text reshapes again"
    at.run()
    assert len(calls) == 3


def test_output_page_single_token_has_no_perplexity(tiny_gpt2_dir):
    at = app_test("pages/5_output.py", str(tiny_gpt2_dir), "Hi").run()
    assert_clean(at)
    open_section(at, "out_exp_surprisal")
    assert_clean(at)
    assert any(m.value.startswith("The text is a single token") for m in at.markdown)
    assert "Perplexity" not in metrics(at)


def test_tokens_page_shows_embedding_rows_a_window_at_a_time(tiny_gpt2_dir):
    """A long text's embedding rows are drawn 16 tokens at a time; the window moves with the "First
    token" box and the heatmap's rows are exactly the tokens in it."""
    text = " ".join(f"word{i}" for i in range(30))
    at = app_test("pages/1_tokens.py", str(tiny_gpt2_dir), text).run()
    assert_clean(at)
    n_tokens = int(metrics(at)["Tokens"])
    assert n_tokens > 16

    def heatmap_rows() -> list[str]:
        return json.loads(at.get("vega_lite_chart")[0].proto.spec)["encoding"]["y"]["sort"]

    box = at.number_input(key="tok_rows_start")
    assert box.label == "First token (16 rows at a time)" and box.value == 0
    assert len(heatmap_rows()) == 16
    box.set_value(n_tokens - 5).run()
    assert_clean(at)
    assert len(heatmap_rows()) == 5  # the last five tokens
