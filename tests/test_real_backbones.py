"""Backbones as users bring them: the paper's ViT-B/16, Swin-B and BERT-base at their real sizes (configs written
here, random weights, nothing downloaded), and vision configs that do not state their patch layout (CNNs)."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel, ConvNextConfig, ResNetConfig, SwinConfig, SwinModel, ViTConfig, ViTModel

from tests.conftest import EMBED_DIM, tiny_bert_config, tiny_swin_config, tiny_vit_config
from transformers_seps import SepsConfig, SepsModel, modeling_seps
from transformers_seps.configuration_seps import infer_patch_layout, paper_ratios, vision_image_size
from transformers_seps.train.training import build_optimizer


def vit_base_16(image_size: int, **overrides) -> ViTConfig:
    """google/vit-base-patch16-{224,384}: 12 layers of width 768, patches of 16 px."""
    kwargs = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=image_size,
        patch_size=16,
    )
    return ViTConfig(**{**kwargs, **overrides})


def swin_base(image_size: int, window_size: int, **overrides) -> SwinConfig:
    """microsoft/swin-base-patch4-window{7,12}-{224,384}: 4 stages, width 128 doubling to 1024."""
    kwargs = dict(
        image_size=image_size,
        patch_size=4,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=window_size,
    )
    return SwinConfig(**{**kwargs, **overrides})


def bert_base(**overrides) -> BertConfig:
    """bert-base-uncased: BertConfig's defaults (12 layers of width 768, 30522 word pieces, 512 positions)."""
    return BertConfig(**overrides)


# (vision config, patches N, [CLS] token, output width): the paper's four image encoders.
REAL_VISION = {
    "vit-b16-224": (vit_base_16(224), 196, True, 768),
    "vit-b16-384": (vit_base_16(384), 576, True, 768),
    "swin-b-224-window7": (swin_base(224, 7), 49, False, 1024),
    "swin-b-384-window12": (swin_base(384, 12), 144, False, 1024),
}


@pytest.mark.parametrize("name", REAL_VISION)
def test_real_configs_give_the_paper_patch_layout(name):
    vision_config, num_patches, cls_token, width = REAL_VISION[name]
    assert infer_patch_layout(vision_config) == (num_patches, cls_token)
    config = SepsConfig(vision_config=vision_config, text_config=bert_base(), variant="paper")
    assert (config.num_patches, config.vision_cls_token) == (num_patches, cls_token)
    assert config.vision_config.hidden_size == width
    assert config.max_text_length == 512


def paired_batch(model: SepsModel, image_size: int, dense: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two images with one caption each (12 and 9 word pieces) and, optionally, a 40-token dense caption each."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    input_ids = torch.randint(1000, vocab, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    batch = {
        "pixel_values": torch.randn(2, 3, image_size, image_size, generator=generator),
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
        "image_ids": torch.arange(2),
    }
    if dense:
        batch["dense_input_ids"] = torch.randint(1000, vocab, (2, 40), generator=generator)
        batch["dense_attention_mask"] = torch.ones(2, 40, dtype=torch.long)
    return batch


def check_forward_and_training_step(model: SepsModel, image_size: int, expected_tokens: int) -> None:
    """Eval forward: (2, 2) finite scores, L_v image tokens; then one AdamW step of the training recipe at batch 2:
    finite loss, finite non-zero gradients in the text model, the head and the vision backbone, which all move."""
    dense = model.config.variant == "paper"
    batch = paired_batch(model, image_size, dense)
    model.eval()
    with torch.no_grad():
        image_embeds = model.encode_image(batch["pixel_values"])
        scores = model(**batch).logits_per_image
    assert image_embeds.shape == (2, expected_tokens, EMBED_DIM)
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()

    model.train()
    optimizer = build_optimizer(model, learning_rate=1e-4)
    output = model(**batch, return_loss=True, max_violation=False)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    aggregator = model.head.aggregator if model.config.variant == "official" else model.head.sparse_aggregator
    watched = {
        "text word embeddings": model.text_model.embeddings.word_embeddings.weight,
        "aggregation MLP": aggregator.mlp[1].weight,
    }
    # The authors train the official variant's patch tokens without gradient; its [CLS] token carries the vision
    # backbone's (a Swin has none).
    if model.config.variant == "paper" or model.config.vision_cls_token:
        watched["vision patch embedding"] = model.vision_model.embeddings.patch_embeddings.projection.weight
    for name, parameter in watched.items():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    before = {name: parameter.detach().clone() for name, parameter in watched.items()}
    optimizer.step()
    for name, parameter in watched.items():
        assert not torch.equal(before[name], parameter.detach()), name


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_vit_b16_224_and_bert_base_at_full_depth(variant):
    """The paper's main configuration, every layer: 86M + 110M parameters, forward and a training step on CPU."""
    torch.manual_seed(0)
    config = SepsConfig(vision_config=vit_base_16(224), text_config=bert_base(), embed_dim=EMBED_DIM, variant=variant)
    model = SepsModel(config)
    assert sum(p.numel() for p in model.vision_model.parameters()) > 85_000_000
    assert sum(p.numel() for p in model.text_model.parameters()) > 108_000_000
    assert (config.num_patches, config.num_kept_patches, config.num_aggregated_patches) == (196, 98, 39)
    check_forward_and_training_step(model, 224, 1 + 196)


