"""The "What if?" experiments: hooks at named points, identity checks for every family, head ablation,
activation patching (batched sweeps equal single runs), and the station's tabs under AppTest: only
the open one runs, and the ablation and patching tabs work."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch
from test_pages import app_test, assert_clean, check_shown_passed, metrics

from core.errors import InputError, SettingsError
from core.experiments.ablation import MEAN, ZERO, ablation, ablation_sweep, head_means
from core.experiments.compare import PRE, Intervention, applied, captured, compare
from core.experiments.patching import SITES, PatchSweep, patch, patch_from, patch_sweep, prepare
from core.model.families import HOOK_ATTN, HOOK_HEADS, model_parts
from core.tolerance import check_close, check_within, float32_tolerance, log_softmax_tolerance
from core.views.experiment_charts import comparison_frame, grid_heatmap
from ui import state
from ui.experiments import ablation as ablation_tab
from ui.experiments import arithmetic as arithmetic_tab
from ui.experiments import patching as patching_tab
from ui.experiments import positions as positions_tab
from ui.experiments import steering as steer_tab

TEXT = "The quick brown fox jumps over the lazy"
CLEAN = "The cat sat on the mat and"
CORRUPTED = "The dog ran to the mat and"
# A random tiny model gives both prompts the same top-1, so its tests name two answers.
ANSWERS = {"clean_answer": 3797, "corrupted_answer": 3290}  # GPT-2 BPE ids of " cat" and " dog"


def _no_hooks_left(loaded) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in loaded.model.modules())


# ---------------------------------------------------------------- the shared base


def test_do_nothing_versions_reproduce_the_original_exactly(family_model):
    versions = [
        Intervention("nothing"),
        ablation(family_model, TEXT, [], ZERO),
        ablation(family_model, TEXT, [], MEAN),
    ]
    versions += [patch_from(family_model, TEXT, TEXT, site, 1, range(3)) for site in SITES]
    for version in versions:
        result = compare(family_model, TEXT, version, n_continue=4)
        assert result.max_abs_dlogit == 0.0 and result.kl == 0.0, version.label
        assert result.unchanged_check.passed and result.unchanged_check.summary() == "exact"
        assert result.changed.continuation_ids == result.original.continuation_ids
        assert result.changed.target_prob == result.original.target_prob == result.target.prob
    assert _no_hooks_left(family_model)


def test_compare_reports_a_real_change(tiny_gpt2):
    double = Intervention.of("double block 0", ("blocks.0.out", "forward", lambda x: 2 * x))
    result = compare(tiny_gpt2, TEXT, double, k=5, n_continue=3)
    assert result.max_abs_dlogit > 0 and result.kl > 0 and not result.unchanged_check.passed
    assert len(result.original.top) == len(result.changed.top) == 5
    assert result.target.id == result.original.top[0].id  # default target: the original top-1
    probs = torch.softmax(torch.tensor(result.changed.logits, dtype=torch.float64), -1)
    assert result.changed.target_prob == pytest.approx(float(probs[result.target.id]), abs=1e-12)
    assert len(result.changed.continuation_ids) == 3


def test_hooks_are_removed_after_an_error_and_ignore_other_threads(tiny_gpt2):
    zero = Intervention.of("zero embed", ("embed", "forward", lambda x: torch.zeros_like(x)))
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        plain = tiny_gpt2.model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="boom"), applied(tiny_gpt2, zero):
            raise RuntimeError("boom")
        assert _no_hooks_left(tiny_gpt2)
        seen = {}
        with applied(tiny_gpt2, zero):
            other = threading.Thread(target=lambda: seen.update(out=tiny_gpt2.model(input_ids=ids).logits))
            other.start()
            other.join()
            mine = tiny_gpt2.model(input_ids=ids).logits
    assert torch.equal(seen["out"], plain) and not torch.equal(mine, plain)


# ---------------------------------------------------------------- head ablation


def test_zero_ablating_every_head_of_a_layer_removes_its_attention(family_model):
    info = family_model.info
    bias = model_parts(family_model.model).out_projection(0).bias
    removed = Intervention.of(
        "attention output = bias only",
        (HOOK_ATTN.format(i=0), "forward", lambda x: torch.zeros_like(x) + (0 if bias is None else bias)),
    )
    every_head = ablation(family_model, TEXT, [(0, h) for h in range(info.n_head)], ZERO)
    ours = compare(family_model, TEXT, every_head, n_continue=0).changed.logits
    theirs = compare(family_model, TEXT, removed, n_continue=0).changed.logits
    assert check_close(ours, theirs, info.d_model).passed


def test_mean_ablation_puts_the_heads_mean_in_its_slice(tiny_llama):
    info = tiny_llama.info
    ids = tiny_llama.tokenizer(TEXT)["input_ids"]
    means = head_means(tiny_llama, ids)  # [L, H, dh]
    point = HOOK_HEADS.format(i=1)
    with torch.inference_mode(), applied(tiny_llama, ablation(tiny_llama, TEXT, [(1, 2)], MEAN)):
        with captured(tiny_llama, {point: PRE}) as got:  # registered after: sees the ablated input
            tiny_llama.model(input_ids=torch.tensor([ids]))
    heads = got[point][0].view(len(ids), info.n_head, info.d_head)
    assert torch.equal(heads[:, 2], means[1, 2].expand(len(ids), -1))
    assert not torch.equal(heads[:, 1], means[1, 1].expand(len(ids), -1))


@pytest.mark.parametrize("mode", [ZERO, MEAN])
def test_ablation_sweep_batched_equals_single_runs(tiny_model, mode):
    info = tiny_model.info
    sweep = ablation_sweep(tiny_model, TEXT, mode)
    assert sweep.complete and sweep.n_done == info.n_layer * info.n_head
    for layer in range(info.n_layer):
        for head in range(info.n_head):
            single = compare(
                tiny_model, TEXT, ablation(tiny_model, TEXT, [(layer, head)], mode), n_continue=0
            )
            lp = torch.log_softmax(torch.as_tensor(single.original.logits, dtype=torch.float64), -1)
            lq = torch.log_softmax(torch.as_tensor(single.changed.logits, dtype=torch.float64), -1)
            log_tol = log_softmax_tolerance(single.changed.logits, info.d_model)
            kl_tol = log_tol * (2 + float((lp - lq).abs().max()))
            assert check_within(sweep.kl[layer, head], single.kl, kl_tol).passed
            assert check_within(sweep.target_prob[layer, head], single.changed.target_prob, log_tol).passed
    assert sweep.ranking[0][1] == np.nanmax(sweep.kl)


def test_ablation_sweep_can_be_stopped_and_reports_progress(tiny_gpt2):
    progress, stop = [], threading.Event()

    def on_progress(done, total):
        progress.append((done, total))
        stop.set()

    sweep = ablation_sweep(tiny_gpt2, TEXT, batch_size=3, on_progress=on_progress, should_stop=stop.is_set)
    assert not sweep.complete and sweep.n_done == 3 and progress == [(3, 4)]
    assert np.isfinite(sweep.kl.ravel()[:3]).all() and np.isnan(sweep.kl.ravel()[3:]).all()
    assert len(sweep.ranking) == 3


def test_ablation_of_a_head_that_does_not_exist(tiny_gpt2):
    with pytest.raises(
        InputError, match=re.escape("There is no head L5H0: this model has 2 layers × 2 heads.")
    ):
        ablation(tiny_gpt2, TEXT, [(5, 0)])


# ---------------------------------------------------------------- activation patching


def test_patching_every_position_of_block_0_input_restores_exactly_one(family_model):
    setup = prepare(family_model, CLEAN, CORRUPTED, "resid_in", **ANSWERS)
    T = len(setup.clean_ids)
    result = compare(family_model, CORRUPTED, patch(family_model, setup, 0, range(T)), n_continue=0)
    clean = compare(family_model, CLEAN, Intervention("nothing"), n_continue=0).original.logits
    assert check_within(result.changed.logits, clean, 0.0).passed
    d = float(result.changed.logits[setup.clean_answer]) - float(
        result.changed.logits[setup.corrupted_answer]
    )
    assert setup.restored(d) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("site", list(SITES))
def test_patching_sweep_batched_equals_single_runs(tiny_model, site):
    setup = prepare(tiny_model, CLEAN, CORRUPTED, site, **ANSWERS)
    sweep = patch_sweep(tiny_model, setup)
    one_by_one = patch_sweep(tiny_model, setup, batch_size=1)
    L, T = tiny_model.info.n_layer, len(setup.clean_ids)
    assert sweep.restored.shape == (L, T) and sweep.complete
    # Rounding of a logit difference of two float32 logits, divided by the clean − corrupted gap.
    logits = compare(tiny_model, CORRUPTED, Intervention("nothing"), n_continue=0).original.logits
    tolerance = (
        2 * float32_tolerance(logits, tiny_model.info.d_model) / abs(setup.clean_diff - setup.corrupted_diff)
    )
    assert check_within(sweep.restored, one_by_one.restored, tolerance).passed
    single = compare(tiny_model, CORRUPTED, patch(tiny_model, setup, L - 1, [1]), n_continue=0).changed.logits
    d = float(single[setup.clean_answer]) - float(single[setup.corrupted_answer])
    assert check_within(sweep.restored[L - 1, 1], setup.restored(d), tolerance).passed
    if site == "resid_out":  # the last residual decides the last logits alone
        assert check_within(sweep.restored[L - 1], np.eye(T)[T - 1], tolerance).passed


def test_patching_sweep_can_be_stopped(tiny_gpt2):
    setup = prepare(tiny_gpt2, CLEAN, CORRUPTED, **ANSWERS)
    sweep = patch_sweep(tiny_gpt2, setup, batch_size=5, should_stop=lambda: True)
    assert not sweep.complete and sweep.n_done == 0 and np.isnan(sweep.restored).all()


def test_patching_needs_prompts_of_the_same_length(tiny_gpt2):
    message = (
        "The clean prompt is 7 tokens long and the corrupted one 3: "
        "patching copies position by position, so both need the same number of tokens."
    )
    with pytest.raises(InputError, match=re.escape(message)):
        prepare(tiny_gpt2, CLEAN, "The dog ran")


def test_patching_needs_two_different_answers(tiny_gpt2):
    message = (
        "Both answers are the same token ('␣and'), so their logit difference is always 0. "
        "Pick a different answer token for the clean or the corrupted prompt."
    )
    with pytest.raises(InputError, match=re.escape(message)):
        prepare(tiny_gpt2, CLEAN, CORRUPTED)  # both runs of the random tiny model pick " and"


@pytest.mark.slow
def test_smollm2_france_italy_patching(smollm2):
    setup = prepare(smollm2, "The capital of France is", "The capital of Italy is", "resid_in")
    assert (setup.clean_answer_piece, setup.corrupted_answer_piece) == ("␣Paris", "␣Rome")
    country = setup.clean_pieces.index("␣France")
    assert setup.corrupted_pieces[country] == "␣Italy"
    first = patch_sweep(
        smollm2, prepare(smollm2, "The capital of France is", "The capital of Italy is", "resid_in")
    )
    last = patch_sweep(
        smollm2, prepare(smollm2, "The capital of France is", "The capital of Italy is", "resid_out")
    )
    T = len(setup.clean_ids)
    assert first.restored[0, country] >= 0.9
    assert last.restored[-1, T - 1] == pytest.approx(1.0, abs=0.05)
    assert abs(last.restored[-1, country]) <= 0.05


# ---------------------------------------------------------------- charts


def test_comparison_chart_holds_both_runs_probabilities(tiny_gpt2):
    double = Intervention.of("double", ("blocks.0.out", "forward", lambda x: 2 * x))
    result = compare(tiny_gpt2, TEXT, double, k=3, n_continue=0)
    frame = comparison_frame(result)
    for run, side in (("original", result.original), ("changed", result.changed)):
        shown = dict(zip(frame[frame.run == run].token, frame[frame.run == run].p, strict=True))
        for entry in side.top:
            assert shown[f"{entry.piece} ({entry.id})"] == pytest.approx(entry.prob, abs=1e-12)


def test_grid_heatmap_keeps_every_cell_and_not_run_as_null():
    values = np.array([[0.5, np.nan], [1.0, -0.25]])
    spec = grid_heatmap(
        values, ["a", "b"], ["x", "y"], row_title="r", column_title="c", value_title="v"
    ).to_dict()
    data = next(iter(spec["datasets"].values()))
    assert [d["value"] for d in data] == [0.5, None, 1.0, -0.25]


# ---------------------------------------------------------------- the page

PAGE = "pages/10_experiments.py"
TAB = "whatif_tab"  # the page's st.tabs key: the open tab's label
TABS = ["Steer", "Positions", "Embedding arithmetic", "Ablate heads", "Patch activations"]
# A widget of each tab, and the results each tab keeps in the session once it has run its experiment.
TAB_WIDGETS = ["steer_alpha", "pos_exp_mode", "arith_a", "abl_heads", "patch_clean"]
TAB_RESULTS = [
    steer_tab.RESULT,
    positions_tab.RESULT,
    arithmetic_tab.RESULT,
    ablation_tab.COMPARISON,
    patching_tab.SETUP,
]


def open_tab(model_dir, label: str, text: str = TEXT):
    """The page in a new session with the tab `label` open."""
    at = app_test(PAGE, str(model_dir), text=text)
    at.session_state[TAB] = label
    return at.run()


def widget_keys(node) -> set[str]:
    """The keys of every widget drawn under `node`."""
    keys = {node.key} if getattr(node, "key", None) else set()
    for child in getattr(node, "children", {}).values():
        keys |= widget_keys(child)
    return keys


def test_only_the_open_tab_runs_its_experiments(tiny_gpt2_dir):
    """A first visit draws and runs the Steer tab alone; opening another tab draws and runs that one
    instead, and the values set in a tab are still there when it is opened again."""
    at = app_test(PAGE, str(tiny_gpt2_dir), text=TEXT)
    # The patching tab's remembered inputs: prompts the random tiny model can be patched on.
    for widget, value in [("patch_clean", CLEAN), ("patch_corrupted", CORRUPTED)]:
        at.session_state[state.PERSIST_PREFIX + widget] = value
    for widget, answer in [("patch_clean_id", "clean_answer"), ("patch_corrupt_id", "corrupted_answer")]:
        at.session_state[state.PERSIST_PREFIX + widget] = str(ANSWERS[answer])
    at.run()
    assert_clean(at)
    assert [t.label for t in at.tabs] == TABS and at.session_state[TAB] == "Steer"
    for label, widget, result in zip(TABS, TAB_WIDGETS, TAB_RESULTS, strict=True):
        if label != "Steer":
            at.session_state[TAB] = label
            at.run()
            assert_clean(at)
        drawn = widget_keys(at.main)
        assert widget in drawn and not drawn & (set(TAB_WIDGETS) - {widget}), (label, drawn)
        done = TAB_RESULTS[: TABS.index(label) + 1]  # the tabs opened so far, and no other
        assert [r in at.session_state for r in TAB_RESULTS] == [r in done for r in TAB_RESULTS]
        assert result in at.session_state
        if label == "Steer":
            at.slider(key="steer_alpha").set_value(0.0).run()
    at.session_state[TAB] = "Steer"
    at.run()
    assert_clean(at)
    assert at.slider(key="steer_alpha").value == 0.0
    assert metrics(at)["max |Δlogit|"] == "0"


def test_ablation_tab_compares_checks_identity_and_sweeps(tiny_gpt2_dir):
    at = open_tab(tiny_gpt2_dir, "Ablate heads")
    assert_clean(at)
    assert at.title[0].value.startswith("10 · ")
    at.multiselect(key="abl_heads").set_value(["L0H1", "L1H0"]).run()
    assert_clean(at)
    assert check_shown_passed(at, "Identity check: ablate no heads")
    assert any(m.label == "KL(original ‖ changed)" and m.value != "0 nats" for m in at.metric)
    at.button(key="abl_sweep_run").click().run()
    assert_clean(at)
    assert any(str(df.value.columns[0]) == "head" and len(df.value) == 4 for df in at.dataframe)


def test_patching_tab_compares_checks_identity_and_sweeps(tiny_gpt2_dir):
    at = open_tab(tiny_gpt2_dir, "Patch activations")
    # The random tiny model's two runs share their top-1: the tab asks for answer tokens instead.
    assert [w.value for w in at.warning if "same token" in w.value]
    at.text_input(key="patch_clean").set_value(CLEAN)
    at.text_input(key="patch_corrupted").set_value(CORRUPTED)
    at.text_input(key="patch_clean_id").set_value(str(ANSWERS["clean_answer"]))
    at.text_input(key="patch_corrupt_id").set_value(str(ANSWERS["corrupted_answer"])).run()
    assert_clean(at)
    assert check_shown_passed(at, "Identity check: patch the corrupted prompt from itself")
    at.button(key="patch_sweep_run").click().run()
    assert_clean(at)
    at.text_input(key="patch_corrupted").set_value("The dog ran").run()
    assert [w.value for w in at.warning if w.value.startswith("The clean prompt")] == [
        "The clean prompt is 7 tokens long and the corrupted one 3: patching copies position by position, "
        "so both need the same number of tokens."
    ]


# ---------------------------------------------------------------- stopped sweeps, continued


def _stopper(after: int):
    """on_progress / should_stop pair that stops a sweep once `after` runs are done."""
    stop = threading.Event()
    return (lambda done, _total: done >= after and stop.set()), stop.is_set


def _ablation_tolerance(loaded, mode) -> float:
    """Rounding of KL and p(target) from float32 logits: |Δ log q| bounds both (Σ p = 1)."""
    info = loaded.info
    heads = [(i, h) for i in range(info.n_layer) for h in range(info.n_head)]
    runs = [compare(loaded, TEXT, ablation(loaded, TEXT, [head], mode), n_continue=0) for head in heads]
    return max(log_softmax_tolerance(r.changed.logits, info.d_model) for r in runs)


@pytest.mark.parametrize("mode", [ZERO, MEAN])
def test_a_stopped_ablation_sweep_continues_with_only_the_missing_heads(tiny_model, mode):
    info = tiny_model.info
    n = info.n_layer * info.n_head
    on_progress, should_stop = _stopper(2)
    stopped = ablation_sweep(
        tiny_model, TEXT, mode, batch_size=1, on_progress=on_progress, should_stop=should_stop
    )
    assert not stopped.complete and stopped.n_done == 2 and np.isfinite(stopped.kl).sum() == 2
    reported = []
    resumed = ablation_sweep(
        tiny_model, TEXT, mode, batch_size=1, on_progress=lambda d, t: reported.append((d, t)), resume=stopped
    )
    assert reported == [(done, n) for done in range(3, n + 1)]  # only the missing heads ran
    finished = np.isfinite(stopped.kl)
    assert np.array_equal(resumed.kl[finished], stopped.kl[finished])
    assert np.array_equal(resumed.target_prob[finished], stopped.target_prob[finished])
    whole = ablation_sweep(tiny_model, TEXT, mode)
    assert resumed.complete and resumed.n_done == n and resumed.target_id == whole.target_id
    tolerance = _ablation_tolerance(tiny_model, mode)
    assert check_within(resumed.kl, whole.kl, tolerance).passed
    assert check_within(resumed.target_prob, whole.target_prob, tolerance).passed


def test_continuing_a_sweep_of_another_mode_is_refused(tiny_gpt2):
    stopped = ablation_sweep(tiny_gpt2, TEXT, ZERO, batch_size=1, should_stop=lambda: True)
    message = (
        "The sweep to continue is a zero-ablation of 2 × 2 heads, not a mean-ablation of 2 × 2: "
        "run it again from the start."
    )
    with pytest.raises(SettingsError, match=re.escape(message)):
        ablation_sweep(tiny_gpt2, TEXT, MEAN, resume=stopped)


@pytest.mark.parametrize("site", ["resid_in", "mlp"])
def test_a_stopped_patching_sweep_continues_with_only_the_missing_cells(tiny_model, site):
    setup = prepare(tiny_model, CLEAN, CORRUPTED, site, **ANSWERS)
    L, T = tiny_model.info.n_layer, len(setup.clean_ids)
    on_progress, should_stop = _stopper(5)
    stopped = patch_sweep(tiny_model, setup, batch_size=5, on_progress=on_progress, should_stop=should_stop)
    assert not stopped.complete and stopped.n_done == 5
    reported = []
    resumed = patch_sweep(
        tiny_model, setup, batch_size=5, on_progress=lambda d, t: reported.append(d), resume=stopped
    )
    assert reported[0] == 10 and reported[-1] == L * T and len(reported) == -(-(L * T - 5) // 5)
    finished = np.isfinite(stopped.restored)
    assert np.array_equal(resumed.restored[finished], stopped.restored[finished])
    whole = patch_sweep(tiny_model, setup)
    assert resumed.complete and resumed.n_done == L * T
    logits = compare(tiny_model, CORRUPTED, Intervention("nothing"), n_continue=0).original.logits
    tolerance = (
        2 * float32_tolerance(logits, tiny_model.info.d_model) / abs(setup.clean_diff - setup.corrupted_diff)
    )
    assert check_within(resumed.restored, whole.restored, tolerance).passed


def test_continuing_fills_missing_cells_wherever_they_are(tiny_gpt2):
    setup = prepare(tiny_gpt2, CLEAN, CORRUPTED, **ANSWERS)
    whole = patch_sweep(tiny_gpt2, setup, batch_size=3)
    holes = whole.restored.copy()
    holes[0, 1:3] = np.nan  # two runs of missing cells, neither at the end
    holes[1, 5] = np.nan
    partial = PatchSweep(setup, holes, complete=False, n_done=int(np.isfinite(holes).sum()))
    reported = []
    filled = patch_sweep(
        tiny_gpt2, setup, batch_size=3, on_progress=lambda d, t: reported.append(d), resume=partial
    )
    n = holes.size
    assert reported == [n - 1, n]  # one batch for cells (0, 1), (0, 2), one for (1, 5)
    assert filled.complete and filled.n_done == n
    logits = compare(tiny_gpt2, CORRUPTED, Intervention("nothing"), n_continue=0).original.logits
    tolerance = (
        2 * float32_tolerance(logits, tiny_gpt2.info.d_model) / abs(setup.clean_diff - setup.corrupted_diff)
    )
    assert check_within(filled.restored, whole.restored, tolerance).passed


def test_continuing_a_patching_sweep_of_other_prompts_is_refused(tiny_gpt2):
    stopped = patch_sweep(
        tiny_gpt2, prepare(tiny_gpt2, CLEAN, CORRUPTED, **ANSWERS), should_stop=lambda: True
    )
    other = prepare(tiny_gpt2, CLEAN, "The dog sat on the mat and", **ANSWERS)
    message = (
        "The sweep to continue was run on other prompts, answers, site or model: run it again from the start."
    )
    with pytest.raises(SettingsError, match=re.escape(message)):
        patch_sweep(tiny_gpt2, other, resume=stopped)


def test_cancelled_sweep_on_the_page_keeps_its_cells_and_continues(tiny_gpt2_dir, tiny_gpt2, monkeypatch):
    """Cancel makes Streamlit raise StopException at the progress bar's next update: the page keeps the
    finished heads, says how far it got, and Continue runs only the others."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    import core.experiments.ablation as core_ablation
    import ui.experiments.common as common
    from ui.experiments.ablation import SWEEP

    monkeypatch.setattr(core_ablation, "rows_per_batch", lambda n_tokens: 1)  # one head per batch
    shown = []
    real_show = common.show_progress

    def cancelled_after_two(bar, label, done, total):
        shown.append(done)
        if done == 2:
            raise StopException()
        real_show(bar, label, done, total)

    monkeypatch.setattr(common, "show_progress", cancelled_after_two)
    at = open_tab(tiny_gpt2_dir, "Ablate heads")
    at.button(key="abl_sweep_run").click().run()
    assert not at.exception and shown == [1, 2]
    stopped = at.session_state[SWEEP][1]
    assert not stopped.complete and stopped.n_done == 2 and np.isfinite(stopped.kl).sum() == 2

    at.run()  # the rerun Cancel asked for
    assert_clean(at)
    assert [w.value for w in at.warning if w.value.startswith("Stopped")] == [
        "Stopped after 2 of 4 runs: the blank cells below were not run. Continue runs only those."
    ]
    assert any(str(df.value.columns[0]) == "head" and len(df.value) == 2 for df in at.dataframe)

    shown.clear()
    at.button(key="abl_sweep_run_continue").click().run()
    assert_clean(at)
    assert shown == [3, 4]
    assert not [w for w in at.warning if w.value.startswith("Stopped")]
    resumed = at.session_state[SWEEP][1]
    finished = np.isfinite(stopped.kl)
    assert resumed.complete and np.array_equal(resumed.kl[finished], stopped.kl[finished])
    whole = ablation_sweep(tiny_gpt2, TEXT, ZERO)
    assert check_within(resumed.kl, whole.kl, _ablation_tolerance(tiny_gpt2, ZERO)).passed
    assert any(str(df.value.columns[0]) == "head" and len(df.value) == 4 for df in at.dataframe)
