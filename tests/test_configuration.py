import pytest
from conftest import tiny_bert_config, tiny_config, tiny_swin_config, tiny_vit_config
from transformers import AutoConfig, BertConfig, SwinConfig, ViTConfig

from transformers_seps import SepsConfig


def test_vit_224_defaults_match_the_spec():
    config = SepsConfig(vision_config=ViTConfig(), text_config=BertConfig())
    assert (config.num_patches, config.vision_cls_token) == (196, True)
    assert config.num_kept_patches == 98  # ceil(196 * 0.5)
    assert config.num_aggregated_patches == 39  # int(196 * 0.4 * 0.5)
    assert config.variant == "paper" and config.beta == 0.25 and config.relevance_topk == 5


def test_swin_224_has_49_patches_and_no_cls_token():
    swin = SwinConfig(image_size=224, patch_size=4, depths=[2, 2, 18, 2])
    config = SepsConfig(vision_config=swin, text_config=BertConfig())
    assert (config.num_patches, config.vision_cls_token) == (49, False)
    assert config.num_aggregated_patches == 9  # int(49 * 0.4 * 0.5)


def test_sub_configs_from_dicts_with_model_type():
    config = SepsConfig(vision_config=tiny_swin_config().to_dict(), text_config=tiny_bert_config().to_dict())
    assert isinstance(config.vision_config, SwinConfig) and isinstance(config.text_config, BertConfig)
    assert config.num_patches == 16


def test_save_and_load_round_trip(tmp_path):
    config = tiny_config("official", sparse_ratio=0.6, margin=0.3)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SepsConfig)
    for field in ("variant", "sparse_ratio", "margin", "num_patches", "vision_cls_token", "embed_dim"):
        assert getattr(loaded, field) == getattr(config, field)
    assert loaded.vision_config.to_dict() == config.vision_config.to_dict()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("variant", "fast", "variant must be one of"),
        ("sparse_ratio", 0.0, "sparse_ratio must be in (0, 1]"),
        ("sparse_ratio", 1.5, "sparse_ratio must be in (0, 1]"),
        ("aggr_ratio", -0.1, "aggr_ratio must be in (0, 1]"),
        ("beta", 0.7, "beta must be in [0, 0.5]"),
        ("relevance_topk", 0, "relevance_topk must be an integer >= 1"),
        ("embed_dim", 0, "embed_dim must be an integer >= 1"),
        ("gumbel_tau", 0.0, "gumbel_tau must be > 0"),
        ("margin", -0.2, "margin must be >= 0"),
        ("max_violation_warmup_epochs", -1, "max_violation_warmup_epochs must be an integer >= 0"),
        ("num_patches", 0, "num_patches must be an integer >= 1"),
    ],
)
def test_invalid_values_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        tiny_config(**{field: value})


def test_too_few_patches_to_aggregate_is_rejected():
    with pytest.raises(ValueError, match="aggregated tokens"):
        SepsConfig(vision_config=tiny_vit_config(image_size=16, patch_size=8), text_config=tiny_bert_config())
