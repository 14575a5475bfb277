"""Stations 1–2 maths: neighbours, PCA, the coloured pieces, sinusoids and rotary positions."""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.inspection.positions import (
    block_input_check,
    learned_position_table,
    mlp_width,
    order_effect,
    pair_angles,
    position_effect,
    positions_removed,
    rotary_offset_check,
    rotate,
    sinusoidal,
)
from core.inspection.tokens import (
    nearest_tokens,
    neighbourhood_map,
    readable,
    tokenize_plain,
    vocab_strings,
)
from core.retrieval.embeddings import (
    cosine_reduction_length,
    cosine_similarity_matrix,
    cosines_to_rows,
    pca_2d,
    row_norms,
    unit_rows,
)
from core.tolerance import EPS64, CheckResult, check_close, log_softmax_tolerance
from core.views import charts
from core.views.colours import probability_colour, probability_gradient
from core.views.token_html import pieces_html


def assert_passes(check: CheckResult) -> None:
    assert check.passed, check


TEXT_POS = "The quick brown fox jumps over the lazy dog, and then it naps."


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 16)).astype(np.float32)


def test_nearest_tokens_match_brute_force(table):
    norms = row_norms(table)
    strings = [f"t{i}" for i in range(len(table))]
    got = nearest_tokens(table, norms, 7, strings, k=5)
    sims = np.array([a @ table[7] / np.linalg.norm(a) / np.linalg.norm(table[7]) for a in table])
    sims[7] = -np.inf
    assert [n.token_id for n in got] == list(np.argsort(-sims)[:5])
    assert 7 not in [n.token_id for n in got]
    # float32 cosines (a dot product and two lengths over d = 16 terms) against float64 ones.
    expected = np.sort(sims)[::-1][:5]
    cosines = [n.cosine for n in got]
    assert_passes(check_close(cosines, expected, reduction_length=cosine_reduction_length(16)))
    assert nearest_tokens(table, norms, 7, strings, k=1, include_self=True)[0].token_id == 7


def test_cosines_to_rows_are_the_cosines_of_unit_rows(table):
    # The same numbers as scaling every row to length 1 first, without the scaled copy; zero rows and
    # a zero query score 0 (unit_rows leaves a zero row at zero), one query or several.
    table = table.copy()
    table[11] = 0.0
    norms = row_norms(table)
    assert norms.dtype == np.float32 and norms.shape == (len(table),)
    assert_passes(check_close(norms, np.linalg.norm(table.astype(np.float64), axis=1), reduction_length=16))
    unit = unit_rows(table.astype(np.float64))
    queries = table[[3, 11, 7]]
    got = cosines_to_rows(table, norms, queries)  # [3, V]
    assert got.shape == (3, len(table)) and got.dtype == np.float32
    assert_passes(check_close(got, unit[[3, 11, 7]] @ unit.T, reduction_length=cosine_reduction_length(16)))
    assert not got[1].any() and not got[:, 11].any()
    one = cosines_to_rows(table, norms, queries[2])  # one query: a matrix-vector product, other rounding
    assert one.shape == (len(table),)
    assert_passes(check_close(one, got[2], reduction_length=cosine_reduction_length(16)))


def test_nearest_tokens_bad_id(table):
    with pytest.raises(InputError, match=re.escape("Token id 999 is outside the vocabulary (0–199).")):
        nearest_tokens(table, row_norms(table), 999, ["x"] * 200)


def test_pca_orders_variance_and_is_stable(table):
    coords = pca_2d(table).coords
    assert coords.shape == (200, 2)
    assert coords[:, 0].var() >= coords[:, 1].var()
    # Centred data projects to coordinates of mean 0 (float64 sums over 200 rows of d = 16 products).
    assert_passes(check_close(coords.mean(0), [0.0, 0.0], 200 * 16, reference=coords, eps=EPS64))
    np.testing.assert_array_equal(pca_2d(table).coords, coords)  # deterministic signs
    # Variance captured equals the top two singular values², as PCA must (both float64, N·d terms).
    centred = table.astype(np.float64) - table.astype(np.float64).mean(0)
    s = np.linalg.svd(centred, compute_uv=False)
    assert_passes(check_close((coords**2).sum(0), s[:2] ** 2, table.size, eps=EPS64))
    assert pca_2d(table[:1]).coords.shape == (1, 2)


