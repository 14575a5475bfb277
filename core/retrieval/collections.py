"""Every collection on a Chroma client: listed with its size and encoder, read whole (`ChunkVectors`),
deleted together with its keyword index; and where a client's keyword indexes live (beside the data
for local files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.errors import ChromaError

from core.errors import InputError
from core.paths import data_dir
from core.retrieval.recovery import is_pending
from core.retrieval.sparse import forget, sparse_file


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    n_chunks: int
    embedder: str  # the encoder that filled it ("?" if not made by Vector Lab)


@dataclass(frozen=True)
class ChunkVectors:
    """Every chunk in a collection with its stored embedding."""

    ids: list[str]
    embeddings: np.ndarray  # [N, d]
    doc_names: list[str]
    chunk_indices: list[int]
    texts: list[str]


def read_chunk_vectors(collection: Any) -> ChunkVectors:
    """Every complete chunk of `collection` with its stored embedding, in document/chunk order."""
    got = collection.get(include=["embeddings", "metadatas", "documents"])
    pending = {m["doc_hash"] for m in got["metadatas"] if is_pending(m)}
    order = sorted(
        (i for i, m in enumerate(got["metadatas"]) if m["doc_hash"] not in pending),
        key=lambda i: (got["metadatas"][i]["doc_name"], got["metadatas"][i]["chunk_index"]),
    )
    dimension = len(got["embeddings"][0]) if len(got["embeddings"]) else 0
    return ChunkVectors(
        ids=[got["ids"][i] for i in order],
        embeddings=np.asarray(got["embeddings"], dtype=np.float32).reshape(-1, dimension)[order],
        doc_names=[got["metadatas"][i]["doc_name"] for i in order],
        chunk_indices=[int(got["metadatas"][i]["chunk_index"]) for i in order],
        texts=[got["documents"][i] for i in order],
    )


def list_collections(client: Any) -> list[CollectionInfo]:
    """Every collection on this client with its size and encoder, sorted by name."""
    infos = []
    for col in client.list_collections():
        meta = col.metadata or {}
        infos.append(CollectionInfo(col.name, int(col.count()), str(meta.get("embedder", "?"))))
    return sorted(infos, key=lambda c: c.name)


def delete_collection(client: Any, name: str, sparse_dir: Path) -> None:
    """Delete a collection and its keyword index."""
    if name not in {c.name for c in client.list_collections()}:
        raise InputError(f"There is no collection named '{name}'.")
    try:
        client.delete_collection(name)
    except ChromaError as e:
        raise InputError(f"Chroma could not delete the collection '{name}': {e}") from e
    forget(sparse_file(sparse_dir, name))


def default_sparse_dir(client: Any) -> Path:
    """Where this client's keyword (BM25) indexes live: in a `bm25` folder inside the data folder of
    embedded Chroma, and under `data_dir()/bm25/<host>_<port>` for a Chroma server, whose files this
    process cannot reach."""
    settings = client.get_settings()
    if settings.is_persistent and settings.persist_directory:
        return Path(settings.persist_directory) / "bm25"
    host = settings.chroma_server_host or "in-memory"
    port = settings.chroma_server_http_port or 0
    return data_dir() / "bm25" / f"{host}_{port}"
