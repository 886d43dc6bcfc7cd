"""SEPS (Semantic-Enhanced Patch Slimming) for Hugging Face Transformers: the model library.

`import transformers_seps` is light: it imports neither torch nor any module of the library, so that the command
lines in `examples/` answer `--help` at once. Each name below is imported from its module on first use (PEP 562).
The first use of the model's names (`SepsConfig`, `SepsModel`, `SepsProcessor`, ...) registers them with the Auto
classes; so does `AutoConfig`/`AutoModel`/`AutoProcessor.from_pretrained` of a saved SEPS folder, which finds
`SepsConfig` and `SepsProcessor` by name in this package, as Transformers finds its own models (`_LAZY_AUTO_NAMES`).

The runners live in `transformers_seps.train`, the publishing tools in `transformers_seps.tools`; the docs'
"Layout" section (docs/conformance.md) tells where each thing lives.
"""

import importlib
import sys
from typing import Any

# The release (CHANGELOG.md); setup.cfg reads it from here.
__version__ = "0.1.0"

# Names imported from their module on first access.
_LAZY_NAMES = {
    "configuration_seps": ("SepsConfig",),
    "modeling_seps": (
        "SEPS_HEADS",
        "SepsHead",
        "SepsModel",
        "SepsOfficialHead",
        "SepsFeaturesOutput",
        "SepsOutput",
        "SepsPaperHead",
        "SepsPreTrainedModel",
    ),
    "processing_seps": ("SepsProcessor",),
    "efficientnet_lite": ("EfficientNetLiteConfig", "EfficientNetLiteModel"),
    "caption_settings": ("DENSE_CAPTION_GENERATION_KWARGS", "DENSE_CAPTION_PROMPT"),
    "captioning": (
        "DenseCaptionSummary",
        "SepsDenseCaptioner",
        "is_error_record",
        "list_images",
        "read_dense_captions",
        "write_dense_captions",
    ),
    "global_embedding": ("SepsGlobalEmbedding", "global_contrastive_loss"),
    "loss": ("SepsForRetrievalTraining", "gather_with_grad", "pad_to_global_length"),
    "metrics": ("fold_metrics", "markdown_table", "mean_metrics", "retrieval_metrics"),
    "retrieval": ("RetrievalResult", "SepsRetriever", "score_pairs", "score_processed", "shortlist_and_rerank"),
    "calibration": ("calibration_loss", "fit_logit_scale"),
    "pipelines": ("SepsImageTextMatchingPipeline", "SepsZeroShotImageClassificationPipeline"),
    "visualization": ("plot_patch_selection", "plot_patch_word_alignment"),
}
_MODULE_OF_NAME = {name: module for module, names in _LAZY_NAMES.items() for name in names}
# The modules whose first use registers the model with the Auto classes.
_MODEL_MODULES = ("configuration_seps", "modeling_seps", "processing_seps", "efficientnet_lite")


def register_auto_classes() -> None:
    """Register `SepsConfig`, `SepsModel` and `SepsProcessor` with the Auto classes, and mark them for
    `save_pretrained` to write `auto_map` and copy the code files, so that `trust_remote_code=True` loads a saved
    model in a process that cannot import this package. (EfficientNet-Lite registers itself on import.)
    `SepsModel` is also the model of the `zero-shot-image-classification` pipeline (its calibrated logits); the
    pipelines module registers the `image-text-matching` task, so that `pipeline(...)` of a SEPS folder finds it
    whatever was imported first (loading the folder's config gets here)."""
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

    from . import pipelines  # noqa: F401  (registers the pipelines)
    from .configuration_seps import SepsConfig
    from .modeling_seps import SepsModel
    from .processing_seps import SepsProcessor

    AutoConfig.register(SepsConfig.model_type, SepsConfig, exist_ok=True)
    AutoModel.register(SepsConfig, SepsModel, exist_ok=True)
    AutoProcessor.register(SepsConfig, SepsProcessor, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(SepsConfig, SepsModel, exist_ok=True)
    SepsConfig.register_for_auto_class()
    SepsModel.register_for_auto_class("AutoModel")
    SepsProcessor.register_for_auto_class()


def _add_lazy_auto_names() -> None:
    """Let Transformers' Auto classes find SEPS by name, without importing it now: Transformers maps a model type
    to its config and processor class names and imports them from `transformers.models.<type>` on first use;
    for "seps" that module is this package, whose `__getattr__` then registers everything (torch-free until then)."""
    try:
        from transformers.models.auto import auto_mappings
    except ImportError:  # a Transformers 5 release without the name tables: register now (imports torch)
        register_auto_classes()
        return
    auto_mappings.CONFIG_MAPPING_NAMES.setdefault("seps", "SepsConfig")
    auto_mappings.PROCESSOR_MAPPING_NAMES.setdefault("seps", "SepsProcessor")
    # `configuration_auto` copies the config names when it is imported: when Transformers' Auto classes (or
    # `transformers.pipeline`) were imported before this package, the name goes into that copy too (else a saved
    # folder would ask for `trust_remote_code=True`).
    configuration_auto = sys.modules.get("transformers.models.auto.configuration_auto")
    if configuration_auto is not None:
        configuration_auto.CONFIG_MAPPING_NAMES.setdefault("seps", "SepsConfig")
    sys.modules.setdefault("transformers.models.seps", sys.modules[__name__])


def __getattr__(name: str) -> Any:
    module = _MODULE_OF_NAME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module in _MODEL_MODULES:
        register_auto_classes()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF_NAME])


_add_lazy_auto_names()

__all__ = ["register_auto_classes", *_MODULE_OF_NAME]
