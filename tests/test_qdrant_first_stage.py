"""The first stage in Qdrant (`first_stage="qdrant"`, embedded in the index folder): the same shortlists as the
exact FAISS first stage, and the same in-place updates."""

import json

import pytest
import torch
from test_index_updates import (
    DENSE,
    IDS,
    IMAGES,
    QUERIES,
    assert_searches_like,
    in_memory,
)

from transformers_seps.index import MANIFEST_FILE, StoredGallery
from transformers_seps.retrieval import SepsRetriever

pytest.importorskip("qdrant_client")


def test_qdrant_shortlists_are_the_exact_faiss_ones(model_and_processor, tmp_path):
    model, processor = model_and_processor
    retriever = in_memory(model, processor, list(range(9)))
    retriever.save(tmp_path / "faiss", dtype=torch.float32, shard_size=4)
    retriever.save(tmp_path / "qdrant", dtype=torch.float32, shard_size=4, first_stage="qdrant")
    manifest = json.loads((tmp_path / "qdrant" / MANIFEST_FILE).read_text())
    assert manifest["first_stage"] == "qdrant" and manifest["first_stage_file"] is None
    assert not list((tmp_path / "qdrant").glob("*.faiss")) and (tmp_path / "qdrant" / "first_stage.qdrant").is_dir()
    exact, qdrant = StoredGallery(tmp_path / "faiss", model), StoredGallery(tmp_path / "qdrant", model)
    text_global = model.global_text_embeds(*retriever_text(retriever, QUERIES))
    for size in (1, 3, 8):
        assert torch.equal(qdrant.shortlist(text_global, size), exact.shortlist(text_global, size))
    assert_searches_like(SepsRetriever.load(tmp_path / "qdrant", model), retriever)


def retriever_text(retriever: SepsRetriever, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = retriever.processor(text=texts, return_tensors="pt")
    with torch.no_grad():
        return retriever.model.encode_text(inputs["input_ids"], inputs["attention_mask"]), inputs["attention_mask"]


def test_a_qdrant_index_grows_and_shrinks_in_place(model_and_processor, tmp_path):
    model, processor = model_and_processor
    in_memory(model, processor, list(range(5))).save(tmp_path / "index", dtype=torch.float32, first_stage="qdrant")
    loaded = SepsRetriever.load(tmp_path / "index", model)
    loaded.add_images(IMAGES[5:], DENSE[5:], IDS[5:])
    loaded.remove_images(["img-2", "img-7"])
    kept = [0, 1, 3, 4, 5, 6, 8]
    assert_searches_like(loaded, in_memory(model, processor, kept))
    before = json.loads((tmp_path / "index" / MANIFEST_FILE).read_text())["qdrant_collection"]
    loaded.compact()
    manifest = json.loads((tmp_path / "index" / MANIFEST_FILE).read_text())
    assert manifest["num_images"] == 7 and manifest["qdrant_collection"] != before
    assert [c.name for c in loaded._stored.qdrant.get_collections().collections] == [manifest["qdrant_collection"]]
    assert_searches_like(SepsRetriever.load(tmp_path / "index", model), in_memory(model, processor, kept))
