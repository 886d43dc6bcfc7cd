"""SEPS (Semantic-Enhanced Patch Slimming) for Hugging Face Transformers.

Importing the package registers `SepsConfig`, `SepsModel` and `SepsProcessor` with the Auto classes (and
`EfficientNetLiteConfig`/`EfficientNetLiteModel`, the pretrained CNN backbone of the synthetic demo).
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .captioning import (
    DENSE_CAPTION_GENERATION_KWARGS,
    DENSE_CAPTION_PROMPT,
    DenseCaptionSummary,
    SepsDenseCaptioner,
    is_error_record,
    list_images,
    read_dense_captions,
    write_dense_captions,
)
from .configuration_seps import SepsConfig
from .convert_official import (
    OfficialCheckpoint,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
    load_official_model,
)
from .efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
from .modeling_seps import SepsModel, SepsOutput, SepsPreTrainedModel
from .processing_seps import SepsProcessor
from .visualization import plot_patch_selection, plot_patch_word_alignment

AutoConfig.register(SepsConfig.model_type, SepsConfig, exist_ok=True)
AutoModel.register(SepsConfig, SepsModel, exist_ok=True)
AutoProcessor.register(SepsConfig, SepsProcessor, exist_ok=True)
# save_pretrained writes `auto_map` and copies the code files, so `trust_remote_code=True` loads a saved
# model in a process that cannot import this package.
SepsConfig.register_for_auto_class()
SepsModel.register_for_auto_class("AutoModel")
SepsProcessor.register_for_auto_class()

__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLiteModel",
    "DENSE_CAPTION_GENERATION_KWARGS",
    "DENSE_CAPTION_PROMPT",
    "DenseCaptionSummary",
    "SepsDenseCaptioner",
    "is_error_record",
    "list_images",
    "read_dense_captions",
    "write_dense_captions",
    "SepsConfig",
    "SepsModel",
    "SepsOutput",
    "SepsPreTrainedModel",
    "SepsProcessor",
    "OfficialCheckpoint",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "load_official_checkpoint",
    "load_official_model",
    "plot_patch_selection",
    "plot_patch_word_alignment",
]
