"""Station 6: one vector per sentence from MiniLM — similarity, a 2-D map, k-means, zero-shot labels,
"more like this", and MiniLM against the loaded LM's mean-pooled hidden states."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.errors import VectorLabError
from core.retrieval.embeddings import (
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
)
from core.views.embedding_charts import embedding_scatter, pair_comparison_chart, similarity_heatmap
from ui import search_state, state
from ui.sidebar import render_sidebar
from ui.widgets import downloads, show_chart

MAX_ITEMS = 30  # sentences or chunks compared at once; the heatmap has MAX_ITEMS² cells
MAX_CHARS = 500  # per sentence; MiniLM reads at most 256 tokens anyway
MAX_INPUT_CHARS = 20_000
DEFAULT_SENTENCES = "\n".join(
    [
        "The football team won the championship final.",
        "The tennis player served an ace to win the match.",
        "She trained for months to run the marathon.",
        "Simmer the tomato sauce with garlic and basil.",
        "Knead the bread dough and let it rise before baking.",
        "Add salt to the boiling water before cooking the pasta.",
        "My laptop crashes when I open too many programs.",
        "Install the software update and restart your computer.",
        "The new processor makes the computer twice as fast.",
    ]
)
DEFAULT_PAIRS = "\n".join(
    [
        "A man is playing a guitar. | Someone is strumming a guitar.",
        "How do I reset my password? | I forgot my login details.",
        "The dog bit the man. | The man bit the dog.",
        "The cat sat on the mat. | Stock markets fell sharply today.",
        "Knead the dough until smooth. | The senate passed the budget.",
    ]
)

st.title("6 · Sentence & document embeddings")
st.markdown(
    "**What happens.** A sentence encoder (all-MiniLM-L6-v2) reads a whole sentence and returns one "
    "vector of 384 numbers. Two sentences are compared by the angle between their vectors, "
    "`cos(a, b) = a·b / (‖a‖ ‖b‖)`: 1 when they point the same way, near 0 when unrelated. "
    "**Why it matters.** Once meaning is a direction, grouping (k-means), labelling (nearest label "
    "vector), recommending (nearest neighbours) and search are all one operation: compare vectors."
)

render_sidebar()
search_state.init_search_state()
embedder = search_state.require_embedder()


def typed_sentences() -> tuple[list[str], list[str], np.ndarray] | None:
    """(labels, texts, vectors [N, 384]) from the text box, or None after a message."""
    text = st.text_area(
        "One sentence per line",
        height=230,
        max_chars=MAX_INPUT_CHARS,
        help=f"Empty lines are ignored; at most {MAX_ITEMS} sentences of {MAX_CHARS} characters are used.",
        **state.persist("emb_sentences", DEFAULT_SENTENCES),
    )
    try:
        parsed = sentences_from_lines(text, max_items=MAX_ITEMS, max_chars=MAX_CHARS)
    except VectorLabError as e:
        st.error(str(e))
        return None
    if parsed.n_dropped:
        st.warning(
            f"Only the first {MAX_ITEMS} sentences are compared; {parsed.n_dropped} more lines were left out."
        )
    if parsed.n_shortened:
        st.warning(f"{parsed.n_shortened} long lines were cut to their first {MAX_CHARS} characters.")
    texts = parsed.sentences
    return texts, texts, search_state.encode(tuple(texts))


def indexed_chunks() -> tuple[list[str], list[str], np.ndarray] | None:
    """(labels, texts, stored vectors) of chunks indexed on the search page, or None after a message."""
    location, client = search_state.require_store()
    collection = st.session_state[search_state.COLLECTION]
    index = search_state.require_index(client, collection)
    try:
        vectors = index.chunk_vectors()
    except VectorLabError as e:
        st.error(str(e))
        try:
            st.page_link("pages/7_search.py", label="Index documents on page 7", icon=":material/search:")
        except StreamlitAPIException:  # opened on its own, without app.py's navigation
            pass
        return None
    n = len(vectors.ids)
    rows = np.unique(np.linspace(0, n - 1, min(n, MAX_ITEMS)).round().astype(int))
    st.caption(
        f"Collection '{collection}' in {location.describe()}: {n} chunks"
        + (f"; {len(rows)} spread evenly through them are compared." if n > len(rows) else ".")
    )
    if len(rows) < 2:
        st.error("Only one chunk is indexed; index more text on page 7 to compare chunks.")
        return None
    labels = [f"{vectors.doc_names[i]} #{vectors.chunk_indices[i]}" for i in rows]
    return labels, [vectors.texts[i] for i in rows], vectors.embeddings[rows]


# ---------------------------------------------------------------- the items
st.subheader("Sentences in, vectors out")
use_chunks = st.toggle(
    "Use chunks of the documents indexed on page 7 instead",
    help="Compares stored chunk vectors from the search station's current collection.",
    **state.persist("emb_use_chunks", False),
)
items = indexed_chunks() if use_chunks else typed_sentences()

if items is not None:
    labels, texts, vectors = items
    n = len(texts)
    norms = np.linalg.norm(vectors, axis=1)
    c1, c2, c3 = st.columns(3)
    c1.metric("Items", n)
    c2.metric("Vector width d", vectors.shape[1])
    c3.metric("Lengths ‖a‖", f"{norms.min():.3f}–{norms.max():.3f}")
    st.caption("MiniLM returns unit-length vectors, so here `cos(a, b)` is simply the dot product `a·b`.")

    # ------------------------------------------------------------ similarity
    st.subheader("Cosine similarity of every pair")
    similarity = cosine_similarity_matrix(vectors)
    show_chart(similarity_heatmap(similarity, labels), "embeddings_similarity")
    pairs = most_similar_pairs(similarity)
    st.markdown("**Pairs, most similar first**")
    st.dataframe(
        pd.DataFrame(
            {
                "first": [labels[p.first] for p in pairs],
                "second": [labels[p.second] for p in pairs],
                "cosine": [round(p.cosine, 4) for p in pairs],
            }
        ),
        hide_index=True,
        width="stretch",
        height=min(35 * len(pairs) + 38, 300),
    )
    downloads("cosine_similarity", similarity, labels, labels, key="emb_similarity")

    # ------------------------------------------------------------ map and clusters
    st.subheader("A 2-D map, coloured by k-means cluster")
    k = st.number_input(
        "k, the number of clusters",
        1,
        10,
        help="k-means puts every vector with the nearest of k centres, then moves each centre to the "
        "mean of its vectors, until nothing changes.",
        **state.persist("emb_k", 3),
    )
    projection = pca_2d(vectors)
    try:
        clustering = kmeans(vectors, int(k))
    except VectorLabError as e:
        st.error(str(e))
        clustering = None
    groups = None if clustering is None else [f"cluster {c + 1}" for c in clustering.labels]
    evr = projection.explained_variance_ratio
    show_chart(
        embedding_scatter(projection.coords, labels, groups, title="Items on their first two principal axes"),
        "embeddings_map",
    )
    st.caption(
        f"PCA keeps the two directions of largest spread ({evr[0]:.0%} and {evr[1]:.0%} of the variance); "
        "k-means clusters in the full 384 dimensions, so a cluster may look split on this flat map."
    )
    if clustering is not None:
        c1, c2 = st.columns(2)
        c1.metric("Clusters", len(set(clustering.labels.tolist())))
        c2.metric("Inertia (sum of squared distances to centres)", f"{clustering.inertia:.3f}")
        st.dataframe(
            pd.DataFrame({"item": labels, "cluster": groups}).sort_values("cluster", kind="stable"),
            hide_index=True,
            width="stretch",
        )

    # ------------------------------------------------------------ zero-shot
    st.subheader("Zero-shot labels: the nearest label vector wins")
    c1, c2 = st.columns(2)
    label_text = c1.text_input(
        "Labels, separated by commas", **state.persist("emb_labels", "sports, cooking, computers")
    )
    template = c2.text_input(
        "Each label is embedded as",
        help="{} is replaced by the label.",
        **state.persist("emb_template", "This is about {}."),
    )
    try:
        names = labels_from_text(label_text)
        label_vectors = search_state.encode(tuple(label_prompts(names, template))) if names else vectors[:0]
        predictions = zero_shot_classify(vectors, label_vectors, names)
    except VectorLabError as e:
        st.error(str(e))
    else:
        table = pd.DataFrame(
            {
                "item": labels,
                "label": [p.label for p in predictions],
                **{f"cos to '{name}'": [round(p.scores[name], 3) for p in predictions] for name in names},
            }
        )
        st.dataframe(table, hide_index=True, width="stretch")
        st.caption(
            "No training: each label becomes a sentence, gets its own vector, and every item takes the "
            "label whose vector is closest by cosine."
        )

    # ------------------------------------------------------------ more like this
    st.subheader("More like this")
    c1, c2 = st.columns([3, 1])
    item = c1.selectbox(
        "Item",
        range(n),
        format_func=lambda i: f"{i + 1}. {labels[i]}",
        **state.persist("emb_item", 0, allowed=range(n)),  # back to the first when the list got shorter
    )
    most = min(10, n - 1)
    n_similar = (
        c2.slider(
            "How many", 1, most, **state.persist("emb_n_similar", min(3, most), allowed=range(1, most + 1))
        )
        if n > 2
        else 1
    )
    similar = more_like_this(vectors, item, k=n_similar)
    st.dataframe(
        pd.DataFrame(
            {
                "rank": range(1, len(similar) + 1),
                "item": [labels[r.index] for r in similar],
                "cosine": [round(r.score, 4) for r in similar],
                **({"text": [texts[r.index] for r in similar]} if use_chunks else {}),
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption("A recommender is this one line: sort everything by cosine to what the user liked.")

# ---------------------------------------------------------------- MiniLM vs the LM
st.subheader("A trained sentence encoder vs a language model's own vectors")
st.markdown(
    "The loaded language model also has a vector for every token: average its last hidden states over a "
    "sentence and you get a sentence vector too. Score the same pairs with both:"
)
pair_text = st.text_area(
    "Sentence pairs, one per line: first | second", height=150, **state.persist("emb_pairs", DEFAULT_PAIRS)
)
try:
    sentence_pairs = pairs_from_lines(pair_text)
except VectorLabError as e:
    st.error(str(e))
    st.stop()
loaded = state.require_model()
scores = search_state.pair_scores(sentence_pairs, embedder, loaded)
encoders = list(scores[0].scores)
st.dataframe(
    pd.DataFrame(
        {
            "first": [s.first for s in scores],
            "second": [s.second for s in scores],
            **{name: [round(s.scores[name], 3) for s in scores] for name in encoders},
        }
    ),
    hide_index=True,
    width="stretch",
)
show_chart(pair_comparison_chart(scores), "embeddings_minilm_vs_lm")
columns = st.columns(len(encoders))
for column, name in zip(columns, encoders, strict=True):
    values = [s.scores[name] for s in scores]
    column.metric(f"{name}: highest − lowest pair", f"{max(values) - min(values):.3f}")
st.info(
    "Search uses a trained sentence encoder because of how each was trained. The language model learned "
    "to predict the next token, so its averaged hidden states share one large common direction and "
    "almost every pair looks similar, related or not. MiniLM was trained on a billion sentence pairs to "
    "pull paraphrases together and push unrelated sentences apart, so its cosine tracks meaning — the "
    "spread between its best and worst pair is what lets a search rank documents."
)
