"""The first stage of an index in Qdrant, a vector database: embedded in the index folder, or on a Qdrant server or
cluster (`first_stage="qdrant"` / `"qdrant:<url>"` of `SepsRetriever.save` and `examples/build_index.py`).

An image is one point (id: its row) holding its V global vectors as a multivector; Qdrant's MAX_SIM comparator
scores a one-vector query by the best inner product of the image's vectors, the first stage's score
(`transformers_seps.global_embedding.first_stage_scores`). The SEPS tokens stay in the index's shards.

Points are written before the manifest that counts them, so the collection may hold rows a killed update added and
no manifest lists; a search skips them, and removed rows, as it skips them with FAISS. Compaction writes a new
collection and drops the old one once the new manifest names the new one. A server's API key is read from the
`QDRANT_API_KEY` environment variable.
"""

import atexit
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

PREFIX = "qdrant"
# The embedded store of an index's first stage, a folder of the index.
LOCAL_FOLDER = "first_stage.qdrant"
# Points written per request.
UPSERT_BATCH = 256
# Clients of embedded stores, one per folder and process (an embedded store admits one client at a time).
_LOCAL_CLIENTS: dict[Path, "QdrantClient"] = {}


def is_qdrant(kind: str) -> bool:
    return kind == PREFIX or kind.startswith(f"{PREFIX}:")


def qdrant_server_url(kind: str) -> str | None:
    """The server of `"qdrant:<url>"`; None for the embedded store (`"qdrant"`)."""
    return kind.partition(":")[2] or None


def import_qdrant():
    try:
        import qdrant_client
    except ImportError as error:
        raise ImportError(
            "a Qdrant first stage needs qdrant-client: pip install 'transformers-seps[qdrant]'"
        ) from error
    return qdrant_client


def qdrant_client_of(directory: Path, url: str | None) -> "QdrantClient":
    """The client of an index's first stage: its server's, or its embedded store's (`LOCAL_FOLDER`)."""
    qdrant_client = import_qdrant()
    if url is not None:
        return qdrant_client.QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
    path = (Path(directory) / LOCAL_FOLDER).resolve()
    if path not in _LOCAL_CLIENTS:
        _LOCAL_CLIENTS[path] = qdrant_client.QdrantClient(path=str(path))
    return _LOCAL_CLIENTS[path]


@atexit.register
def _close_local_clients() -> None:
    """Close the embedded stores before the interpreter shuts down (their own finaliser runs too late)."""
    for qdrant in _LOCAL_CLIENTS.values():
        qdrant.close()
    _LOCAL_CLIENTS.clear()


def new_qdrant_collection(qdrant: "QdrantClient", fingerprint: str, global_dim: int) -> str:
    """Create an empty collection of multivector points scored by MAX_SIM of inner products; return its name
    (`seps-<model fingerprint>-<random>`: unique on a shared server)."""
    models = import_qdrant().models
    name = f"seps-{fingerprint[:12]}-{uuid.uuid4().hex[:8]}"
    qdrant.create_collection(
        name,
        vectors_config=models.VectorParams(
            size=global_dim,
            distance=models.Distance.DOT,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
        ),
    )
    return name


def write_qdrant_points(qdrant: "QdrantClient", collection: str, global_embeds: np.ndarray, first_row: int) -> None:
    """Upsert (n, V, D) global embeddings as the points of rows first_row .. first_row + n - 1."""
    models = import_qdrant().models
    for start in range(0, len(global_embeds), UPSERT_BATCH):
        block = global_embeds[start : start + UPSERT_BATCH]
        points = [
            models.PointStruct(id=first_row + start + offset, vector=vectors.tolist())
            for offset, vectors in enumerate(block)
        ]
        qdrant.upsert(collection, points=points, wait=True)


def search_qdrant(qdrant: "QdrantClient", collection: str, text_global: torch.Tensor, limit: int) -> list[list[int]]:
    """The `limit` best rows for each (N_txt, D) caption vector, best first."""
    models = import_qdrant().models
    requests = [
        models.QueryRequest(query=[vector], limit=limit)
        for vector in text_global.detach().float().cpu().numpy().tolist()
    ]
    return [[point.id for point in response.points] for response in qdrant.query_batch_points(collection, requests)]


def qdrant_point_count(qdrant: "QdrantClient", collection: str) -> int:
    return qdrant.count(collection, exact=True).count
