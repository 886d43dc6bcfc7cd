"""Training on the cached tokens of frozen backbones (`transformers_seps.feature_cache`): the same loss and gradients
as encoding every batch, only for frozen backbones, and the same trained model from the training script."""

import sys
from unittest.mock import patch

import pytest
import torch
from conftest import random_captions, tiny_model
from safetensors.torch import load_file
from test_training import SCRIPT, run

from transformers_seps.feature_cache import FrozenFeatureCache
from transformers_seps.loss import SepsForRetrievalTraining

IMAGE_IDS = torch.tensor([3, 8, 5, 9])
CAPTION_INDICES = torch.tensor([10, 11, 12, 13])


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids, mask = random_captions(4, 7, seed=1)
    dense_ids, dense_mask = random_captions(4, 12, seed=2)
    return {
        "pixel_values": torch.randn(4, 3, 40, 40),
        "input_ids": ids,
        "attention_mask": mask,
        "image_ids": IMAGE_IDS,
        "dense_input_ids": dense_ids,
        "dense_attention_mask": dense_mask,
    }


def frozen_model(variant: str, freeze_vision: bool = True):
    model = tiny_model(variant).train()
    model.text_model.requires_grad_(False).eval()
    if freeze_vision:
        model.vision_model.requires_grad_(False).eval()
    return model


def filled_cache(model, inputs: dict[str, torch.Tensor], images: bool = True) -> FrozenFeatureCache:
    cache = FrozenFeatureCache()
    if images:
        cache.add_images(model, inputs["image_ids"].tolist(), inputs["pixel_values"])
    # Batches of 3: padded batches of other shapes than the training batch's, trimmed to their longest text.
    cache.add_texts("captions", model, CAPTION_INDICES.tolist(), inputs["input_ids"], inputs["attention_mask"], 3)
    cache.add_texts("dense", model, IMAGE_IDS.tolist(), inputs["dense_input_ids"], inputs["dense_attention_mask"], 3)
    return cache


def loss_and_gradients(objective: SepsForRetrievalTraining, **inputs) -> tuple[float, dict[str, torch.Tensor]]:
    objective.model.zero_grad()
    output = objective(**inputs, selection_seed=7)
    output.loss.backward()
    gradients = {name: p.grad.clone() for name, p in objective.model.named_parameters() if p.grad is not None}
    return output.loss.item(), gradients


def assert_same(expected: tuple[float, dict], got: tuple[float, dict]) -> None:
    assert got[0] == pytest.approx(expected[0], rel=1e-6)
    assert set(got[1]) == set(expected[1])
    for name, gradient in expected[1].items():
        torch.testing.assert_close(got[1][name], gradient, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_cached_tokens_give_the_loss_and_gradients_of_encoding_the_batch(variant):
    inputs = batch()
    model = frozen_model(variant)
    encoded = loss_and_gradients(SepsForRetrievalTraining(model), **inputs)
    objective = SepsForRetrievalTraining(model, filled_cache(model, inputs))
    assert_same(encoded, loss_and_gradients(objective, image_ids=IMAGE_IDS, caption_indices=CAPTION_INDICES))
    # A batch that carries its inputs is encoded, cache or not.
    assert_same(encoded, loss_and_gradients(objective, **inputs))


def test_a_trained_vision_backbone_with_cached_texts():
    inputs = batch()
    model = frozen_model("paper", freeze_vision=False)
    encoded = loss_and_gradients(SepsForRetrievalTraining(model), **inputs)
    objective = SepsForRetrievalTraining(model, filled_cache(model, inputs, images=False))
    cached = loss_and_gradients(
        objective, pixel_values=inputs["pixel_values"], image_ids=IMAGE_IDS, caption_indices=CAPTION_INDICES
    )
    assert_same(encoded, cached)
    assert any(name.startswith("vision_model.") for name in cached[1])


def test_tokens_of_a_backbone_that_trains_are_refused():
    inputs = batch()
    model = frozen_model("paper")
    cache = filled_cache(model, inputs)
    model.vision_model.requires_grad_(True)
    objective = SepsForRetrievalTraining(model, cache)
    with pytest.raises(ValueError, match="frozen vision backbone"):
        objective(image_ids=IMAGE_IDS, caption_indices=CAPTION_INDICES)
    with pytest.raises(ValueError, match="frozen vision backbone"):
        cache.add_images(model, IMAGE_IDS.tolist(), inputs["pixel_values"])
    model.vision_model.requires_grad_(False).train()
    with pytest.raises(ValueError, match="eval mode"):
        cache.add_images(model, IMAGE_IDS.tolist(), inputs["pixel_values"])


def test_missing_inputs_are_named():
    inputs = batch()
    model = frozen_model("paper")
    with pytest.raises(ValueError, match="no feature_cache"):
        SepsForRetrievalTraining(model)(image_ids=IMAGE_IDS, input_ids=inputs["input_ids"])
    objective = SepsForRetrievalTraining(model, filled_cache(model, inputs))
    with pytest.raises(KeyError, match=r"no cached captions for keys \[99\]"):
        objective(image_ids=IMAGE_IDS, caption_indices=torch.tensor([10, 11, 12, 99]))
    with pytest.raises(ValueError, match="image_ids is required"):
        objective(caption_indices=CAPTION_INDICES)


def test_text_tokens_are_padded_to_the_longest_of_the_batch():
    model = frozen_model("paper")
    ids, mask = random_captions(3, 9, seed=4, min_len=2)
    cache = FrozenFeatureCache()
    cache.add_texts("captions", model, [0, 1, 2], ids, mask, batch_size=2, progress=False)
    lengths = mask.sum(dim=1)
    assert [len(cache.captions[key]) for key in range(3)] == lengths.tolist()
    hidden, padded_mask = cache.text_tokens("captions", torch.tensor([2, 0]), torch.device("cpu"))
    assert hidden.shape[:2] == padded_mask.shape == (2, int(lengths[[2, 0]].max()))
    assert padded_mask.sum(dim=1).tolist() == lengths[[2, 0]].tolist()
    assert (hidden[~padded_mask.bool()] == 0).all()
    assert cache.nbytes == sum(4 * t.numel() for t in cache.captions.values())


def test_a_text_given_twice_is_encoded_once_with_the_tokens_of_encoding_it_alone():
    model = frozen_model("paper")
    ids, mask = random_captions(2, 9, seed=5, min_len=3)
    ids, mask = ids[[0, 1, 0]], mask[[0, 1, 0]]  # keys 7 and 9 hold the same caption
    cache = FrozenFeatureCache()
    with patch.object(model, "encode_text_backbone", wraps=model.encode_text_backbone) as encode:
        cache.add_texts("captions", model, [7, 8, 9], ids, mask, batch_size=8, progress=False)
    assert encode.call_args.args[0].shape[0] == 2  # one batch of the two distinct captions
    assert torch.equal(cache.captions[7], cache.captions[9])
    with torch.no_grad():
        alone = model.encode_text_backbone(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])[0]
    torch.testing.assert_close(cache.captions[7], alone, rtol=1e-5, atol=1e-5)
    assert not torch.equal(cache.captions[7][: len(cache.captions[8])], cache.captions[8][: len(cache.captions[7])])


