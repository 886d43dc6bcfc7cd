"""The trained first stage: global embeddings (`SepsGlobalEmbedding`), their contrastive loss and the shortlist."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_captions, tiny_config, tiny_model

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.global_embedding import SepsGlobalEmbedding, first_stage_scores, global_contrastive_loss
from transformers_seps.loss import SepsForRetrievalTraining
from transformers_seps.retrieval import shortlist_and_rerank
from transformers_seps.tools.convert_official import official_seps_config

IMAGE_SIZE = 40  # the tiny ViT of conftest


def batch(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(num, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    ids, mask = random_captions(num, 9, seed)
    return pixels, ids, mask


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("global_contrastive_weight", -0.5, "global_contrastive_weight must be >= 0"),
        ("global_temperature", 0.0, "global_temperature must be > 0"),
        ("global_temperature", float("nan"), "global_temperature must be > 0"),
        ("global_pooling_queries", 0, "global_pooling_queries must be an integer >= 1, got 0"),
        ("global_detach_tokens", "yes", "global_detach_tokens must be True or False, got 'yes'"),
    ],
)
def test_bad_first_stage_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_new_models_train_a_global_embedding_and_converted_checkpoints_do_not():
    assert tiny_model().global_embedding is not None
    options = {"vit_type": "vit", "img_res": 224, "embed_size": 512, "sparse_ratio": 0.5, "aggr_ratio": 0.4}
    config = official_seps_config(options)
    assert config.global_contrastive_weight == 0
    with torch.device("meta"):
        model = SepsModel(config)
    assert model.global_embedding is None
    assert not any(name.startswith("global_embedding") for name in model.state_dict())


def test_without_a_global_embedding_the_first_stage_is_the_mean_of_the_tokens():
    model = tiny_model(global_contrastive_weight=0.0)
    pixels, ids, mask = batch(3, 0)
    with torch.no_grad():
        tokens = model.encode_image(pixels)
        words = model.encode_text(ids, mask)
        # Images: the patches without [CLS]; captions: the real tokens only.
        expected_images = F.normalize(tokens[:, 1:].mean(dim=1), dim=-1)[:, None]  # one vector per image
        expected_texts = F.normalize((words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
        torch.testing.assert_close(model.get_global_image_features(pixels), expected_images)
        torch.testing.assert_close(model.get_global_text_features(ids, mask), expected_texts)


def test_global_features_are_unit_vectors_that_ignore_padding():
    model = tiny_model()
    pixels, ids, mask = batch(4, 1)
    with torch.no_grad():
        images = model.get_global_image_features(pixels)
        texts = model.get_global_text_features(ids, mask)
        assert images.shape == (4, model.config.num_global_image_vectors, model.config.embed_dim)
        assert texts.shape == (4, model.config.embed_dim)
        torch.testing.assert_close(images.norm(dim=-1), torch.ones(images.shape[:2]))
        torch.testing.assert_close(texts.norm(dim=-1), torch.ones(4))
        # Extra padding (any token id under a zero mask) changes nothing.
        padded_ids = torch.cat([ids, torch.full((4, 3), 7)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(4, 3, dtype=mask.dtype)], dim=1)
        torch.testing.assert_close(model.get_global_text_features(padded_ids, padded_mask), texts)
    with pytest.raises(ValueError, match="attention_mask"):
        model.get_global_text_features(ids, mask[:, :-1])


def test_contrastive_loss_of_a_hand_computed_batch():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    temperature = 0.5
    # Caption 0: logits (2, 0); caption 1: (1.2, 1.6). Image 0: (2, 1.2); image 1: (0, 1.6).
    text_to_image = (
        -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    ) / 2
    image_to_text = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    ) / 2
    loss = global_contrastive_loss(images[:, None], texts, torch.tensor([0, 1]), temperature)
    assert loss.item() == pytest.approx((text_to_image + image_to_text) / 2, rel=1e-6)


def test_captions_of_the_same_image_are_not_pushed_apart():
    start = torch.tensor([[1.0, 0.0, 0.0], [0.96, 0.28, 0.0], [0.0, 0.0, 1.0]])

    def twin_cosine_after_training(image_ids: list[int]) -> float:
        images = start.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([images], lr=0.1)
        for _ in range(20):
            optimizer.zero_grad()
            image_vectors = F.normalize(images, dim=-1)[:, None]
            global_contrastive_loss(image_vectors, start, torch.tensor(image_ids), 0.05).backward()
            optimizer.step()
        return F.cosine_similarity(images[0], images[1], dim=0).item()

    # Rows 0 and 1 as two captions of image 4: the loss pulls them together; as two images, it pushes them apart.
    assert twin_cosine_after_training([4, 4, 9]) > 0.99
    assert twin_cosine_after_training([4, 5, 9]) < 0.9


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_training_loss_adds_the_weighted_contrastive_term(weight):
    model = tiny_model(global_contrastive_weight=weight).train()
    pixels, ids, mask = batch(4, 2)
    output = SepsForRetrievalTraining(model)(pixels, ids, mask, torch.arange(4), selection_seed=3)
    seps_loss = output.alignment_loss + model.config.ratio_weight * output.ratio_loss
    if weight == 0:
        assert output.global_contrastive_loss is None
        torch.testing.assert_close(output.loss, seps_loss)
        return
    torch.testing.assert_close(output.loss, seps_loss + weight * output.global_contrastive_loss)
    output.loss.backward()
    for name, parameter in model.global_embedding.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_an_infonce_term_on_s_adds_to_the_triplet_loss():
    from transformers_seps.global_embedding import paired_infonce
    from transformers_seps.modeling_seps import vse_triplet_loss

    pixels, ids, mask = batch(4, 2)
    image_ids = torch.tensor([0, 1, 1, 2])  # rows 1 and 2: two captions of one image
    model = tiny_model(alignment_infonce_weight=0.5, alignment_temperature=0.2).eval()
    with torch.no_grad():
        output = model(pixels, ids, mask, image_ids=image_ids, return_loss=True)
        scores = model.similarity(output.image_embeds, output.text_embeds, mask, first_stage_weight=0)
    triplet = vse_triplet_loss(scores, image_ids, model.config.margin, True)
    torch.testing.assert_close(output.alignment_loss, triplet + 0.5 * paired_infonce(scores.t() / 0.2, image_ids))
    assert paired_infonce(scores.t() / 0.2, image_ids) > 0


def test_training_the_contrastive_term_puts_each_image_first_in_its_captions_shortlist():
    torch.manual_seed(0)
    model = tiny_model()
    pixels, ids, mask = batch(8, 4)
    with torch.no_grad():  # the backbones and SEPS projections stay as they are: only the global embedding learns
        tokens, words = model.encode_image(pixels), model.encode_text(ids, mask)
    optimizer = torch.optim.Adam(model.global_embedding.parameters(), lr=1e-2)

    def first_stage_hits() -> int:
        with torch.no_grad():
            ranks = first_stage_scores(model.global_text_embeds(words, mask), model.global_image_embeds(tokens))
        return int((ranks.argmax(dim=1) == torch.arange(8)).sum())

    before = first_stage_hits()
    losses = []
    for _ in range(100):
        loss = global_contrastive_loss(
            model.global_image_embeds(tokens), model.global_text_embeds(words, mask), torch.arange(8), 0.05
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert before < 8 and first_stage_hits() == 8
    assert losses[-1] < losses[0] / 4


def test_the_shortlist_follows_the_global_embeddings():
    model = tiny_model()
    pixels, ids, mask = batch(6, 5)
    with torch.no_grad():
        tokens, words = model.encode_image(pixels), model.encode_text(ids, mask)
        result = shortlist_and_rerank(model, tokens, words, mask, 2)
        expected = first_stage_scores(model.global_text_embeds(words, mask), model.global_image_embeds(tokens))
        expected = expected.topk(2).indices
        assert torch.equal(result.indices, expected)
        torch.testing.assert_close(
            result.scores, model.similarity(tokens, words, mask).t().gather(1, expected), atol=1e-5, rtol=0
        )
        # A model without a global embedding shortlists by the mean-pooled tokens instead.
        model.global_embedding = None
        fallback = first_stage_scores(model.global_text_embeds(words, mask), model.global_image_embeds(tokens))
        fallback = fallback.topk(2).indices
        assert torch.equal(shortlist_and_rerank(model, tokens, words, mask, 2).indices, fallback)


def test_the_settings_survive_save_and_load(tmp_path):
    model = tiny_model(global_contrastive_weight=0.25, global_temperature=0.1, global_pooling_queries=3)
    model.save_pretrained(tmp_path)
    loaded = SepsModel.from_pretrained(tmp_path)
    assert (loaded.config.global_contrastive_weight, loaded.config.global_temperature) == (0.25, 0.1)
    assert loaded.config.global_pooling_queries == 3
    torch.testing.assert_close(
        loaded.global_embedding.image_projection.weight, model.global_embedding.image_projection.weight
    )
    assert isinstance(SepsConfig.from_pretrained(tmp_path).global_temperature, float)


def _without_global_embedding_weights(folder) -> None:
    """Rewrites a saved model as one saved before the first stage existed: no `global_embedding.*` tensors."""
    from safetensors.torch import load_file, save_file

    weights_file = folder / "model.safetensors"
    tensors = {key: value for key, value in load_file(weights_file).items() if not key.startswith("global_embedding.")}
    save_file(tensors, weights_file, metadata={"format": "pt"})


def test_a_checkpoint_without_a_trained_first_stage_keeps_mean_pooled_shortlists(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    _without_global_embedding_weights(tmp_path)
    loaded = SepsModel.from_pretrained(tmp_path).eval()
    assert loaded.global_embedding is None and loaded.config.global_contrastive_weight == 0.0
    pixels, ids, mask = batch(3, seed=5)
    with torch.no_grad():
        tokens = loaded.encode_image(pixels)
        expected = F.normalize(tokens[:, 1:].mean(dim=1), dim=-1)[:, None]  # the patches, without [CLS]
        torch.testing.assert_close(loaded.global_image_embeds(tokens), expected)
    # Asked for explicitly, a fresh first stage is kept (to be trained), and loading info is still available.
    fresh, info = SepsModel.from_pretrained(tmp_path, global_contrastive_weight=1.0, output_loading_info=True)
    assert fresh.global_embedding is not None
    assert any(key.startswith("global_embedding.") for key in info["missing_keys"])
    # A checkpoint with its trained first stage keeps it.
    model.save_pretrained(tmp_path / "trained")
    assert SepsModel.from_pretrained(tmp_path / "trained").global_embedding is not None


def test_forward_with_return_loss_is_the_whole_objective():
    """`SepsModel.forward(return_loss=True)` trains the first stage too (as the training objective does)."""
    model = tiny_model(global_contrastive_weight=0.5).train()
    pixels, ids, mask = batch(4, 6)
    output = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_loss=True)
    seps_loss = output.alignment_loss + model.config.ratio_weight * output.ratio_loss
    torch.testing.assert_close(output.loss, seps_loss + 0.5 * output.global_contrastive_loss)
    output.loss.backward()
    for name, parameter in model.global_embedding.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def _two_axis_embedding(num_queries: int) -> SepsGlobalEmbedding:
    """2-d tokens; query 0 favours tokens along the first axis, query 1 along the second (sharply); the
    projection keeps query 0's first coordinate and the last query's second one."""
    embedding = SepsGlobalEmbedding(2, num_queries)  # one image vector of all queries
    with torch.no_grad():
        for pool, projection in ((embedding.image_pool, embedding.image_projection),
                                 (embedding.text_pool, embedding.text_projection)):  # fmt: skip
            pool.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0]])[:num_queries])
            projection.weight.zero_()
            projection.bias.zero_()
            projection.weight[0, 0] = projection.weight[1, -1] = 1.0
    return embedding


def test_several_pooling_queries_keep_several_objects_in_one_vector():
    # Two "objects" (tokens along each axis) and a background token.
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    both = _two_axis_embedding(2).embed_image(tokens)[:, 0]
    # Each query pools its own object with the same weight, so both coordinates come out equal.
    torch.testing.assert_close(both, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    # One query settles on one object: the other one is (almost) lost.
    assert _two_axis_embedding(1).embed_image(tokens)[0, 0, 1] < 0.01
    # Each query's softmax skips masked tokens: without the second object, query 1 pools the other two evenly.
    caption = _two_axis_embedding(2).embed_text(tokens, torch.tensor([[1, 0, 1]]))
    torch.testing.assert_close(caption, torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("detach", [True, False])
def test_detached_tokens_keep_the_contrastive_gradient_in_the_first_stage(detach):
    model = tiny_model(global_detach_tokens=detach).train()
    pixels, ids, mask = batch(4, 7)
    output = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_loss=True)
    output.global_contrastive_loss.backward()
    for name, parameter in model.global_embedding.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    seps_parameters = [p for name, p in model.named_parameters() if not name.startswith("global_embedding.")]
    reached_seps = any(p.grad is not None and p.grad.abs().sum() > 0 for p in seps_parameters)
    assert reached_seps is not detach


def test_a_first_stage_saved_before_pooling_queries_existed_loads_with_its_single_query(tmp_path):
    model = tiny_model(global_pooling_queries=1).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["global_pooling_queries"]
    config_file.write_text(json.dumps(saved))
    loaded = SepsModel.from_pretrained(tmp_path).eval()
    assert loaded.config.global_pooling_queries == 1
    pixels, _, _ = batch(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_global_image_features(pixels), model.get_global_image_features(pixels))
    # A config that says nothing of the first stage gets today's defaults.
    del saved["global_contrastive_weight"]
    assert SepsConfig.from_dict(saved).global_pooling_queries == SepsConfig().global_pooling_queries == 16


def test_the_first_stage_leaves_the_other_modules_initialisation_unchanged():
    """The SEPS side of a seeded model is the same with any first stage or none, so runs stay comparable."""
    reference = dict(tiny_model(global_contrastive_weight=0.0).named_parameters())
    for overrides in ({"global_pooling_queries": 1}, {"global_pooling_queries": 8}):
        for name, parameter in tiny_model(**overrides).named_parameters():
            if not name.startswith("global_embedding."):
                assert torch.equal(parameter, reference[name]), (overrides, name)


def test_the_random_state_after_building_a_model_does_not_depend_on_its_first_stage():
    """Training draws (shuffling, Gumbel noise) follow the model's construction: a first stage of any size, or none,
    leaves them where they were, so runs that differ only in the first stage see the same batches."""
    draws = []
    for overrides in ({"global_contrastive_weight": 0.0}, {"global_pooling_queries": 1}, {"global_pooling_queries": 8}):
        tiny_model(**overrides)  # seeds the global random state, then builds
        draws.append(torch.rand(4))
    for draw in draws[1:]:
        assert torch.equal(draw, draws[0])


@pytest.mark.parametrize("detach", [True, False])
def test_clipping_keeps_seps_gradients_apart_from_a_detached_first_stage(detach):
    """With detached tokens the first stage is a separate model: after clipping (a norm small enough to bite), SEPS's
    gradients are those of the same model without a first stage. Without detaching, one norm covers both."""
    from accelerate import Accelerator

    from transformers_seps.train.training import clip_gradients

    pixels, ids, mask = batch(4, 2)
    gradients = {}
    for weight in (0.0, 1.0):
        model = tiny_model(global_contrastive_weight=weight, global_detach_tokens=detach).train()
        objective = SepsForRetrievalTraining(model)
        objective(pixels, ids, mask, torch.arange(4), selection_seed=3).loss.backward()
        clip_gradients(Accelerator(cpu=True), objective, model, max_norm=1e-3)
        gradients[weight] = {
            name: parameter.grad.clone()
            for name, parameter in model.named_parameters()
            if parameter.grad is not None and not name.startswith("global_embedding.")
        }
        if weight:
            first_stage_norm = torch.cat([p.grad.flatten() for p in model.global_embedding.parameters()]).norm()
            assert first_stage_norm <= 1e-3 * (1 + 1e-4)
    assert gradients[0.0].keys() == gradients[1.0].keys()
    same = [
        torch.allclose(gradients[0.0][name], gradients[1.0][name], rtol=1e-5, atol=1e-12) for name in gradients[0.0]
    ]
    assert all(same) if detach else not all(same)
