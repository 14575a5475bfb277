"""Real text vectors for the scale benchmark: passages cut from text already on this machine
(docstrings of the packages installed in .venv, then /usr/share/doc), embedded once with MiniLM
and cached under bench/cache/ (written atomically, so an interrupted run leaves no half file).

    python bench/scale_corpus.py --n 100000 [--queries 300]

The cache holds `passages`: [N, 384] unit float32 vectors of N distinct passages, and `queries`:
[Q, 384] vectors of held-out passages' first sentences (real text that is not itself stored)."""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "cache"
SOURCES = [ROOT / ".venv" / "lib", Path("/usr/share/doc")]
MIN_WORDS, MAX_WORDS = 12, 120  # a passage: one paragraph, cut to at most MAX_WORDS words

log = logging.getLogger("scale_corpus")


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError, RecursionError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _text_files(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        if (
            path.is_file()
            and (path.suffix in {"", ".txt", ".md", ".rst"})
            and path.stat().st_size < 2_000_000
        ):
            try:
                yield path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def _paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        words = block.split()
        for start in range(0, len(words), MAX_WORDS):
            piece = words[start : start + MAX_WORDS]
            if len(piece) >= MIN_WORDS and sum(w.isalpha() for w in piece) >= len(piece) // 2:
                yield " ".join(piece)


def passages(limit: int) -> list[str]:
    """Up to `limit` distinct passages, in a fixed order (sorted file walk)."""
    seen: set[str] = set()
    out: list[str] = []

    def texts() -> Iterator[str]:
        for py in sorted(SOURCES[0].rglob("*.py")):
            yield from _docstrings(py)
        yield from _text_files(SOURCES[1])

    for text in texts():
        for para in _paragraphs(text):
            key = hashlib.sha1(para.lower().encode()).hexdigest()
            if key not in seen:
                seen.add(key)
                out.append(para)
                if len(out) >= limit:
                    return out
    return out


def cache_path(n: int, n_queries: int) -> Path:
    return CACHE / f"scale-{n}-{n_queries}.npz"


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0]


def build(n: int, n_queries: int, batch: int = 256) -> Path:
    """Embed N passages + Q held-out query sentences once; reuse the cache when it exists."""
    path = cache_path(n, n_queries)
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT))
    from core.retrieval.encoders import load_sentence_embedder

    texts = passages(n + n_queries)
    if len(texts) < n + n_queries:
        raise SystemExit(f"only {len(texts)} passages found on this machine, need {n + n_queries}")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    stored = [texts[i] for i in order[:n]]
    held_out = [_first_sentence(texts[i]) for i in order[n : n + n_queries]]
    model = load_sentence_embedder().model
    vectors = np.zeros((n, 384), dtype=np.float32)
    started = time.monotonic()
    for lo in range(0, n, batch):
        vectors[lo : lo + batch] = model.encode(
            stored[lo : lo + batch], normalize_embeddings=True, show_progress_bar=False
        )
        done = min(n, lo + batch)
        rate = done / (time.monotonic() - started)
        log.info("embedded %d / %d passages (%.0f/s, %.0f s left)", done, n, rate, (n - done) / rate)
    queries = model.encode(held_out, normalize_embeddings=True).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CACHE, suffix=".npz.part")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, passages=vectors, queries=queries, query_texts=np.array(held_out))
    os.replace(tmp, path)  # atomic: a reader sees the whole file or none
    log.info("wrote %s", path)
    return path


def load(n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(passages [N, 384], queries [Q, 384]): from the largest cache that holds at least N passages."""
    candidates = sorted(CACHE.glob(f"scale-*-{n_queries}.npz"), key=lambda p: int(p.stem.split("-")[1]))
    for path in candidates:
        if int(path.stem.split("-")[1]) >= n:
            data = np.load(path)
            return data["passages"][:n], data["queries"]
    data = np.load(build(n, n_queries))
    return data["passages"], data["queries"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(build(args.n, args.queries))


if __name__ == "__main__":
    main()
