"""The stations the app has built, in the order a vector travels; app.py and the landing page read this."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Station:
    number: int
    title: str
    page: str  # file under pages/
    icon: str
    what: str  # what happens here
    why: str  # why it matters


STATIONS = (
    Station(
        1,
        "Tokens & embeddings",
        "pages/1_tokens.py",
        ":material/text_fields:",
        "The text is cut into BPE pieces; each piece's id picks one row of the embedding matrix — "
        "a vector of a few hundred numbers that stands for that token.",
        "Everything the model knows about a word starts as this row. Tokens with similar use end up "
        "with similar rows, which you can see as neighbours by cosine similarity.",
    ),
    Station(
        2,
        "Positional encoding",
        "pages/2_positions.py",
        ":material/format_list_numbered:",
        "One attention step weighs earlier tokens by content, not by where they stand, so position is "
        "mixed in: GPT-2 adds a learned position vector to every token vector; Llama-style models "
        "rotate queries and keys instead.",
        "Without it the causal mask still leaks some order (each token sees only the tokens before it), "
        "so 'dog bites man' and 'man bites dog' differ only through later layers; positions make order "
        "explicit. Rotary positions make attention depend on how far apart two tokens are.",
    ),
    Station(
        3,
        "Self-attention",
        "pages/3_attention.py",
        ":material/hub:",
        "Each token's vector is projected into a query, a key and a value; every head scores its query "
        "against earlier keys, softmax(QKᵀ/√d), and mixes the value rows by those weights.",
        "This is the only step where tokens read each other. Different heads learn different habits — "
        "look at the previous word, at the start of the text, at a matching name.",
    ),
    Station(
        4,
        "Transformer layers",
        "pages/4_layers.py",
        ":material/layers:",
        "Block after block adds an attention update and an MLP update to the running vector, the residual "
        "stream; the logit lens reads that stream at every depth as a prediction.",
        "You can watch the answer form: early layers guess generic words, later layers the right one. The "
        "last layer's reading is exactly the model's output.",
    ),
    Station(
        5,
        "Output softmax",
        "pages/5_output.py",
        ":material/bar_chart:",
        "The final vector is scored against every vocabulary row; softmax turns the scores into "
        "next-token probabilities, which temperature, top-k and top-p reshape before a token is drawn.",
        "This is where a vector becomes a word. Generation is this one step repeated, and surprisal "
        "shows how well the model predicted your own text.",
    ),
    Station(
        6,
        "Sentence & document embeddings",
        "pages/6_embeddings.py",
        ":material/bubble_chart:",
        "A sentence encoder (MiniLM) turns a whole sentence into one vector; pairs are compared by "
        "cos(a, b) = a·b / (‖a‖ ‖b‖), then mapped, clustered, labelled and recommended by that one number.",
        "Once meaning is a direction, grouping, labelling and search are the same operation. A language "
        "model's own averaged vectors do this badly, which is why search uses a trained encoder.",
    ),
    Station(
        7,
        "Vector search & RAG",
        "pages/7_search.py",
        ":material/manage_search:",
        "Your documents are cut into chunks, embedded and stored in Chroma; a question is embedded the "
        "same way and the chunks with the highest cosine similarity come back, on a map beside it.",
        "Retrieval lets a model read text it was never trained on: the best chunks go into the prompt "
        "and the answer cites them, so you can check where it came from.",
    ),
    Station(
        8,
        "Training with gradients",
        "pages/8_training.py",
        ":material/model_training:",
        "Fine-tune the model on your own text: the loss becomes a gradient vector for every weight, and "
        "AdamW moves each weight against it, step after step, while you watch.",
        "Gradients are what shaped every vector in the other stations. Seeing their sizes per layer, and "
        "what Adam does with them, makes 'training' concrete — and the before/after shows what changed.",
    ),
    Station(
        9,
        "One token's journey",
        "pages/9_journey.py",
        ":material/route:",
        "Pick one token and follow it on one screen: its embedding row, its position, its query, key and "
        "value and the tokens it attends to, its vector after every block, what each depth would predict, "
        "and the final distribution — every number from the same forward pass.",
        "The other stations show one place for every token; following a single vector end to end shows how "
        "the pieces connect, and where its prediction takes shape.",
    ),
    Station(
        10,
        "What if? Experiments",
        "pages/10_experiments.py",
        ":material/science:",
        "Change one vector inside the real model — remove attention heads, or copy an activation from "
        "one prompt into another — and watch the next-token distribution and the continuation move.",
        "Looking shows what is there; changing it shows what it does. A head whose removal moves the "
        "output, or a position whose vector carries the answer, is a part the model really uses.",
    ),
)
