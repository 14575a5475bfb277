"""Retrieval quality on the project's manuals (tests/data/manuals: HTML, PDF and .docx, with questions
whose answer is a passage): recall@1, recall@3 and MRR of dense, sparse and hybrid search per chunk size.

A hit counts only when its chunk holds the answering passage, not just the right document.
Run: .venv/bin/python bench/bench_retrieval.py [--sizes 64 128 256] [--overlap 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.retrieval.documents import parse_file  # noqa: E402
from core.retrieval.encoders import load_sentence_embedder  # noqa: E402
from core.retrieval.evaluation import evaluate_chunk_sizes, load_questions, temporary_client  # noqa: E402

MANUALS = ROOT / "tests" / "data" / "manuals"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--overlap", type=int, default=16)
    args = parser.parse_args()
    questions = load_questions(MANUALS / "questions.json")
    documents = [parse_file(p.name, p.read_bytes()) for p in sorted(MANUALS.glob("tidelog-*"))]
    results = evaluate_chunk_sizes(
        temporary_client(),
        load_sentence_embedder(),
        documents,
        questions,
        args.sizes,
        overlap_tokens=args.overlap,
    )
    print(
        f"{len(questions)} questions over {len(documents)} documents, chunk overlap {args.overlap} tokens\n"
    )
    print("| chunk tokens | mode | recall@1 | recall@3 | MRR |")
    print("|---:|---|---:|---:|---:|")
    for r in results:
        print(f"| {r.max_tokens} | {r.mode} | {r.recall_at_1:.3f} | {r.recall_at_3:.3f} | {r.mrr:.3f} |")


if __name__ == "__main__":
    main()
