"""Charts built once per input and sent as Vega-Lite specs (core.views.vega): the memo never hands out a
chart for other numbers, and the spec sent is the one Altair validates."""

from __future__ import annotations

import dataclasses

import altair as alt
import numpy as np
import pandas as pd
import pytest

from core.views import charts
from core.views.vega import clear_memo, digest, memoized_chart, to_vega_lite


@pytest.fixture(autouse=True)
def _fresh_memo():
    clear_memo()
    yield
    clear_memo()


def test_digest_reads_content_type_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert digest(a) == digest(a.copy())
    assert digest(a) != digest(a.reshape(4, 3))  # same bytes, other shape
    assert digest(a) != digest(a.astype(np.float64))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(100))  # one ulp in one cell
    assert digest(a) != digest(b)
    assert digest(a[:, ::2]) == digest(np.ascontiguousarray(a[:, ::2]))  # views read by value
    assert digest(1) != digest(1.0) != digest("1")
    assert digest(x=1, y=2) == digest(y=2, x=1)
    assert digest([1, 2]) != digest((1, 2))
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    changed = frame.copy()
    changed.loc[1, "b"] = "z"
    assert digest(frame) == digest(frame.copy()) != digest(changed)


def test_digest_refuses_what_it_cannot_read():
    from core.views.vega import Undigestible

    with pytest.raises(Undigestible):
        digest(object())


def test_memo_same_inputs_same_chart_other_inputs_other_chart():
    m = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    first = charts.heatmap(m, title="t")
    assert charts.heatmap(m.copy(), title="t") is first
    assert charts.heatmap(m, title="other") is not first
    changed = m.copy()
    changed[0, 0] += 1
    other = charts.heatmap(changed, title="t")
    assert other is not first
    values = pd.DataFrame(next(iter(to_vega_lite(other)["datasets"].values())))["value"].to_numpy()
    assert values[0] == changed[0, 0]  # the new chart draws the new numbers


def test_undigestible_arguments_build_uncached():
    calls = []

    @memoized_chart
    def build(thing):
        calls.append(thing)
        return alt.Chart(pd.DataFrame({"x": [1]})).mark_point().encode(x="x:Q")

    thing = object()
    build(thing)
    build(thing)
    assert len(calls) == 2


@dataclasses.dataclass
class _Pair:
    name: str
    values: np.ndarray


def test_dataclass_arguments_are_read_by_field():
    calls = []

    @memoized_chart
    def build(pair):
        calls.append(pair)
        return alt.Chart(pd.DataFrame({"x": pair.values})).mark_point().encode(x="x:Q")

    build(_Pair("a", np.ones(3)))
    build(_Pair("a", np.ones(3)))
    build(_Pair("a", np.zeros(3)))
    assert len(calls) == 2


def test_spec_is_altairs_own_with_data_named_by_content():
    chart = charts.bars(["a", "b", "c"], [0.5, 0.25, 0.125], title="bars")
    spec = to_vega_lite(chart)
    assert to_vega_lite(chart) is spec  # converted once per chart
    plain = chart.to_dict()  # validated, data inline
    ((name, frame),) = spec["datasets"].items()
    assert spec["data"] == {"name": name}
    inline = pd.DataFrame(next(iter(plain["datasets"].values())))
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), inline, check_dtype=False)
    strip = ("data", "datasets", "config", "$schema", "usermeta")
    assert {k: v for k, v in spec.items() if k not in strip} == {
        k: v for k, v in plain.items() if k not in strip
    }
    again = to_vega_lite(charts.bars.uncached(["a", "b", "c"], [0.5, 0.25, 0.125], title="bars"))
    assert list(again["datasets"]) == [name]  # the same numbers get the same name


def test_charts_are_drawn_on_a_canvas():
    spec = to_vega_lite(charts.heatmap(np.eye(3, dtype=np.float32)))
    assert spec["usermeta"]["embedOptions"]["renderer"] == "canvas"
