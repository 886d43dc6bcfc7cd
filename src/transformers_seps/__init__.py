"""SEPS (Semantic-Enhanced Patch Slimming) for Hugging Face Transformers: the model library.

Importing the package registers `SepsConfig`, `SepsModel` and `SepsProcessor` with the Auto classes (and
`EfficientNetLiteConfig`/`EfficientNetLiteModel`, the pretrained CNN backbone of the synthetic demo). The rest of
the library (captioning, retrieval, the training objective, metrics, visualization) is imported on first use of
one of its names. The runners live in `transformers_seps.train`, the publishing tools in `transformers_seps.tools`;
the README's "Layout" section tells where each thing lives.
"""

import importlib
from typing import Any

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_seps import SepsConfig
from .efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
from .modeling_seps import SepsModel, SepsOutput, SepsPreTrainedModel
from .processing_seps import SepsProcessor

AutoConfig.register(SepsConfig.model_type, SepsConfig, exist_ok=True)
AutoModel.register(SepsConfig, SepsModel, exist_ok=True)
AutoProcessor.register(SepsConfig, SepsProcessor, exist_ok=True)
# save_pretrained writes `auto_map` and copies the code files, so `trust_remote_code=True` loads a saved
# model in a process that cannot import this package.
SepsConfig.register_for_auto_class()
SepsModel.register_for_auto_class("AutoModel")
SepsProcessor.register_for_auto_class()

# Names imported from their module on first access (PEP 562): none of these modules is needed to load a model.
_LAZY_NAMES = {
    "captioning": (
        "DENSE_CAPTION_GENERATION_KWARGS",
        "DENSE_CAPTION_PROMPT",
        "DenseCaptionSummary",
        "SepsDenseCaptioner",
        "is_error_record",
        "list_images",
        "read_dense_captions",
        "write_dense_captions",
    ),
    "loss": ("SepsForRetrievalTraining", "gather_with_grad", "pad_to_global_length"),
    "metrics": ("fold_metrics", "markdown_table", "mean_metrics", "retrieval_metrics"),
    "retrieval": ("RetrievalResult", "SepsRetriever", "score_pairs", "shortlist_and_rerank"),
    "visualization": ("plot_patch_selection", "plot_patch_word_alignment"),
}
_MODULE_OF_NAME = {name: module for module, names in _LAZY_NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF_NAME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF_NAME])


__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLiteModel",
    "SepsConfig",
    "SepsModel",
    "SepsOutput",
    "SepsPreTrainedModel",
    "SepsProcessor",
    *_MODULE_OF_NAME,
]