def train_command(output_dir, data_root, *extra: str) -> list[str]:
    return [
        sys.executable, str(SCRIPT),
        "--output_dir", str(output_dir),
        "--data_root", str(data_root),
        "--synthetic_num_train", "48",
        "--synthetic_num_dev", "8",
        "--synthetic_num_test", "8",
        "--image_size", "64",
        "--embed_dim", "32",
        "--per_device_train_batch_size", "8",
        "--num_train_epochs", "1",  # one dev evaluation: the best model is the trained one
        "--eval_test", "false",
        "--generate_synthetic",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_the_training_script_trains_the_same_model_on_cached_tokens(tmp_path):
    """The default synthetic run (both backbones frozen) with and without the cache: the same trained model, up to
    the float rounding of encoding the inputs in other batches."""
    data_root = tmp_path / "data"
    trained = []
    for cache in ("true", "false"):
        output = tmp_path / f"cache-{cache}"
        # At the paper's lr: Adam's first steps move each weight by about the lr whatever the gradient's size, so at
        # the synthetic default (1e-3) the float rounding of other batch shapes shows up past the tolerance.
        run(train_command(output, data_root, "--cache_frozen_features", cache, "--learning_rate", "1e-4"))
        trained.append(load_file(str(output / "best" / "model.safetensors")))
    cached, encoded = trained
    assert set(cached) == set(encoded)
    for name, tensor in encoded.items():
        torch.testing.assert_close(cached[name], tensor, atol=1e-4, rtol=1e-3, msg=name)


def test_a_split_encoded_from_its_cached_tokens_equals_the_encoded_split(tiny_synthetic):
    from conftest import tiny_model_with_processor

    from transformers_seps.train.data import load_retrieval_split
    from transformers_seps.train.evaluation import cache_frozen_features, encode_split

    model, processor = tiny_model_with_processor("paper")
    model.requires_grad_(False)
    split = load_retrieval_split(tiny_synthetic, "synthetic", "test")
    cache = cache_frozen_features(model, processor, split, batch_size=3, progress=False)
    assert set(cache.images) == set(split.image_ids) and set(cache.captions) == set(range(split.num_captions))
    encoded = encode_split(model, processor, split, batch_size=4, progress=False)
    from_cache = encode_split(model, processor, split, batch_size=4, progress=False, feature_cache=cache)
    torch.testing.assert_close(from_cache.image_embeds, encoded.image_embeds, atol=1e-5, rtol=1e-4)
    for embeds, mask in (("text_embeds", "text_mask"), ("dense_embeds", "dense_mask")):
        assert torch.equal(getattr(from_cache, mask), getattr(encoded, mask))
        real = getattr(encoded, mask).bool()  # what padding holds differs, and never reaches a score
        torch.testing.assert_close(
            getattr(from_cache, embeds)[real], getattr(encoded, embeds)[real], atol=1e-5, rtol=1e-4
        )
