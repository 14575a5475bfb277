"""Sentence embeddings: MiniLM and the mean-pooled LM embedder, and the analysis helpers (similarity,
PCA, k-means, zero-shot, "more like this") and their charts, checked by invariants."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from core.errors import InputError, ModelLoadError, SettingsError
from core.retrieval.embeddings import (
    PairScore,
    compare_pairs,
    cosine_similarity_matrix,
    kmeans,
    label_prompts,
    labels_from_text,
    more_like_this,
    most_similar_pairs,
    pairs_from_lines,
    pca_2d,
    sentences_from_lines,
    zero_shot_classify,
    zero_shot_texts,
)
from core.retrieval.encoders import (
    Embedder,
    EncoderSettings,
    LMEmbedder,
    lm_mean_pool_embeddings,
    load_sentence_embedder,
)
from core.retrieval.maps import EmbeddingMap
from core.tolerance import EPS64, CheckResult, check_close, float64_tolerance
from core.views.embedding_charts import embedding_scatter, pair_comparison_chart, similarity_heatmap
from core.views.search import search_map_chart
from tests.fixtures_search import _tiny_lm_master, minilm, tiny_lm  # noqa: F401  (fixtures)

TOPICS = {
    "sport": [
        "The striker scored twice in the second half.",
        "Our team won the basketball final last night.",
        "She ran the marathon in under three hours.",
    ],
    "cooking": [
        "Simmer the onions in butter until golden.",
        "Knead the dough and let it rise for an hour.",
        "Season the soup with salt, pepper and fresh thyme.",
    ],
    "space": [
        "The telescope photographed a distant spiral galaxy.",
        "Astronauts docked with the space station today.",
        "Jupiter has dozens of moons orbiting it.",
    ],
}
SENTENCES = [s for group in TOPICS.values() for s in group]
TOPIC_OF = [topic for topic, group in TOPICS.items() for _ in group]


@pytest.fixture(scope="module")
def topic_vectors(minilm):  # noqa: F811
    return minilm.encode(SENTENCES)


def assert_passes(check: CheckResult) -> None:
    assert check.passed, check


def encoder_path(n_layer: int, d: int, d_ff: int, n_tokens: int) -> int:
    """Rounded operations along one pass of a transformer encoder: each layer reduces over the tokens
    (attention), d twice (projections) and the MLP's width; two batchings of the same text take that
    whole path with different matrix shapes."""
    return n_layer * (n_tokens + 2 * d + d_ff)


# --- MiniLM ---------------------------------------------------------------------------------------


def test_minilm_gives_unit_384d_vectors_deterministically(minilm, topic_vectors):  # noqa: F811
    assert isinstance(minilm, Embedder)
    assert (minilm.name, minilm.dimension, minilm.max_tokens) == ("all-MiniLM-L6-v2", 384, 256)
    assert topic_vectors.shape == (9, 384) and topic_vectors.dtype == np.float32
    assert_passes(check_close(np.linalg.norm(topic_vectors, axis=1), np.ones(9), reduction_length=384))
    # Encoded in a batch of 2 instead of 9 (other padding, other matrix shapes): unit vectors that
    # agree up to float32 rounding along MiniLM's 6 layers (d = 384, MLP 1536, up to 256 tokens).
    path = encoder_path(6, 384, 1536, 256)
    assert_passes(check_close(minilm.encode(SENTENCES[:2]), topic_vectors[:2], path, reference=1.0))
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences(minilm):  # noqa: F811
    a, b, c = minilm.encode(
        ["A cat is sitting on the mat.", "A kitten rests on the rug.", "Stock markets fell sharply today."]
    )
    assert a @ b > 0.5 > a @ c


def test_empty_sentences_and_bare_strings_are_rejected(minilm):  # noqa: F811
    with pytest.raises(InputError, match=re.escape("Sentence 2 is empty; type some text or remove it.")):
        minilm.encode(["fine", "   "])
    with pytest.raises(InputError, match=re.escape("Pass a list of sentences, not a single string.")):
        minilm.encode("just a string")


def test_encoder_settings_and_missing_model_fail_clearly(tmp_path):
    with pytest.raises(SettingsError, match=re.escape("batch_size must be at least 1, got 0; use e.g. 32.")):
        EncoderSettings(batch_size=0)
    missing = tmp_path / "nope"
    with pytest.raises(
        ModelLoadError,
        match=re.escape(f"No sentence-transformers model folder at {missing}; check model_path."),
    ):
        load_sentence_embedder(EncoderSettings(model_path=str(missing)))


# --- the LM embedder ------------------------------------------------------------------------------


def test_lm_mean_pool_is_the_masked_mean_of_hidden_states(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    texts = ["Hello vectors", "A much longer sentence with many more tokens in it"]
    pooled = lm_mean_pool_embeddings(model, tokenizer, texts, normalize=False)  # [2, 32]
    assert pooled.shape == (2, 32)
    for row, text in enumerate(texts):  # one at a time, no padding at all
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]  # [T, 32]
        # The same pass, batched with padding: rounding along the tiny model's path, then a T-term mean.
        path = encoder_path(2, 32, 128, ids.shape[1]) + ids.shape[1]
        assert_passes(check_close(pooled[row], hidden.mean(0).numpy(), path, reference=hidden.numpy()))


def test_lm_layer_zero_is_token_plus_position_embeddings(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    ids = torch.tensor(tokenizer("Embeddings at layer zero")["input_ids"])
    with torch.no_grad():
        summed = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(len(ids)))  # [T, 32]
        expected = summed.mean(0)
    got = lm_mean_pool_embeddings(model, tokenizer, ["Embeddings at layer zero"], layer=0, normalize=False)
    # One addition per token, then a mean over the T tokens.
    n = 1 + len(ids)
    assert_passes(check_close(got[0], expected.numpy(), n, reference=summed.numpy()))


def test_lm_embedder_batches_equal_single_sentences_and_leave_the_tokenizer_alone(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    embedder = LMEmbedder(model, tokenizer, batch_size=3)
    assert isinstance(embedder, Embedder) and embedder.dimension == 32
    batched = embedder.encode(SENTENCES[:5])
    singles = np.concatenate([embedder.encode([s]) for s in SENTENCES[:5]])
    assert_passes(check_close(batched, singles, encoder_path(2, 32, 128, 32) + 32, reference=1.0))
    assert_passes(check_close(np.linalg.norm(batched, axis=1), np.ones(5), reduction_length=32))
    assert tokenizer.pad_token is None  # padding was done by hand, not by changing the tokenizer


def test_compare_pairs_scores_every_pair_under_every_embedder(minilm, tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    embedders = {"MiniLM": minilm, "tiny LM": LMEmbedder(model, tokenizer)}
    pairs = [
        ("The same words.", "The same words."),
        ("A cat sleeps.", "A kitten naps."),
        ("A cat.", "Tax law."),
    ]
    scores = compare_pairs(embedders, pairs)
    assert [(p.first, p.second) for p in scores] == pairs
    assert all(set(p.scores) == {"MiniLM", "tiny LM"} for p in scores)
    # A sentence against itself: the cosine of a unit vector with itself, a d-term sum.
    assert_passes(check_close(scores[0].scores["MiniLM"], 1.0, reduction_length=384))
    assert_passes(check_close(scores[0].scores["tiny LM"], 1.0, reduction_length=32))
    assert scores[1].scores["MiniLM"] > scores[2].scores["MiniLM"]
    with pytest.raises(InputError, match=re.escape("Add at least one sentence pair to compare.")):
        compare_pairs(embedders, [])


# --- analysis helpers -----------------------------------------------------------------------------


def test_cosine_matrix_is_symmetric_with_unit_diagonal(topic_vectors):
    sims = cosine_similarity_matrix(topic_vectors)
    assert sims.shape == (9, 9)
    # Float64 dot products of unit rows over d = 384 terms: symmetric, 1 on the diagonal, and the
    # cosine of every pair computed one at a time.
    assert_passes(check_close(sims, sims.T, reduction_length=384, reference=1.0, eps=EPS64))
    assert_passes(check_close(np.diag(sims), np.ones(9), reduction_length=384, eps=EPS64))
    x = topic_vectors.astype(np.float64)
    pairwise = [[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in x] for a in x]
    assert_passes(check_close(sims, pairwise, reduction_length=384, reference=1.0, eps=EPS64))
    # Same-topic sentences are more alike than different-topic ones, on average.
    same = np.equal.outer(TOPIC_OF, TOPIC_OF) & ~np.eye(9, dtype=bool)
    assert sims[same].mean() > sims[~np.equal.outer(TOPIC_OF, TOPIC_OF)].mean() + 0.1
    scaled = cosine_similarity_matrix(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(scaled, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_pca_matches_the_covariance_eigenvectors_with_fixed_signs(topic_vectors):
    projection = pca_2d(topic_vectors)
    assert projection.coords.shape == (9, 2)
    n, d = topic_vectors.shape
    coords = projection.coords
    assert_passes(check_close(coords.mean(0), [0.0, 0.0], n * d, reference=coords, eps=EPS64))
    gram = projection.components @ projection.components.T
    assert_passes(check_close(gram, np.eye(2), reduction_length=d, eps=EPS64))
    centred = topic_vectors.astype(np.float64) - topic_vectors.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    top = eigenvectors[:, ::-1][:, :2].T  # [2, d], largest first
    # An eigenvector is as precise as rounding of the matrix allows, divided by its eigenvalue's gap.
    gap = min(eigenvalues[-1] - eigenvalues[-2], eigenvalues[-2] - eigenvalues[-3])
    tolerance = float64_tolerance(eigenvalues[-1] / gap, reduction_length=n * d)
    for axis in range(2):
        assert abs(abs(projection.components[axis] @ top[axis]) - 1.0) <= tolerance
        assert projection.components[axis][np.argmax(np.abs(projection.components[axis]))] > 0
    evr = projection.explained_variance_ratio
    assert 1 >= evr[0] >= evr[1] > 0
    assert evr[0] == pytest.approx(eigenvalues[-1] / eigenvalues.sum(), rel=1e-6)
    assert_passes(check_close(projection.project(topic_vectors), coords, d, reference=coords, eps=EPS64))
    # Flipping the data flips the map, never the axes: the sign rule makes it reproducible.
    flipped = pca_2d(-topic_vectors).coords
    reference = np.abs(coords).max() * eigenvalues[-1] / gap  # coords move with the eigenvectors
    assert_passes(check_close(flipped, -coords, n * d, reference=reference, eps=EPS64))


def test_pca_of_one_point_and_of_a_line():
    single = pca_2d(np.ones((1, 4)))
    np.testing.assert_allclose(single.coords, [[0.0, 0.0]])
    line = pca_2d(np.outer(np.arange(5.0), [1.0, 2.0, 2.0]))
    assert line.explained_variance_ratio[0] == pytest.approx(1.0)
    np.testing.assert_allclose(line.coords[:, 0], (np.arange(5.0) - 2) * 3)
    with pytest.raises(InputError, match=re.escape("PCA needs at least one vector")):
        pca_2d(np.zeros((0, 3)))


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(scale=0.5, size=(20, 2)) for c in centres])
    truth = np.repeat([0, 1, 2], 20)
    result = kmeans(points, k=3, seed=0)
    assert result.labels.shape == (60,) and result.centroids.shape == (3, 2)
    for blob in range(3):  # each blob is exactly one cluster
        assert len(set(result.labels[truth == blob])) == 1
    assert len(set(result.labels)) == 3
    again = kmeans(points, k=3, seed=0)
    np.testing.assert_array_equal(again.labels, result.labels)
    expected_inertia = ((points - result.centroids[result.labels]) ** 2).sum()
    assert result.inertia == pytest.approx(expected_inertia)
    one = kmeans(points, k=1)
    np.testing.assert_allclose(one.centroids[0], points.mean(0))
    assert kmeans(points, k=2).inertia < one.inertia


def test_kmeans_groups_minilm_sentences_by_topic(topic_vectors):
    labels = kmeans(topic_vectors, k=3, seed=0).labels
    for topic in TOPICS:
        assert len({labels[i] for i, t in enumerate(TOPIC_OF) if t == topic}) == 1
    assert len(set(labels)) == 3


def test_kmeans_rejects_impossible_k(topic_vectors):
    with pytest.raises(
        InputError, match=re.escape("k must be between 1 and the number of items (9); got 10.")
    ):
        kmeans(topic_vectors, k=10)


def test_zero_shot_picks_the_nearest_label(minilm, topic_vectors):  # noqa: F811
    predictions = zero_shot_texts(minilm, SENTENCES, ["sport", "cooking", "outer space"], "This is about {}.")
    assert [p.label for p in predictions] == [t if t != "space" else "outer space" for t in TOPIC_OF]
    for p in predictions:
        assert set(p.scores) == {"sport", "cooking", "outer space"}
        assert p.score == max(p.scores.values()) == p.scores[p.label]
    with pytest.raises(InputError, match=re.escape("Got 2 labels but 3 label embeddings.")):
        zero_shot_classify(topic_vectors, topic_vectors[:3], ["a", "b"])
    with pytest.raises(
        InputError, match=re.escape("The label template must contain {} where the label goes")
    ):
        zero_shot_texts(minilm, SENTENCES, ["x"], template="no slot")


def test_more_like_this_excludes_the_item_and_sorts_by_similarity(topic_vectors):
    recs = more_like_this(topic_vectors, item=0, k=2)
    assert [r.index for r in recs] and 0 not in [r.index for r in recs]
    assert {r.index for r in recs} == {1, 2}  # the other two sport sentences
    assert recs[0].score >= recs[1].score
    sims = cosine_similarity_matrix(topic_vectors)[0]
    assert recs[0].score == pytest.approx(sims[recs[0].index])
    assert len(more_like_this(topic_vectors, item=3, k=50)) == 8
    with pytest.raises(InputError, match=re.escape("Item 9 does not exist; choose one of 0..8.")):
        more_like_this(topic_vectors, item=9)


# --- charts ---------------------------------------------------------------------------------------


def test_heatmap_spec_has_a_cell_and_a_label_per_pair(topic_vectors):
    spec = similarity_heatmap(cosine_similarity_matrix(topic_vectors[:3]), SENTENCES[:3]).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect", "text"]
    values = next(iter(spec["datasets"].values()))
    assert len(values) == 9
    diagonal = [v["similarity"] for v in values if v["row"] == v["col"]]
    assert_passes(check_close(diagonal, np.ones(3), reduction_length=384, eps=EPS64))
    with pytest.raises(
        InputError, match=re.escape("The similarity matrix is (3, 3) but there are 2 labels.")
    ):
        similarity_heatmap(np.eye(3), ["a", "b"])


def test_scatter_colours_points_by_cluster(topic_vectors):
    coords = pca_2d(topic_vectors).coords
    labels = kmeans(topic_vectors, k=3).labels
    spec = embedding_scatter(coords, SENTENCES, labels).to_dict()
    points, names = spec["layer"]
    assert points["mark"]["type"] == "circle" and points["encoding"]["color"]["field"] == "cluster"
    assert names["mark"]["type"] == "text"
    values = next(iter(spec["datasets"].values()))
    assert [v["cluster"] for v in values] == [str(label) for label in labels]
    with pytest.raises(InputError, match=re.escape("Got 2 group ids for 9 points.")):
        embedding_scatter(coords, SENTENCES, [0, 1])


def test_search_map_chart_adds_the_query_point(topic_vectors):
    projection = pca_2d(topic_vectors)
    emap = EmbeddingMap(
        coords=projection.coords,
        ids=[f"c{i}" for i in range(9)],
        doc_names=TOPIC_OF,
        chunk_indices=list(range(9)),
        texts=SENTENCES,
        projection=projection,
        query="a question",
        query_coords=projection.project(topic_vectors[:1])[0],
    )
    spec = search_map_chart(emap, highlight_ids=["c0", "c1", "not-on-map"]).to_dict()
    chunks, query = spec["layer"]
    assert chunks["encoding"]["color"]["field"] == "document"
    assert query["mark"]["shape"] == "diamond"
    datasets = list(spec["datasets"].values())
    assert sum(v["retrieved"] for v in datasets[0]) == 2
    assert datasets[1][0]["text"] == "a question"


def test_pair_chart_has_one_bar_per_pair_and_encoder():
    scores = [
        PairScore("a", "b", {"MiniLM": 0.9, "LM": 0.95}),
        PairScore("c", "d", {"MiniLM": -0.1, "LM": 0.8}),
    ]
    spec = pair_comparison_chart(scores).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert [(v["pair"][:2], v["encoder"], v["cosine"]) for v in values] == [
        ("1.", "MiniLM", 0.9),
        ("1.", "LM", 0.95),
        ("2.", "MiniLM", -0.1),
        ("2.", "LM", 0.8),
    ]
    assert spec["encoding"]["x"]["scale"]["domain"] == [-0.1, 1.0]  # negative cosines stay in view
    with pytest.raises(InputError, match=re.escape("There are no sentence pairs to chart.")):
        pair_comparison_chart([])


# --- reading what the user typed ------------------------------------------------------------------


def test_sentences_are_read_one_per_line_with_caps():
    parsed = sentences_from_lines(
        "  first  \n\n   \nsecond\n" + "x" * 600 + "\nfourth", max_items=3, max_chars=500
    )
    assert parsed.sentences == ["first", "second", "x" * 500]
    assert (parsed.n_dropped, parsed.n_shortened) == (1, 1)
    message = "Type at least 2 sentences, one per line, to compare them (found 1; empty lines are ignored)."
    with pytest.raises(InputError, match=re.escape(message)):
        sentences_from_lines("only one\n\n  ")


def test_labels_and_label_prompts():
    assert labels_from_text(" sports, cooking,,\ncomputers , sports ") == ["sports", "cooking", "computers"]
    assert labels_from_text(" , ") == []
    assert label_prompts(["tea", "{x}"], "About {}.") == ["About tea.", "About {x}."]
    with pytest.raises(
        InputError, match=re.escape("The label template must contain {} where the label goes")
    ):
        label_prompts(["tea"], "no placeholder")


def test_sentence_pairs_are_read_as_first_bar_second():
    assert pairs_from_lines("a | b\n\n  c|d  ") == [("a", "b"), ("c", "d")]
    message = "Line 2 is not a pair: write two sentences separated by one '|'"
    for bad in ["a | b\nno separator", "a | b\nx | y | z", "a | b\n | y"]:
        with pytest.raises(InputError, match=re.escape(message)):
            pairs_from_lines(bad)
    with pytest.raises(InputError, match=re.escape("Type at least one pair of sentences")):
        pairs_from_lines("  \n")
    with pytest.raises(InputError, match=re.escape("3 pairs is more than 2; remove some lines.")):
        pairs_from_lines("a|b\nc|d\ne|f", max_pairs=2)


def test_most_similar_pairs_lists_each_pair_once_best_first(topic_vectors):
    sim = cosine_similarity_matrix(topic_vectors)
    pairs = most_similar_pairs(sim)
    n = len(SENTENCES)
    assert len(pairs) == n * (n - 1) // 2
    assert all(p.first < p.second for p in pairs)
    assert [p.cosine for p in pairs] == sorted((p.cosine for p in pairs), reverse=True)
    best = pairs[0]
    assert best.cosine == pytest.approx(np.max(sim - 2 * np.eye(n)))
    assert TOPIC_OF[best.first] == TOPIC_OF[best.second]
