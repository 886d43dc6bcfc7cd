"""Notebook-level retrieval (SepsRetriever, score_pairs) and the `evaluate` module."""

from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from conftest import tiny_model_with_processor
from PIL import Image

from transformers_seps.metrics import retrieval_metrics
from transformers_seps.retrieval import SepsRetriever, score_pairs

METRIC_PATH = str(Path(__file__).resolve().parents[1] / "metrics" / "seps_retrieval")


def gallery(count: int) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)) for _ in range(count)]
    dense = [f"a picture with {word} shapes and colours number {i}" for i, word in enumerate(["red", "blue"] * count)][
        :count
    ]
    return images, dense


QUERIES = ["a red circle", "two blue squares on the left", "a green star"]


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_search_equals_exhaustive_ranking_and_whole_gallery_shortlist(variant):
    model, processor = tiny_model_with_processor(variant)
    images, dense = gallery(7)
    exhaustive = score_pairs(model, processor, images, QUERIES, dense).t()  # (queries, images)
    for shortlist_size in (None, 7, 50):
        retriever = SepsRetriever(model, processor, shortlist_size=shortlist_size, batch_size=3)
        retriever.add_images(images[:4], dense[:4])
        retriever.add_images(images[4:], dense[4:])
        assert len(retriever) == 7
        result = retriever.search(QUERIES, top_k=5)
        best = exhaustive.topk(5, dim=1)
        torch.testing.assert_close(result.scores, best.values, atol=1e-5, rtol=0)
        assert torch.equal(result.indices, best.indices)


def test_a_short_shortlist_reranks_its_candidates_with_seps():
    model, processor = tiny_model_with_processor("paper")
    images, _ = gallery(8)
    retriever = SepsRetriever(model, processor, shortlist_size=3)
    retriever.add_images(images)
    result = retriever.search("a red circle", top_k=3)
    exhaustive = score_pairs(model, processor, images, ["a red circle"])[:, 0]
    assert result.indices.shape == (1, 3)
    # Scores are the exhaustive SEPS scores of the shortlisted images, in decreasing order.
    torch.testing.assert_close(result.scores[0], exhaustive[result.indices[0]], atol=1e-5, rtol=0)
    assert torch.all(result.scores[0, :-1] >= result.scores[0, 1:])


def test_search_image_ranks_texts():
    model, processor = tiny_model_with_processor("official")
    images, dense = gallery(1)
    retriever = SepsRetriever(model, processor)
    result = retriever.search_image(images[0], QUERIES, top_k=2, dense_caption=dense[0])
    scores = score_pairs(model, processor, images, QUERIES, dense)[0]
    assert torch.equal(result.indices[0], scores.topk(2).indices)


def test_retriever_errors():
    model, processor = tiny_model_with_processor("paper")
    images, dense = gallery(3)
    retriever = SepsRetriever(model, processor)
    with pytest.raises(ValueError, match="gallery is empty"):
        retriever.search("a red circle")
    with pytest.raises(ValueError, match="one dense caption per image"):
        retriever.add_images(images, dense[:2])
    retriever.add_images(images)
    with pytest.raises(ValueError, match="for all images or for none"):
        retriever.add_images(images, dense)
    with pytest.raises(ValueError, match="shortlist_size"):
        SepsRetriever(model, processor, shortlist_size=0)


def test_evaluate_module_matches_the_library_metric():
    rng = np.random.default_rng(3)
    similarity = rng.random((6, 30))
    targets = np.repeat(np.arange(6), 5)
    metric = evaluate.load(METRIC_PATH)
    for start in range(0, 30, 10):  # streamed in batches of captions
        metric.add_batch(predictions=similarity.T[start : start + 10].tolist(), references=targets[start : start + 10])
    assert metric.compute() == pytest.approx(retrieval_metrics(similarity, targets))
