"""Several first-stage vectors per image, scored by the best one (`global_image_vectors`, PVSE's max over an
image's embeddings): the score, why it finds crowded scenes, the init, old configs, the loss and the FAISS index."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_captions, tiny_config, tiny_model
from safetensors.torch import load_file, save_file

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.global_embedding import SepsGlobalEmbedding, first_stage_scores, global_contrastive_loss
from transformers_seps.index import StoredGallery, finalize_index, model_signature, write_shard

IMAGE_SIZE = 40  # the tiny ViT of conftest


def test_an_image_scores_a_caption_by_its_best_vector():
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor(
        [
            [[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]],  # best for caption 0: 1.0; for caption 1: 0.8
            [[-1.0, 0.0], [0.8, -0.6], [0.28, 0.96]],  # 0.8 and 0.96
        ]
    )
    expected = torch.tensor([[1.0, 0.8], [0.8, 0.96]])
    torch.testing.assert_close(first_stage_scores(captions, images), expected)
    # One vector per image: the plain inner product.
    torch.testing.assert_close(first_stage_scores(captions, images[:, 1:2]), captions @ images[:, 1].t())


def test_training_can_score_by_a_smooth_maximum():
    captions = torch.tensor([[1.0, 0.0]])
    images = torch.tensor([[[0.6, 0.8], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    smoothing = 0.1
    expected = torch.tensor([[smoothing * math.log(math.exp(6) + math.exp(10)), smoothing * math.log(2)]])
    torch.testing.assert_close(first_stage_scores(captions, images, smoothing), expected)
    # Between the maximum and the maximum + s log V.
    maximum = first_stage_scores(captions, images)
    assert (maximum <= expected).all() and (expected <= maximum + smoothing * math.log(2) + 1e-6).all()


def _axis_pooling_embedding(image_vectors: int) -> SepsGlobalEmbedding:
    """5-d tokens, 4 pooling queries, query k sharply on tokens along axis k. With 4 image vectors each query's
    pooled token is projected as it is; with 1, the projection sums the 4 pooled tokens."""
    embedding = SepsGlobalEmbedding(5, num_queries=4, image_vectors=image_vectors)
    with torch.no_grad():
        embedding.image_pool.weight.copy_(10 * torch.eye(5)[:4])
        embedding.image_projection.bias.zero_()
        embedding.image_projection.weight.copy_(torch.eye(5).repeat(1, 4 // image_vectors))
    return embedding


def test_a_crowded_scene_is_shortlisted_by_its_best_vector_where_one_vector_loses_it():
    # Image 0 holds four objects (axes 0-3); image 1 one object half like object 0 (cosine 0.6) and a background.
    crowded = torch.eye(5)[:4]
    distractor = torch.tensor([[0.6, 0.0, 0.0, 0.0, 0.8], [0.0, 0.0, 0.0, 0.0, 0.0]])
    caption = torch.eye(5)[:1]  # names object 0 of image 0
    scores = {}
    for vectors in (1, 4):
        embedding = _axis_pooling_embedding(vectors)
        images = torch.cat([embedding.embed_image(crowded[None]), embedding.embed_image(distractor[None])])
        assert images.shape == (2, vectors, 5)
        scores[vectors] = first_stage_scores(caption, images)[0]
    # One vector mixes the four objects (cosine 1/2 with each): the distractor's 0.6 wins.
    torch.testing.assert_close(scores[1], torch.tensor([0.5, 0.6]), atol=2e-3, rtol=0)
    # Each of four vectors holds one object: the crowded image's best vector matches the caption.
    torch.testing.assert_close(scores[4], torch.tensor([1.0, 0.6]), atol=2e-3, rtol=0)


def test_the_contrastive_loss_takes_the_best_vector_of_each_image():
    images = torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [0.6, 0.8]]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    temperature = 0.5
    # Best cosines: caption 0 (1, 0.6), caption 1 (0, 1); logits twice that: (2, 1.2) and (0, 2).
    text_to_image = -(math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) + math.log(math.exp(2) / (1 + math.exp(2))))
    image_to_text = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.exp(2) / (math.exp(1.2) + math.exp(2))))
    expected = (text_to_image + image_to_text) / 4
    loss = global_contrastive_loss(images, texts, torch.tensor([0, 1]), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_the_training_loss_uses_the_configured_smooth_maximum():
    model = tiny_model(global_pooling_queries=4, global_max_smoothing=0.2)  # eval: no dropout between the calls
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    ids, mask = random_captions(4, 9, seed=3)
    output = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_loss=True)
    with torch.no_grad():
        images = model.global_image_embeds(model.encode_image(pixels))
        texts = model.global_text_embeds(model.encode_text(ids, mask), mask)
    losses = {s: global_contrastive_loss(images, texts, torch.arange(4), 0.05, s).item() for s in (0.0, 0.2)}
    assert output.global_contrastive_loss.item() == pytest.approx(losses[0.2], rel=1e-5)
    assert losses[0.2] != pytest.approx(losses[0.0], rel=1e-3)


def test_new_models_keep_one_image_vector_per_pooling_query():
    model = tiny_model(global_pooling_queries=4)
    assert model.config.global_image_vectors is None and model.config.num_global_image_vectors == 4
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vectors = model.get_global_image_features(pixels)
        assert vectors.shape == (3, 4, model.config.embed_dim)
        torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3, 4))
        assert model.get_image_features(pixels).pooler_output.shape == (3, 4, model.config.embed_dim)
    # Groups of queries: 4 queries in 2 vectors, each of 2 pooled tokens.
    grouped = tiny_model(global_pooling_queries=4, global_image_vectors=2)
    embed_dim = grouped.config.embed_dim
    assert grouped.global_embedding.image_projection.weight.shape == (embed_dim, 2 * embed_dim)
    with torch.no_grad():
        assert grouped.get_global_image_features(pixels).shape == (3, 2, embed_dim)


def _has_pytorch_default_init(layer: torch.nn.Linear) -> bool:
    """Weights and bias uniform in +-1/sqrt(fan_in), as `nn.Linear` draws them (xavier's bound is larger here, its
    bias zero): the weights (hundreds of draws) reach near the bound, the bias (a few dozen) stays within it."""
    bound = 1 / math.sqrt(layer.in_features)
    bias_ok = layer.bias is None or 0 < layer.bias.abs().max() <= bound
    return bool(0.9 * bound < layer.weight.abs().max() <= bound) and bool(bias_ok)


def test_the_first_stage_starts_from_pytorchs_linear_init_and_seps_from_xavier(tmp_path):
    model = tiny_model()
    assert all(_has_pytorch_default_init(layer) for layer in model.global_embedding.children())
    assert not _has_pytorch_default_init(model.vision_projection)  # xavier, zero bias
    # A fresh first stage added to a checkpoint without one is initialised the same way; trained ones are kept.
    model.save_pretrained(tmp_path)
    weights = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if "global_embedding" not in k}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    fresh = SepsModel.from_pretrained(tmp_path, global_contrastive_weight=1.0)
    assert all(_has_pytorch_default_init(layer) for layer in fresh.global_embedding.children())
    assert torch.equal(fresh.vision_projection.weight, model.vision_projection.weight)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"global_image_vectors": 0}, "global_image_vectors must be an integer >= 1 or None, got 0"),
        ({"global_max_smoothing": -0.1}, "global_max_smoothing must be >= 0, got -0.1"),
        ({"global_image_vectors": 2.5}, r"global_image_vectors must be an integer >= 1 or None, got 2.5 \(float\)"),
        (
            {"global_pooling_queries": 8, "global_image_vectors": 3},
            "global_image_vectors must divide global_pooling_queries, got global_image_vectors=3 and "
            "global_pooling_queries=8",
        ),
    ],
)
def test_bad_image_vector_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_a_config_saved_before_image_vectors_existed_loads_with_one_vector(tmp_path):
    """runs/demo/best and other models of before this field: one vector of all 8 queries, searched as before."""
    model = tiny_model(global_pooling_queries=8, global_image_vectors=1).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    for field in ("global_image_vectors", "global_max_smoothing"):
        del saved[field]
    config_file.write_text(json.dumps(saved))
    loaded = SepsModel.from_pretrained(tmp_path).eval()
    assert loaded.config.global_image_vectors == loaded.config.num_global_image_vectors == 1
    assert loaded.config.global_pooling_queries == 8 and loaded.config.global_max_smoothing == 0.0
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = loaded.get_global_image_features(pixels)
        assert features.shape == (2, 1, loaded.config.embed_dim)
        torch.testing.assert_close(features, model.get_global_image_features(pixels))
    # A model saved with the default keeps one vector per query (None is written and read back).
    tiny_model().save_pretrained(tmp_path / "new")
    assert SepsConfig.from_pretrained(tmp_path / "new").num_global_image_vectors == 16


@pytest.mark.parametrize("first_stage", ["exact", "hnsw"])
def test_the_faiss_first_stage_shortlists_as_the_best_vector_of_each_image(tmp_path, first_stage):
    """FAISS holds one row per vector; its shortlist equals the in-memory `first_stage_scores` top-k."""
    model = tiny_model(global_pooling_queries=4)
    generator = torch.Generator().manual_seed(2)
    num_images, num_vectors, embed_dim = 30, 4, model.config.embed_dim
    image_vectors = F.normalize(torch.randn(num_images, num_vectors, embed_dim, generator=generator), dim=-1)
    tokens = torch.randn(num_images, 5, embed_dim, generator=generator)
    signature = model_signature(model)
    for start in range(0, num_images, 8):
        rows = slice(start, start + 8)
        ids = list(range(num_images))[rows]
        write_shard(tmp_path, start, ids, tokens[rows], image_vectors[rows], None, None, torch.float32, signature)
    manifest = finalize_index(tmp_path, signature, first_stage)
    assert manifest["global_vectors"] == num_vectors
    stored = StoredGallery(tmp_path, model)
    assert stored.first_stage.ntotal == num_images * num_vectors
    queries = F.normalize(torch.randn(12, embed_dim, generator=generator), dim=-1)
    for size in (1, 5, 17, num_images):
        expected = first_stage_scores(queries, image_vectors).topk(size, dim=1).indices
        assert torch.equal(stored.shortlist(queries, size), expected), size


def test_a_search_scores_large_galleries_in_blocks_of_captions(monkeypatch):
    """The scores go through blocks of captions (their products bounded), with the same results."""
    from transformers_seps import global_embedding

    generator = torch.Generator().manual_seed(5)
    texts = F.normalize(torch.randn(7, 8, generator=generator), dim=-1)
    images = F.normalize(torch.randn(5, 3, 8, generator=generator), dim=-1)
    whole = first_stage_scores(texts, images)
    monkeypatch.setattr(global_embedding, "SCORE_BLOCK_PRODUCTS", 2 * 5 * 3)  # two captions per block
    blocks, einsum = [], torch.einsum

    def counted_einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
        blocks.append(operands[0].shape[0])
        return einsum(equation, *operands)

    monkeypatch.setattr(torch, "einsum", counted_einsum)
    torch.testing.assert_close(first_stage_scores(texts, images), whole)
    assert blocks == [2, 2, 2, 1]
    torch.testing.assert_close(whole, einsum("td,ivd->tiv", texts, images).amax(dim=-1))