def test_neighbourhood_map_marks_sentence_tokens(table):
    strings = [f"t{i}" for i in range(len(table))]
    points = neighbourhood_map(table, row_norms(table), [3, 5, 3], strings, neighbours_per_token=4)
    sentence = [p for p in points if p.kind == "sentence"]
    assert [p.token_id for p in sentence] == [3, 5]
    assert len({p.token_id for p in points}) == len(points)  # no duplicates
    assert 2 < len(points) <= 2 + 8


def test_pieces_html_escapes_and_keeps_ids():
    html = pieces_html(["<b>", " x"], [10, 20])
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<br>", "")
    assert "␣x" in html and ">10<" in html and ">20<" in html


def test_probability_colours_follow_one_hue_interpolation():
    """Red at p = 0, yellow at 0.5, green at 1, clipped outside; legends use the same colours."""
    assert [probability_colour(p) for p in (-1, 0, 0.25, 0.5, 1, 2)] == [
        "hsl(0, 85%, 82%)",
        "hsl(0, 85%, 82%)",
        "hsl(30, 85%, 82%)",
        "hsl(60, 85%, 82%)",
        "hsl(120, 85%, 82%)",
        "hsl(120, 85%, 82%)",
    ]
    gradient = probability_gradient(3)
    assert gradient == f"linear-gradient(to right, {', '.join(probability_colour(p) for p in (0, 0.5, 1))})"


def test_readable_marks_whitespace():
    assert readable(" the\n\t") == "␣the⏎⇥"


@pytest.mark.slow
def _decoded_one_by_one(tokenizer) -> list[str]:
    return [readable(tokenizer.decode([i])) for i in range(len(tokenizer))]


def test_vocab_strings_are_each_id_decoded(tokenizer, smollm2):
    # The backend's batch decode stands in for a Python decode per id only where they agree: every id
    # of GPT-2's and SmolLM2's vocabularies (byte-level pieces, special and added tokens included).
    from core.inspection.tokens import _plain_backend_decode

    for tok in (tokenizer, smollm2.tokenizer):
        assert _plain_backend_decode(tok)
        strings = vocab_strings(tok)
        assert len(strings) == len(tok)
        assert strings == _decoded_one_by_one(tok)


def test_vocab_strings_keep_the_tokenizers_own_decoding(tokenizer, monkeypatch):
    # Where decode does more than the backend (spaces cleaned up, a subclass's own _decode), each id
    # is decoded through it.
    from core.inspection.tokens import _plain_backend_decode

    cleaned = copy.deepcopy(tokenizer)
    cleaned.clean_up_tokenization_spaces = True
    cleaned.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    assert not _plain_backend_decode(cleaned)
    strings = vocab_strings(cleaned)
    assert strings == _decoded_one_by_one(cleaned)
    assert strings != vocab_strings(tokenizer)  # the clean-up changed some pieces (" ." → ".")

    class Shouting(type(tokenizer)):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper()

    loud = copy.deepcopy(tokenizer)
    loud.__class__ = Shouting
    assert not _plain_backend_decode(loud)
    assert vocab_strings(loud) == [s.upper() for s in vocab_strings(tokenizer)]


def test_tokenize_plain_differs_between_vocabularies(tiny_gpt2, smollm2):
    text = "Tokenization differs"
    a = tokenize_plain(tiny_gpt2.tokenizer, text, "GPT-2")
    b = tokenize_plain(smollm2.tokenizer, text, "SmolLM2")
    assert "".join(a.pieces) == "".join(b.pieces) == text
    assert a.ids != b.ids


def test_sinusoidal_formula():
    pe = sinusoidal(50, 16)
    t, i = 7, 3
    angle = t / 10000 ** (2 * i / 16)
    # The table is float32: each entry is a float64 sine or cosine rounded once.
    assert_passes(check_close(pe[t, 2 * i : 2 * i + 2], [np.sin(angle), np.cos(angle)], 1, reference=1.0))
    assert_passes(check_close(np.diag(cosine_similarity_matrix(pe)), np.ones(50), reduction_length=16))
    # Nearby positions are more alike than far ones.
    sim = cosine_similarity_matrix(pe)
    assert sim[10, 11] > sim[10, 40]