# The other three encoders with fewer layers per stage: the patch grid, the windows, the widths and the number of
# stages (so the token count and the output width) are those of the real config; only the depth is cut.
SHALLOW_VISION = {
    "vit-b16-384": (vit_base_16(384, num_hidden_layers=1), 384, 1 + 576),
    "swin-b-224-window7": (swin_base(224, 7, depths=[1, 1, 1, 1]), 224, 49),
    "swin-b-384-window12": (swin_base(384, 12, depths=[1, 1, 1, 1]), 384, 144),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("name", SHALLOW_VISION)
def test_vit_384_and_swin_b_with_bert_base_width(name, variant):
    vision_config, image_size, expected_tokens = SHALLOW_VISION[name]
    torch.manual_seed(0)
    config = SepsConfig(
        vision_config=vision_config, text_config=bert_base(num_hidden_layers=1), embed_dim=EMBED_DIM, variant=variant
    )
    assert config.num_patches + int(config.vision_cls_token) == expected_tokens
    model = SepsModel(config)
    check_forward_and_training_step(model, image_size, expected_tokens)


# ------------------------------------------------------------------------------------ the paper's ratios


def test_paper_ratios_by_backbone():
    assert paper_ratios(vit_base_16(224)) == (0.5, 0.4)
    assert paper_ratios(swin_base(384, 12)) == (0.8, 0.6)
    assert paper_ratios(ConvNextConfig()) == (0.5, 0.4)


def test_from_backbones_takes_the_ratios_of_its_backbone_unless_given():
    text = BertModel(tiny_bert_config())
    swin = SepsModel.from_backbones(SwinModel(tiny_swin_config()), text, embed_dim=16)
    assert (swin.config.sparse_ratio, swin.config.aggr_ratio) == (0.8, 0.6)
    vit = SepsModel.from_backbones(ViTModel(tiny_vit_config(), add_pooling_layer=False), text, embed_dim=16)
    assert (vit.config.sparse_ratio, vit.config.aggr_ratio) == (0.5, 0.4)
    given = SepsModel.from_backbones(SwinModel(tiny_swin_config()), text, embed_dim=16, sparse_ratio=0.6)
    assert (given.config.sparse_ratio, given.config.aggr_ratio) == (0.6, 0.6)


# ------------------------------------------------------------- vision configs with no stated patch layout


def tiny_convnext_config(**overrides) -> ConvNextConfig:
    return ConvNextConfig(**{"hidden_sizes": [8, 16, 24, 40], "depths": [1, 1, 1, 1], **overrides})


def tiny_resnet_config() -> ResNetConfig:
    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 40], depths=[1, 1, 1, 1], layer_type="basic")


CNN_CONFIGS = {"convnext": tiny_convnext_config, "resnet": tiny_resnet_config}


@pytest.mark.parametrize("name", CNN_CONFIGS)
def test_a_cnn_config_gets_its_layout_measured_at_init(name, variant):
    vision_config = CNN_CONFIGS[name]()
    assert infer_patch_layout(vision_config) == (None, None)
    config = SepsConfig(
        vision_config=vision_config, text_config=tiny_bert_config(), embed_dim=EMBED_DIM, variant=variant
    )
    assert config.num_patches is None
    torch.manual_seed(0)
    model = SepsModel(config)
    # Stride 32 at 224 px: a 7x7 map of the last stage's 40 channels; no [CLS].
    assert (model.config.num_patches, model.config.vision_cls_token, model.config.vision_hidden_size) == (49, False, 40)
    assert model.vision_projection.in_features == 40
    # The dry forward ran in eval mode, so no BatchNorm statistics moved, and the backbone is back in training mode.
    for module in model.vision_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.num_batches_tracked.item() == 0
    assert all(module.training for module in model.vision_model.modules())
    model.eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert model.encode_image(pixels).shape == (2, 49, EMBED_DIM)
        scores = model(pixels, torch.randint(3, 120, (3, 6))).logits_per_image
    assert scores.shape == (2, 3) and torch.isfinite(scores).all()


def test_the_measured_layout_survives_a_save_load_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = SepsConfig(
        vision_config=tiny_convnext_config(image_size=128), text_config=tiny_bert_config(), embed_dim=16
    )
    model = SepsModel(config).eval()
    assert (model.config.num_patches, model.config.vision_hidden_size) == (16, 40)  # 128 px / 32 = a 4x4 map
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["num_patches"], saved["vision_cls_token"], saved["vision_hidden_size"]) == (16, False, 40)

    def no_probe(*args, **kwargs):
        raise AssertionError("a loaded model reads its layout from the config")

    monkeypatch.setattr(modeling_seps, "_probe_vision_backbone", no_probe)
    loaded = SepsModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_patches == 16
    pixels, input_ids = torch.randn(2, 3, 128, 128), torch.randint(3, 120, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixels, input_ids).logits_per_image, model(pixels, input_ids).logits_per_image
        )


def test_a_timm_wrapper_config_takes_the_same_path():
    """timm cannot be installed here; its configs state no patch layout either, and their input size sits in
    `pretrained_cfg`, which is where the dry forward takes its image size from."""
    from transformers import TimmWrapperConfig

    timm_config = TimmWrapperConfig(architecture="convnext_tiny", pretrained_cfg={"input_size": [3, 288, 288]})
    assert infer_patch_layout(timm_config) == (None, None)
    assert vision_image_size(timm_config) == 288
    assert vision_image_size(ResNetConfig()) == 224
    assert vision_image_size(vit_base_16(384)) == 384
