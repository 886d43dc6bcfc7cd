"""SEPS model configuration (docs/model.md, paper arXiv 2511.01390)."""

import math
import numbers
from collections.abc import Callable
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Registers the EfficientNet-Lite backbone with the Auto classes, so that a SEPS config naming it loads, also as
# remote code (`trust_remote_code=True` copies this module's relative imports).
from .efficientnet_lite import EfficientNetLiteConfig  # noqa: F401

VARIANTS = ("paper", "official")

# Backbones whose `last_hidden_state` starts with a [CLS] token before the patch grid.
_CLS_TOKEN_MODEL_TYPES = ("vit", "deit", "dinov2", "beit", "data2vec-vision", "vit_msn", "vit_mae")
_SWIN_MODEL_TYPES = ("swin", "swinv2")
DEFAULT_IMAGE_SIZE = 224

# (sparse_ratio, aggr_ratio) of the paper's runs: rho = 0.5 on ViT and 0.8 on Swin (paper, section 4.3); the
# authors' training commands (their README) pair them with aggr_ratio 0.4 and 0.6.
_VIT_RATIOS = (0.5, 0.4)
_SWIN_RATIOS = (0.8, 0.6)

# Text models that number positions from `pad_token_id + 1` (RoBERTa's embeddings), so that
# `max_position_embeddings - pad_token_id - 1` tokens fit.
_PADDING_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert", "data2vec-text")


def paper_ratios(vision_config: PreTrainedConfig) -> tuple[float, float]:
    """`(sparse_ratio, aggr_ratio)` the SEPS authors use with this kind of backbone: (0.8, 0.6) for Swin,
    (0.5, 0.4) for ViT and anything else."""
    if getattr(vision_config, "model_type", "") in _SWIN_MODEL_TYPES:
        return _SWIN_RATIOS
    return _VIT_RATIOS


def vision_image_size(vision_config: PreTrainedConfig) -> int:
    """Side of the images a vision backbone expects: `image_size` of its config, else the input size of a timm
    model's pretrained config, else `DEFAULT_IMAGE_SIZE` (224, as ConvNeXt and ResNet are trained)."""
    size = getattr(vision_config, "image_size", None)
    if size is None:
        pretrained_cfg = getattr(vision_config, "pretrained_cfg", None) or {}
        size = pretrained_cfg.get("input_size", (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE))[-1]
    return size[0] if isinstance(size, (list, tuple)) else size