def test_rotary_depends_on_offset_only():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=16), rng.normal(size=16)
    inv_freq = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
    check = rotary_offset_check(q, k, inv_freq, [(3, 1), (13, 11), (103, 101), (10, 1)])
    assert check.offsets == (2, 2, 2, 9)
    assert_passes(check.spread(2))  # equal offsets: equal dots, up to float64 rounding
    other_offset = CheckResult(error=abs(check.dots[3] - check.dots[0]), tolerance=check.tolerance)
    assert not other_offset.passed and other_offset.ratio > 1e6  # another offset: another dot
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
    assert (
        spec["encoding"]["x"]["field"] == "p"
        and spec["encoding"]["color"]["condition"]["test"] == "datum.kept"
    )
    # The token map: one dot per point, sentence tokens labelled in bold, the others plainly.
    points = pd.DataFrame(
        {
            "x": [0.0, 1.0, 2.0],
            "y": [1.0, 0.0, 2.0],
            "text": ["a", "b", "c"],
            "kind": ["sentence", "neighbour", "neighbour"],
            "anchor": ["a", "a", "a"],
        }
    )
    spec = charts.token_map(points, title="map").to_dict()
    assert len(next(iter(spec["datasets"].values()))) == 3
    dots, plain, bold = spec["layer"]
    assert dots["mark"]["type"] == "circle" and dots["encoding"]["shape"]["field"] == "kind"
    assert plain["transform"] == [{"filter": "datum.kind != 'sentence'"}]
    assert (
        bold["transform"] == [{"filter": "datum.kind == 'sentence'"}] and bold["mark"]["fontWeight"] == "bold"
    )
    # The rotary path: points joined in position order.
    circle = pd.DataFrame({"position": range(5), "x": np.cos(np.arange(5)), "y": np.sin(np.arange(5))})
    spec = charts.path_2d(circle, title="pair").to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["line", "circle"]
    assert spec["layer"][0]["encoding"]["order"]["field"] == "position"
    assert len(next(iter(spec["datasets"].values()))) == 5


def test_charts_export_to_svg_and_png_offline():
    chart = charts.heatmap(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], title="identity")
    svg = charts.to_svg(chart)
    assert svg.lstrip().startswith("<svg") and "identity" in svg
    # The page-wide ("container") width becomes EXPORT_WIDTH pixels of plot, plus the axes.
    width = int(re.search(r'<svg[^>]*\swidth="(\d+)', svg).group(1))
    assert charts.EXPORT_WIDTH <= width < charts.EXPORT_WIDTH + 200
    png = charts.to_png(chart)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # "container" widths become concrete for export, nested specs included.
    spec = charts._concrete_widths({"width": "container", "layer": [{"width": "container"}]})
    assert spec == {"width": charts.EXPORT_WIDTH, "layer": [{"width": charts.EXPORT_WIDTH}]}


def test_csv_and_npz_exports_round_trip():
    import io

    from core.views.export import to_csv_bytes, to_npz_bytes

    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    csv = to_csv_bytes(m, ["r0", "r1"], ["a", "b", "c"]).decode()
    assert csv.splitlines()[0] == ",a,b,c" and csv.splitlines()[2] == "r1,3.0,4.0,5.0"
    cube = np.arange(24).reshape(2, 3, 4)
    assert len(to_csv_bytes(cube).decode().strip().splitlines()) == 1 + 6
    loaded = np.load(io.BytesIO(to_npz_bytes(cube=cube, m=m)))
    np.testing.assert_array_equal(loaded["cube"], cube)
    np.testing.assert_array_equal(loaded["m"], m)


# --------------------------------------------------------------------------- positions removed

PERMUTED = ("The dog bites the man. The", "The man bites the dog. The")  # same tokens, same last token


def test_positions_kept_run_is_the_normal_run(tiny_model):
    from core.inspection.trace import run_trace

    effect = position_effect(tiny_model, TEXT_POS)
    trace = run_trace(tiny_model, TEXT_POS)
    np.testing.assert_array_equal(effect.kept.logits, trace.last_logits)  # the same pass, bit for bit
    assert effect.kept.token_ids.tolist() == trace.token_ids.tolist()
    assert effect.kl_nats > 0  # removing the positions moves the prediction
    assert not np.array_equal(effect.removed.logits, effect.kept.logits)


