"""Stations 1–2 maths: neighbours, PCA, the coloured pieces, sinusoids and rotary positions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core import charts
from core.embeddings import cosine_similarity_matrix, pca_2d, unit_rows
from core.errors import InputError
from core.positions import (
    learned_position_table,
    pair_angles,
    rotary_offset_check,
    rotate,
    sinusoidal,
)
from core.tokens import (
    nearest_tokens,
    neighbourhood_map,
    pieces_html,
    readable,
    tokenize_plain,
)


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 16)).astype(np.float32)


def test_nearest_tokens_match_brute_force(table):
    unit = unit_rows(table)
    strings = [f"t{i}" for i in range(len(table))]
    got = nearest_tokens(unit, 7, strings, k=5)
    sims = np.array([a @ table[7] / np.linalg.norm(a) / np.linalg.norm(table[7]) for a in table])
    sims[7] = -np.inf
    assert [n.token_id for n in got] == list(np.argsort(-sims)[:5])
    assert 7 not in [n.token_id for n in got]
    np.testing.assert_allclose([n.cosine for n in got], np.sort(sims)[::-1][:5], rtol=1e-5)
    assert nearest_tokens(unit, 7, strings, k=1, include_self=True)[0].token_id == 7


def test_nearest_tokens_bad_id(table):
    with pytest.raises(InputError, match=re.escape("Token id 999 is outside the vocabulary (0–199).")):
        nearest_tokens(unit_rows(table), 999, ["x"] * 200)


def test_pca_orders_variance_and_is_stable(table):
    coords = pca_2d(table).coords
    assert coords.shape == (200, 2)
    assert coords[:, 0].var() >= coords[:, 1].var()
    np.testing.assert_allclose(coords.mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(pca_2d(table).coords, coords)  # deterministic signs
    # Variance captured equals the top two singular values², as PCA must.
    s = np.linalg.svd(table - table.mean(0), compute_uv=False)
    np.testing.assert_allclose((coords**2).sum(0), s[:2] ** 2, rtol=1e-4)
    assert pca_2d(table[:1]).coords.shape == (1, 2)


def test_neighbourhood_map_marks_sentence_tokens(table):
    strings = [f"t{i}" for i in range(len(table))]
    points = neighbourhood_map(unit_rows(table), table, [3, 5, 3], strings, neighbours_per_token=4)
    sentence = [p for p in points if p.kind == "sentence"]
    assert [p.token_id for p in sentence] == [3, 5]
    assert len({p.token_id for p in points}) == len(points)  # no duplicates
    assert 2 < len(points) <= 2 + 8


def test_pieces_html_escapes_and_keeps_ids():
    html = pieces_html(["<b>", " x"], [10, 20])
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<br>", "")
    assert "␣x" in html and ">10<" in html and ">20<" in html


def test_readable_marks_whitespace():
    assert readable(" the\n\t") == "␣the⏎⇥"


def test_tokenize_plain_differs_between_vocabularies(tiny_gpt2, smollm2):
    text = "Tokenization differs"
    a = tokenize_plain(tiny_gpt2.tokenizer, text, "GPT-2")
    b = tokenize_plain(smollm2.tokenizer, text, "SmolLM2")
    assert "".join(a.pieces) == "".join(b.pieces) == text
    assert a.ids != b.ids


def test_sinusoidal_formula():
    pe = sinusoidal(50, 16)
    t, i = 7, 3
    assert pe[t, 2 * i] == pytest.approx(np.sin(t / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[t, 2 * i + 1] == pytest.approx(np.cos(t / 10000 ** (2 * i / 16)), abs=1e-6)
    np.testing.assert_allclose(np.diag(cosine_similarity_matrix(pe)), 1.0, atol=1e-6)
    # Nearby positions are more alike than far ones.
    sim = cosine_similarity_matrix(pe)
    assert sim[10, 11] > sim[10, 40]


def test_rotary_depends_on_offset_only():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=16), rng.normal(size=16)
    inv_freq = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
    check = rotary_offset_check(q, k, inv_freq, [(3, 1), (13, 11), (103, 101), (10, 1)])
    assert check.offsets == (2, 2, 2, 9)
    assert max(check.dots[:3]) - min(check.dots[:3]) < 1e-9
    assert abs(check.dots[3] - check.dots[0]) > 1e-3
    # Rotation keeps length and position 0 is the identity.
    assert np.linalg.norm(rotate(q, 37, inv_freq)) == pytest.approx(np.linalg.norm(q))
    np.testing.assert_allclose(rotate(q, 0, inv_freq), q)
    assert pair_angles(np.arange(4), inv_freq).shape == (4, 8)


def test_learned_position_table_is_wpe(tiny_gpt2):
    table = learned_position_table(tiny_gpt2.model, 10)
    np.testing.assert_array_equal(table, tiny_gpt2.model.transformer.wpe.weight[:10].detach().numpy())


def test_heatmap_spec_holds_every_cell_with_labels():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    spec = charts.heatmap(m, ["a", "a"], ["x", "y", "z"], row_title="token", col_title="dim").to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert len(rows) == 6
    assert {r["token"] for r in rows} == {"0:a", "1:a"}  # repeated tokens stay distinct
    assert sorted(r["value"] for r in rows) == list(range(6))
    assert spec["mark"]["type"] == "rect"


def test_heatmap_refuses_huge_matrices():
    with pytest.raises(ValueError, match=re.escape("1000×1000 cells is too many to draw")):
        charts.heatmap(np.zeros((1000, 1000)))


def test_bars_and_map_specs():
    spec = charts.bars(["a", "b"], [0.7, 0.2], highlight=[True, False], value_title="p").to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert [r["p"] for r in rows] == [0.7, 0.2] and [r["kept"] for r in rows] == [True, False]


def test_charts_export_to_svg_and_png_offline():
    chart = charts.heatmap(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], title="identity")
    svg = charts.to_svg(chart)
    assert svg.lstrip().startswith("<svg") and "identity" in svg
    assert f'width="{charts.EXPORT_WIDTH}' in svg or "width=" in svg
    png = charts.to_png(chart)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # "container" widths become concrete for export, nested specs included.
    spec = charts._concrete_widths({"width": "container", "layer": [{"width": "container"}]})
    assert spec == {"width": charts.EXPORT_WIDTH, "layer": [{"width": charts.EXPORT_WIDTH}]}


def test_csv_and_npz_exports_round_trip():
    import io

    from core.export import to_csv_bytes, to_npz_bytes

    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    csv = to_csv_bytes(m, ["r0", "r1"], ["a", "b", "c"]).decode()
    assert csv.splitlines()[0] == ",a,b,c" and csv.splitlines()[2] == "r1,3.0,4.0,5.0"
    cube = np.arange(24).reshape(2, 3, 4)
    assert len(to_csv_bytes(cube).decode().strip().splitlines()) == 1 + 6
    loaded = np.load(io.BytesIO(to_npz_bytes(cube=cube, m=m)))
    np.testing.assert_array_equal(loaded["cube"], cube)
    np.testing.assert_array_equal(loaded["m"], m)