def infer_patch_layout(vision_config: PreTrainedConfig) -> tuple[int | None, bool | None]:
    """Number of spatial patches and presence of a [CLS] token for known backbones.

    ViT-like: (image_size / patch_size)^2 patches after a [CLS] token; Swin: the last stage's grid,
    (image_size / patch_size / 2^(stages - 1))^2, no [CLS]. Returns ``(None, None)`` when the config alone
    does not tell (CNNs such as ConvNeXt, ResNet or `timm_wrapper` models); `SepsModel` then measures the
    layout with a dry forward of a blank image and records it in its config.
    """
    model_type = getattr(vision_config, "model_type", "")
    image_size = getattr(vision_config, "image_size", None)
    patch_size = getattr(vision_config, "patch_size", None)
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    if isinstance(patch_size, (list, tuple)):
        patch_size = patch_size[0]
    if image_size is None or patch_size is None:
        return None, None
    if model_type in _CLS_TOKEN_MODEL_TYPES:
        return (image_size // patch_size) ** 2, True
    if model_type in _SWIN_MODEL_TYPES:
        side = image_size // patch_size // 2 ** (len(vision_config.depths) - 1)
        return side * side, False
    return None, None


def _has_kind(value: Any, kind: type) -> bool:
    """Whether `value` is a `kind` (bool, int or float) value; bools are not numbers here, NaN and inf not floats."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real) and math.isfinite(value)


def check_positive_int(name: str, value: Any) -> None:
    """Raise `ValueError` naming `name` unless `value` is an integer >= 1 (a bool is not)."""
    if not _has_kind(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# (fields, type, requirement, range check, None allowed): what `SepsConfig.validate_seps` enforces.
_FIELD_RULES: tuple[tuple[tuple[str, ...], type, str, Callable[[Any], bool], bool], ...] = (
    (
        ("sparse_ratio", "aggr_ratio", "aggr_hidden_ratio", "scorer_hidden_ratio"),
        float,
        "in (0, 1]",
        lambda v: 0 < v <= 1,
        False,
    ),
    (("beta",), float, "in [0, 0.5] (Eq. 3 weights 1 - 2*beta)", lambda v: 0 <= v <= 0.5, False),
    (("embed_dim", "relevance_topk", "global_pooling_queries"), int, "an integer >= 1", lambda v: v >= 1, False),
    (("similarity_chunk_size", "global_image_vectors"), int, "an integer >= 1 or None", lambda v: v >= 1, True),
    (("max_violation_warmup_epochs",), int, "an integer >= 0", lambda v: v >= 0, False),
    (
        ("gumbel_tau", "logit_scale", "global_temperature", "alignment_temperature"),
        float,
        "> 0",
        lambda v: v > 0,
        False,
    ),
    (
        (
            "margin",
            "ratio_weight",
            "lambda_sparse",
            "lambda_dense",
            "leaky_relu_slope",
            "initializer_range",
            "global_contrastive_weight",
            "global_max_smoothing",
            "first_stage_weight",
            "alignment_infonce_weight",
        ),
        float,
        ">= 0",
        lambda v: v >= 0,
        False,
    ),
    (
        ("keep_cls_and_extra_token", "detach_selected_patches", "global_detach_tokens"),
        bool,
        "True or False",
        lambda v: True,
        False,
    ),
    (("num_patches", "vision_hidden_size"), int, "an integer >= 1 or None", lambda v: v >= 1, True),
    (("vision_cls_token",), bool, "True, False or None", lambda v: True, True),
)


# What each field changes, for a gallery encoded once and searched later (`transformers_seps.index`). SCORING_FIELDS
# shape the stored vectors or a search's scores and ranking: an index is searched only with a model whose values of
# these fields (and whose weights) equal those it was encoded with. NON_SCORING_FIELDS change training,
# initialisation, speed or the scale of `logits_per_image` only (`logit_scale` multiplies S: the ranking stays).
# Every field is in exactly one of the two (tests/test_index.py checks it): a new field that changes scores goes in
# SCORING_FIELDS.
SCORING_FIELDS = (
    "vision_config",
    "text_config",
    "embed_dim",
    "variant",
    "sparse_ratio",
    "aggr_ratio",
    "aggr_hidden_ratio",
    "num_patches",
    "vision_cls_token",
    "vision_hidden_size",
    "beta",
    "scorer_hidden_ratio",
    "relevance_topk",
    "keep_cls_and_extra_token",
    "leaky_relu_slope",
    "global_pooling_queries",
    "global_image_vectors",
    "first_stage_weight",  # the fused score S + w * G ranks
)
NON_SCORING_FIELDS = (
    "gumbel_tau",  # the Gumbel sampling of training; search selects the top K
    "detach_selected_patches",
    "margin",
    "max_violation_warmup_epochs",
    "alignment_infonce_weight",
    "alignment_temperature",
    "ratio_weight",
    "lambda_sparse",
    "lambda_dense",
    "global_contrastive_weight",  # a loss weight (0 builds no first stage: the weights tell)
    "global_temperature",
    "global_max_smoothing",  # the contrastive loss only; search takes the maximum
    "global_detach_tokens",
    "similarity_chunk_size",  # block size: the same scores
    "initializer_range",
    "logit_scale",
)


class SepsConfig(PreTrainedConfig):
    r"""Configuration of a [`SepsModel`]: two backbones, a patch-selection head and a patch-word aligner.

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Any Hugging Face vision backbone config (ViT, Swin, ConvNeXt, ResNet, `timm_wrapper`, ...). A dict
            needs `model_type`.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Any BERT-like text encoder config. It embeds both the caption and the dense caption.
        embed_dim (`int`, defaults to 512):
            Joint embedding size C; backbones are projected to it (identity when their hidden size is C).
        variant (`str`, defaults to `"paper"`):
            `"paper"`: equations 1-7 of the paper (docs/model.md, section 4). `"official"`: the authors' released code
            (docs/model.md, section 3), needed to load their checkpoints.
        sparse_ratio (`float`, defaults to 0.5):
            rho, the fraction of spatial patches kept, K = ceil(rho * N). In (0, 1]. The paper uses 0.5 on ViT
            and 0.8 on Swin; `SepsModel.from_backbones` picks that value for its backbone (`paper_ratios`).
        aggr_ratio (`float`, defaults to 0.4):
            The aggregation keeps N_c = int(N * aggr_ratio * sparse_ratio) tokens. In (0, 1]. The authors use
            0.4 with ViT and 0.6 with Swin (`paper_ratios`, also picked by `SepsModel.from_backbones`).
        aggr_hidden_ratio (`float`, defaults to 0.2):
            Hidden width of the aggregation MLP as a fraction of C (LayerNorm -> Linear -> GELU -> Linear).
        num_patches (`int`, *optional*):
            N, the number of spatial patches of the vision backbone; derived from `vision_config` when it states
            the layout (ViT, Swin), else measured by `SepsModel` at construction and recorded here: a dry forward
            of a blank `vision_image_size(vision_config)` image (CNNs: one patch per cell of the last feature map).
        vision_cls_token (`bool`, *optional*):
            Whether the backbone's tokens start with a [CLS] token; derived or measured with `num_patches`.
        vision_hidden_size (`int`, *optional*):
            Width of the vision backbone's output; `vision_config.hidden_size` when it has one, else measured
            with `num_patches` (ConvNeXt, ResNet and timm CNNs have none).
        beta (`float`, defaults to 0.25):
            Weight of the semantic scores in the unified score (Eq. 3), in [0, 0.5].
        scorer_hidden_ratio (`float`, defaults to 0.25):
            Hidden width of the patch-score MLP s_p (Eq. 1) as a fraction of C. Paper variant only.
        relevance_topk (`int`, defaults to 5):
            k of HRPA (Eq. 5): the k best matches feed a k -> 2k -> 1 relevance MLP. Paper variant only.
        gumbel_tau (`float`, defaults to 1.0):
            Temperature of the binary Gumbel-softmax that samples keep/drop decisions in training (paper variant).
        keep_cls_and_extra_token (`bool`, defaults to `True`):
            Paper variant: append the backbone's [CLS] token (if any) and one token fusing the dropped patches to
            the aggregated tokens, as the official code does. The official variant always does.
        leaky_relu_slope (`float`, defaults to 0.1):
            Negative slope of the LeakyReLU on the official variant's patch-word similarities.
        detach_selected_patches (`bool`, defaults to `True`):
            Official variant, training only: the spatial patches enter the kept, aggregated and fused tokens
            detached from the graph, as the authors build those tokens under `torch.no_grad()` (their
            `lib/cross_net.py`): the aggregation MLP still learns, [CLS] carries the vision backbone's gradient.
            `False` lets the gradient reach the patches through them too (an experiment). No effect on scores
            or weights; the paper variant ignores it.
        margin (`float`, defaults to 0.2):
            Margin of the bidirectional triplet loss (Eq. 6).
        max_violation_warmup_epochs (`int`, defaults to 1):
            Epochs that sum the loss over all negatives before switching to the hardest negative (VSE++).
        alignment_infonce_weight (`float`, defaults to 0.0):
            Weight of an InfoNCE term on S (`paired_infonce` of S / `alignment_temperature` over the global batch)
            added to the triplet loss, an alternative to hardest negatives; 0: the paper's triplet loss alone.
        alignment_temperature (`float`, defaults to 0.1):
            Temperature of that term.
        ratio_weight (`float`, defaults to 2.0):
            Weight of the ratio loss (Eq. 7) in the total loss (the authors' default).
        lambda_sparse (`float`, defaults to 1.0):
            lambda_1 of Eq. 7: weight of (rho - mean D_s)^2.
        lambda_dense (`float`, defaults to 1.0):
            lambda_2 of Eq. 7: weight of (rho - mean D_d)^2.
        global_contrastive_weight (`float`, defaults to 1.0):
            Weight of the contrastive loss (InfoNCE over the global batch, as BLIP's ITC) that trains the global
            image and caption embeddings of the first stage of a two-stage search (`SepsGlobalEmbedding`,
            [`~SepsModel.get_global_image_features`]). 0 builds no global embedding: the first stage falls back to
            the untrained cosine of mean-pooled SEPS tokens (the authors' converted checkpoints).
        global_temperature (`float`, defaults to 0.05):
            Temperature of that contrastive loss (logits are cosine / temperature).
        global_pooling_queries (`int`, defaults to 16):
            Learned attention-pooling queries per modality of the global embedding; a caption's pooled tokens are
            concatenated before the projection, so that one vector can describe several objects.
        global_image_vectors (`int`, *optional*):
            Vectors an image keeps in the first stage; it must divide `global_pooling_queries`. The image's
            queries are split into that many groups, each group's pooled tokens concatenated and projected (one
            projection shared by the groups) to a unit vector, and an image scores a caption by its best vector,
            as PVSE's multiple image embeddings (`transformers_seps.global_embedding.first_stage_scores`). None
            (the default): one vector per pooling query. 1: a single vector of all queries (the first stage
            before this field existed: a config saved without it loads with 1).
            [`~SepsModel.get_global_image_features`] returns (N, `num_global_image_vectors`, C).
        global_max_smoothing (`float`, defaults to 0.1):
            In the contrastive loss only, an image's score is the smooth maximum s * logsumexp(cosines / s) of its
            vectors' cosines (s this value; 0: the maximum, as search takes), so that more than the best vector
            learns from each caption. It measured better than the maximum on the synthetic benchmark. No
            effect with one image vector.
        global_detach_tokens (`bool`, defaults to `True`):
            The contrastive loss trains the global embedding only: it sees the SEPS tokens detached from the graph,
            so that the projections and backbones learn from the SEPS loss alone. `False` lets its gradient reach
            them too.
        first_stage_weight (`float`, defaults to 0.0):
            w of the fused score S + w * G that [`~SepsModel.similarity`] (and so re-ranking, `SepsRetriever`, the
            pipelines and the evaluation) ranks by, G being the first stage's score of the pair
            (`transformers_seps.global_embedding.first_stage_scores`), as BLIP adds its ITC score to ITM. The
            training runner fits it on the dev split after training (`fit_first_stage_weight` in
            `transformers_seps.calibration`), 0 when the fusion does not help there; it needs a trained first stage
            (`global_contrastive_weight` > 0). 0: S alone (e.g. the authors' converted checkpoints). The loss uses
            S alone.
        similarity_chunk_size (`int`, *optional*):
            Image-caption pairs scored at once by `SepsModel.similarity`; bounds its memory. None (the default)
            chooses from the device (`transformers_seps.modeling_seps.default_similarity_chunk_size`): 512 on CPU,
            among the fastest measured at one and two threads (`benchmarks/bench_similarity.py --chunk_sizes ...`,
            docs/speed.md, Knobs); on CUDA as many pairs as fit in half the free memory. A value set here (or
            `similarity(chunk_size=...)`) wins.
        initializer_range (`float`, defaults to 0.02):
            Kept for Transformers' initialisation helpers; the SEPS head uses Xavier-uniform linear layers.
        logit_scale (`float`, defaults to 1.0):
            `SepsOutput.logits_per_image` is `logit_scale` times the score [`~SepsModel.similarity`] ranks by (S, or
            the fused score, see `first_stage_weight`), so that a softmax over them (the
            `zero-shot-image-classification` pipeline) is calibrated; the loss and `SepsModel.similarity` use the
            scores themselves. The training runner fits it on the dev split after training (`fit_logit_scale` in
            `transformers_seps.calibration`); 1.0 means uncalibrated (e.g. the authors' converted checkpoints).
    """

    model_type = "seps"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    embed_dim: int = 512
    variant: str = "paper"
    sparse_ratio: float = 0.5
    aggr_ratio: float = 0.4
    aggr_hidden_ratio: float = 0.2
    num_patches: int | None = None
    vision_cls_token: bool | None = None
    vision_hidden_size: int | None = None
    beta: float = 0.25
    scorer_hidden_ratio: float = 0.25
    relevance_topk: int = 5
    gumbel_tau: float = 1.0
    keep_cls_and_extra_token: bool = True
    leaky_relu_slope: float = 0.1
    detach_selected_patches: bool = True
    margin: float = 0.2
    max_violation_warmup_epochs: int = 1
    alignment_infonce_weight: float = 0.0
    alignment_temperature: float = 0.1
    ratio_weight: float = 2.0
    lambda_sparse: float = 1.0
    lambda_dense: float = 1.0
    global_contrastive_weight: float = 1.0
    global_temperature: float = 0.05
    global_pooling_queries: int = 16
    global_image_vectors: int | None = None
    global_max_smoothing: float = 0.1
    global_detach_tokens: bool = True
    first_stage_weight: float = 0.0
    similarity_chunk_size: int | None = None
    initializer_range: float = 0.02
    logit_scale: float = 1.0

    @property
    def max_text_length(self) -> int | None:
        """The longest token sequence the text model accepts: its `max_position_embeddings` (less RoBERTa's
        padding offset), None when its config does not say (e.g. relative positions)."""
        positions = getattr(self.text_config, "max_position_embeddings", None)
        if not isinstance(positions, int):
            return None
        if getattr(self.text_config, "model_type", "") in _PADDING_OFFSET_MODEL_TYPES:
            positions -= (self.text_config.pad_token_id or 0) + 1
        return positions

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """As `PreTrainedConfig.get_config_dict` (what `from_pretrained` reads), refusing the config of another model
        type, say a BERT's: Transformers only warns and `SepsModel.from_pretrained` would build a full-size SEPS model
        with every weight random."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{str(pretrained_model_name_or_path)!r} holds a model of type {model_type!r} (its config.json), not a "
                f"SEPS model ({cls.model_type!r}); to build SEPS on it as a backbone, use SepsModel.from_backbones"
            )
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "SepsConfig":
        """As `PreTrainedConfig.from_dict`; a config saved with a first stage but without `global_pooling_queries`,
        `global_image_vectors` or `global_max_smoothing` (written before that field existed) had a single pooling
        query, a single image vector or no smoothing, and keeps it."""
        if "global_contrastive_weight" in config_dict:
            written_before = {"global_pooling_queries": 1, "global_image_vectors": 1, "global_max_smoothing": 0.0}
            config_dict = {**written_before, **config_dict}
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_patches is None or self.vision_cls_token is None:
            num_patches, cls_token = infer_patch_layout(self.vision_config)
            if self.num_patches is None:
                self.num_patches = num_patches
            if self.vision_cls_token is None:
                self.vision_cls_token = cls_token
        self.validate_seps()

    def validate_seps(self) -> None:
        """Raise `ValueError` naming the first field of the wrong type or outside its allowed range."""
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for names, kind, requirement, in_range, optional in _FIELD_RULES:
            for name in names:
                value = getattr(self, name)
                if value is None and optional:
                    continue
                if not _has_kind(value, kind) or not in_range(value):
                    wrong_type = "" if _has_kind(value, kind) else f" ({type(value).__name__})"
                    raise ValueError(f"{name} must be {requirement}, got {value!r}{wrong_type}")
                if kind is not bool and not isinstance(value, (int, float)):
                    setattr(self, name, kind(value))  # a NumPy scalar: stored as a Python number (JSON-serializable)
        if self.global_pooling_queries % self.num_global_image_vectors:
            raise ValueError(
                f"global_image_vectors must divide global_pooling_queries, got global_image_vectors="
                f"{self.global_image_vectors} and global_pooling_queries={self.global_pooling_queries}"
            )
        if self.first_stage_weight > 0 and self.global_contrastive_weight == 0:
            raise ValueError(
                f"first_stage_weight={self.first_stage_weight} fuses the first stage's score into S, but this model "
                "has no trained first stage (global_contrastive_weight=0): set first_stage_weight to 0"
            )
        if self.num_patches is not None and self.num_aggregated_patches < 1:
            raise ValueError(
                "num_patches * aggr_ratio * sparse_ratio must be >= 1 (the number of aggregated tokens), got "
                f"int({self.num_patches} * {self.aggr_ratio} * {self.sparse_ratio}) = 0"
            )

    @property
    def num_global_image_vectors(self) -> int:
        """Vectors per image in the first stage: `global_image_vectors`, or one per pooling query when None."""
        return self.global_image_vectors or self.global_pooling_queries

    @property
    def num_kept_patches(self) -> int:
        """K = ceil(rho * N): patches kept by the deterministic (top-K) selection."""
        return math.ceil(self.num_patches * self.sparse_ratio)

    @property
    def num_aggregated_patches(self) -> int:
        """N_c = int(N * aggr_ratio * rho): tokens produced by the aggregation (ViT-224: 39)."""
        return int(self.num_patches * self.aggr_ratio * self.sparse_ratio)


__all__ = [
    "NON_SCORING_FIELDS",
    "SCORING_FIELDS",
    "SepsConfig",
    "check_positive_int",
    "infer_patch_layout",
    "paper_ratios",
    "vision_image_size",
]