def test_gpt2_without_positions_reads_the_token_embeddings(tiny_gpt2):
    from core.inspection.trace import run_trace

    with positions_removed(tiny_gpt2):
        trace = run_trace(tiny_gpt2, TEXT_POS)
    assert np.all(trace.position_vectors == 0)
    np.testing.assert_array_equal(trace.block_input, trace.token_embeddings)
    assert block_input_check(trace).error == 0
    # The hooks are gone afterwards: the normal run adds the position table again.
    assert np.any(run_trace(tiny_gpt2, TEXT_POS).position_vectors != 0)


def test_rotary_without_positions_leaves_q_and_k_unrotated_and_the_mask_causal(tiny_llama):
    from core.inspection.trace import run_trace

    with positions_removed(tiny_llama):
        trace = run_trace(tiny_llama, TEXT_POS)
    np.testing.assert_array_equal(trace.q, trace.q_pre_rotary)  # position 0: the identity rotation
    np.testing.assert_array_equal(trace.k, trace.k_pre_rotary)
    # Still one causal sequence: token t attends to every token ≤ t (not only to itself).
    A = trace.attentions
    assert np.all(np.triu(A, k=1) == 0)
    assert np.all(A[:, :, 1:, 0] > 0)
    normal = run_trace(tiny_llama, TEXT_POS)
    assert not np.array_equal(normal.q[:, :, 1:], normal.q_pre_rotary[:, :, 1:])


def test_positions_removed_only_affects_its_own_thread(tiny_model):
    import threading

    normal = position_effect(tiny_model, TEXT_POS).kept.logits
    seen = {}
    with positions_removed(tiny_model):
        worker = threading.Thread(target=lambda: seen.update(run=position_effect(tiny_model, TEXT_POS)))
        worker.start()
        worker.join()
    np.testing.assert_array_equal(seen["run"].kept.logits, normal)


def test_without_positions_block_0_is_blind_to_prefix_order_but_the_model_is_not(tiny_model):
    order = order_effect(tiny_model, *PERMUTED)
    assert order.same_tokens and order.same_last_token and order.prefix_permuted
    # Block 0 at the last token: with positions the two orders differ; without, only by rounding
    # (one attention step sums the same earlier tokens in another order).
    assert not order.first_block_kept.passed
    assert_passes(order.first_block_removed)
    # Yet the prediction after the last token still depends on the order: block 1 reads block 0's
    # outputs at the earlier tokens, and each of those saw a different prefix (the causal mask).
    a, b = order.a.removed.logits, order.b.removed.logits
    info, T = tiny_model.info, len(order.a.removed.token_ids)
    n_ops = info.n_layer * (T + 2 * info.d_model + mlp_width(tiny_model)) + info.d_model  # the whole path
    differ = check_close(a, b, reduction_length=n_ops, reference=np.maximum(np.abs(a), np.abs(b)))
    assert differ.ratio > 10, differ
    assert order.kl_removed > 0 and order.kl_kept > 0


def test_order_effect_needs_both_texts(tiny_gpt2):
    with pytest.raises(
        InputError, match=re.escape("Type a text into both A and B to compare their word order.")
    ):
        order_effect(tiny_gpt2, "The dog bites the man.", "  ")


@pytest.mark.slow
def test_smollm2_without_positions_still_tells_dog_bites_man_from_man_bites_dog(smollm2):
    order = order_effect(smollm2, *PERMUTED)
    assert order.prefix_permuted
    assert_passes(order.first_block_removed)
    assert not order.first_block_kept.passed
    # The two orders still get different next tokens, by far more than rounding.
    assert order.a.removed.top[0].token_id != order.b.removed.top[0].token_id
    tolerance = log_softmax_tolerance(order.a.removed.logits, reduction_length=smollm2.info.d_model)
    assert np.abs(order.a.removed.log_probs - order.b.removed.log_probs).max() > 100 * tolerance
    # With positions kept, the run is the model's ordinary one.
    effect = position_effect(smollm2, "The capital of France is")
    assert effect.kept.top[0].text.strip() == "Paris"
