"""The "Ablate heads" tab: remove chosen attention heads, compare, and rank every head by a sweep."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import VectorLabError
from core.experiments.ablation import MEAN, MODES, ZERO, ablation, ablation_sweep, head_label
from core.experiments.compare import compare
from core.views.experiment_charts import grid_heatmap
from ui import state
from ui.experiments.common import show_comparison, sweep_section
from ui.widgets import check_metric, show_chart

SWEEP = "vl_ablation_sweep"  # keep_result name of the last head sweep
COMPARISON = "vl_ablation_comparison"  # keep_result name of the last ablation comparison
MODE_HELP = {
    ZERO: "zero: the head's output becomes 0",
    MEAN: "mean: the head's output becomes its average over this text's positions",
}


class _SubsetOf:
    """Allowed values of a multiselect: lists whose items are all options (a new model has other heads)."""

    def __init__(self, options) -> None:
        self.options = set(options)

    def __contains__(self, value) -> bool:
        return isinstance(value, list) and all(v in self.options for v in value)


def render(loaded) -> None:
    info = loaded.info
    text = state.current_text()
    st.markdown(
        "Each attention head writes its own slice of the vector that enters the output projection "
        "(`blocks.{i}.heads`). Ablating a head replaces that slice — by 0, or by the head's mean over this "
        "text — and the rest of the model runs as usual. The projection's bias belongs to no head and stays. "
        f"The prompt is the sidebar text: *{text[:120]}*"
    )
    labels = [head_label((i, h)) for i in range(info.n_layer) for h in range(info.n_head)]
    c1, c2 = st.columns([3, 1])
    picked = c1.multiselect(
        f"Heads to ablate ({info.n_layer} layers × {info.n_head} heads)",
        labels,
        **state.persist("abl_heads", [], allowed=_SubsetOf(labels)),
    )
    mode = c2.radio(
        "Replace by", MODES, format_func=lambda m: MODE_HELP[m], **state.persist("abl_mode", ZERO)
    )
    heads = [(labels.index(p) // info.n_head, labels.index(p) % info.n_head) for p in picked if p in labels]

    key = (state.model_key(loaded), text, tuple(heads), mode)
    comparison = state.kept_result(COMPARISON, key)
    try:
        if comparison is None:
            with st.spinner("Running the model with and without those heads…"):
                comparison = compare(loaded, text, ablation(loaded, text, heads, mode))
                identity = compare(loaded, text, ablation(loaded, text, [], mode), n_continue=0)
            comparison = (comparison, identity.unchanged_check)
            state.keep_result(COMPARISON, key, comparison)
    except VectorLabError as e:
        st.error(str(e))
        return
    result, identity_check = comparison
    if not heads:
        st.info("No heads picked: the changed run is the original. Pick heads above, or run the sweep below.")
    show_comparison(result)
    check_metric(
        "Identity check: ablate no heads",
        identity_check,
        value=f"max |Δlogit| {identity_check.error:.2e}",
    )

    st.subheader("Which heads matter for this text?")
    st.markdown(
        f"Ablate each of the {info.n_layer * info.n_head} heads on its own ({MODE_HELP[mode]}) and measure "
        "KL(original ‖ ablated) of the next-token distribution. The runs go through the model in batches, "
        "one ablation per batch row."
    )
    sweep_key = (state.model_key(loaded), text, mode)
    try:
        sweep = sweep_section(
            SWEEP,
            sweep_key,
            label="Ablating heads",
            button="Rank every head",
            button_key="abl_sweep_run",
            n_runs=info.n_layer * info.n_head,
            run=lambda **kw: ablation_sweep(loaded, text, mode, **kw),
        )
    except VectorLabError as e:
        st.error(str(e))
        return
    if sweep is None:
        return
    rows = [f"layer {i}" for i in range(info.n_layer)]
    columns = [f"head {h}" for h in range(info.n_head)]
    show_chart(
        grid_heatmap(
            sweep.kl,
            rows,
            columns,
            row_title="layer",
            column_title="head",
            value_title="KL (nats)",
            title=f"KL(original ‖ without the head), {mode}-ablation",
        ),
        "ablation_sweep",
    )
    top = sweep.ranking[:10]
    st.dataframe(
        pd.DataFrame(
            {
                "head": [head_label(h) for h, _ in top],
                "KL (nats)": [kl for _, kl in top],
                "p(target) without it": [float(sweep.target_prob[h]) for h, _ in top],
            }
        ),
        hide_index=True,
    )
    largest = f" Largest KL {top[0][1]:.4g} nats." if top else ""
    st.caption(
        f"Target token id {sweep.target_id}: p = {sweep.original_target_prob:.4f} in the original run."
        + largest
    )
