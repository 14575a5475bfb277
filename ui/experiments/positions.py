"""The "Positions" tab: the sidebar text with its positions removed or its tokens shuffled, beside the
original run."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.errors import VectorLabError
from core.experiments.compare import prompt_ids
from core.experiments.reorder import (
    MODES,
    REMOVED,
    SHUFFLED_KEPT,
    SHUFFLED_RENUMBERED,
    first_block_check,
    parse_order,
    reordered,
    shuffled_order,
)
from core.tolerance import check_within
from ui import state
from ui.experiments.common import show_comparison
from ui.widgets import check_metric

RESULT = "vl_positions_result"  # keep_result name: (Reordered, identity check, extra check)
MODE_HELP = {
    REMOVED: "positions removed (zero position vectors / every token at rotary position 0)",
    SHUFFLED_KEPT: "tokens shuffled, each keeping its own position",
    SHUFFLED_RENUMBERED: "tokens shuffled, positions counting up in the new order",
}
RANDOM, TYPED = "random (seeded)", "typed"


def _link_to_positions() -> None:
    try:
        st.page_link(
            "pages/2_positions.py", label="2 · Positional encoding", icon=":material/format_list_numbered:"
        )
    except StreamlitAPIException:  # opened on its own, without app.py's navigation
        st.markdown("See station **2 · Positional encoding** for how positions enter this model.")


def _order(n: int, mode: str) -> tuple[int, ...] | None:
    if mode == REMOVED:
        return None
    c1, c2 = st.columns([1, 2])
    how = c1.radio("Order", (RANDOM, TYPED), **state.persist("pos_exp_how", RANDOM))
    if how == RANDOM:
        seed = c2.number_input("Seed", 0, 10_000, step=1, **state.persist("pos_exp_seed", 0))
        keep_last = c2.checkbox(
            "Keep the last token last",
            help="Then the prediction compared is still made after the same token.",
            **state.persist("pos_exp_keep_last", True),
        )
        return shuffled_order(n, int(seed), keep_last)
    typed = c2.text_input(
        f"New order: token numbers 0 to {n - 1}",
        help="Slot t of the changed run holds the token numbered at place t: '1 0 2' swaps the first two.",
        # One remembered order per text length: an order typed for another text never lands here.
        **state.persist(f"pos_exp_typed_{n}", " ".join(str(i) for i in range(n))),
    )
    return parse_order(typed, n)


def render(loaded) -> None:
    text = state.current_text()
    st.markdown(
        "The sidebar text again, with its **positions removed** (the same run as station 2's) or its "
        "**tokens shuffled**: either each token keeps its own position (the token embedding rows and "
        "their positions move together — GPT-2's position vectors, or the position ids a rotary model "
        "turns q and k by) or the positions count up in the new order, as if the shuffled text had been "
        "typed. The **causal mask always follows the new order**: the token in slot t sees slots ≤ t, "
        "whatever position it carries — so a token that keeps position 7 but sits in slot 0 sees nothing, "
        "and a rotary model meets keys from 'later' positions, which it never did in training."
    )
    _link_to_positions()
    mode = st.radio(
        "Change", MODES, format_func=MODE_HELP.get, **state.persist("pos_exp_mode", SHUFFLED_KEPT)
    )
    try:
        ids, pieces = prompt_ids(loaded, text)
        n = len(ids)
        order = _order(n, mode)
        key = (state.model_key(loaded), text, mode, order)
        result = state.kept_result(RESULT, key)
        if result is None:
            with st.spinner("Running the text as it is and changed…"):
                run = reordered(loaded, text, mode, order)
                identity = reordered(
                    loaded, text, SHUFFLED_KEPT, None, n_continue=0
                ).comparison.unchanged_check
                extra = None
                if mode == REMOVED:
                    station = state.position_effect(loaded, text)
                    extra = check_within(run.comparison.changed.logits, station.removed.logits, 0.0)
                elif mode == SHUFFLED_KEPT and order[-1] == n - 1:
                    extra = first_block_check(loaded, text, order)
            result = (run, identity, extra)
            state.keep_result(RESULT, key, result)
    except VectorLabError as e:
        st.error(str(e))
        return
    run, identity, extra = result
    carried = ["none" if p is None else str(p) for p in run.positions]
    st.dataframe(
        pd.DataFrame(
            [list(run.pieces), [str(i) for i in run.order], carried],
            index=["token", "was at", "position it carries"],
            columns=[f"slot {t}" for t in range(n)],
        )
    )
    show_comparison(run.comparison, "positions_experiment")
    left, right = st.columns(2)
    check_metric(
        "Identity check: the order as written, positions kept",
        identity,
        container=left,
        value=f"max |Δlogit| {identity.error:.2e}",
    )
    if mode == REMOVED and extra is not None:
        check_metric("Same logits as station 2's run without positions", extra, container=right)
    elif extra is not None:
        check_metric("Block 0 at the last slot: shuffled vs original", extra, container=right)
        right.caption(
            "With the last token last and every token keeping its position, block 0's attention at the "
            "last slot sums the same (token, position) pairs in another order: equal up to rounding. "
            "Deeper blocks differ, because every earlier slot now saw a different prefix."
        )
