"""SEPS: Semantic-Enhanced Patch Slimming for fine-grained image-text alignment.

Shapes: C = `config.embed_dim`, N = `config.num_patches` spatial patches, K = `config.num_kept_patches`,
N_c = `config.num_aggregated_patches`, L = tokens an image keeps after slimming, W = words of a caption.
Section numbers refer to docs/model.md; equation numbers to the paper (arXiv 2511.01390).
"""

import hashlib
import inspect
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import MODEL_MAPPING, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_seps import SepsConfig, check_positive_int, infer_patch_layout, paper_ratios, vision_image_size
from .global_embedding import (
    SepsGlobalEmbedding,
    first_stage_scores,
    global_contrastive_loss,
    mean_pooled_embedding,
    paired_infonce,
)
from .inputs import check_pretrained_location

logger = logging.get_logger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------------------------


def min_max_normalize(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rescale the last dimension to [0, 1] (Eq. 2); a constant row becomes 0. Computes in float32 (`eps` is
    below half precision's resolution) and returns the input's dtype."""
    values32 = values.float()
    low = values32.amin(dim=-1, keepdim=True)
    high = values32.amax(dim=-1, keepdim=True)
    return ((values32 - low) / (high - low + eps)).to(values.dtype)


def masked_softmax(logits: torch.Tensor, keep_mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where `keep_mask` is nonzero; the others get weight 0. Computed in float32,
    returned in the logits' dtype. An all-zero mask gives all-zero weights.

    The exponentials are shifted by the largest KEPT logit, so no kept entry underflows however far below the
    dropped ones it lies. `keep_mask` may be a straight-through float mask (values 0/1 carrying a gradient): it
    then multiplies the exponentials, so the gradient reaches the selection scores; a dropped entry's
    exponential is capped at the kept maximum's (1), which leaves the weights unchanged and keeps its gradient
    finite (one far above the kept ones would overflow, and inf * 0 is NaN), also in a row that keeps nothing.
    """
    logits32 = logits.float()
    kept = keep_mask != 0
    if not keep_mask.requires_grad:
        # -inf added where dropped: one pass over the broadcast shape (masked_fill would copy, then fill).
        dropped_bias = torch.zeros(kept.shape, device=kept.device).masked_fill(~kept, float("-inf"))
        keeps_some = kept.any(dim=dim, keepdim=True)
        if bool(keeps_some.all()):
            return torch.softmax(logits32 + dropped_bias, dim=dim).to(logits.dtype)
        # A row that keeps nothing: zero weights and a zero (not NaN) gradient, from a softmax over all its entries.
        weights = torch.softmax(logits32 + torch.where(keeps_some, dropped_bias, 0), dim=dim)
        return torch.where(keeps_some, weights, 0).to(logits.dtype)
    shift = logits32.masked_fill(~kept, float("-inf")).amax(dim=dim, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift)).detach()
    weights = torch.exp((logits32 - shift).clamp_max(0)) * keep_mask.float()
    total = weights.sum(dim=dim, keepdim=True)  # >= 1 (the kept maximum) unless the row keeps nothing
    return (weights / torch.where(total > 0, total, torch.ones_like(total))).to(logits.dtype)


def top_k_keep_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Float mask (..., N) with ones at the k highest scores of the last dimension (inference decisions)."""
    return _top_k_selection(scores, k)[0]


def _top_k_selection(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_keep_mask(scores, k)` and the (..., k) indices of the kept entries."""
    indices = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores).scatter(-1, indices, 1.0), indices


def gumbel_keep_mask(keep_probability: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-patch keep/drop decisions sampled with a binary Gumbel-softmax (docs/model.md 4.4).

    The forward value is a hard 0/1 mask, so the number kept varies from sample to sample; the backward pass
    uses the relaxed sample sigmoid((logit + logistic noise) / tau) (straight-through estimator). The logits
    are computed in float32 (in 16-bit floats the clamp 1 - 1e-6 rounds to 1 and a saturated probability has
    an infinite logit); the mask is returned in the probabilities' dtype.
    """
    probability = keep_probability.float().clamp(1e-6, 1 - 1e-6)
    logits = torch.log(probability) - torch.log1p(-probability)
    uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    noise = torch.log(uniform) - torch.log1p(-uniform)
    soft = torch.sigmoid((logits + noise) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return (hard - soft.detach() + soft).to(keep_probability.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last dimension, counting only entries where `mask` is true (whatever the others hold)."""
    if mask is None:
        return values.mean(dim=-1)
    mask = mask.bool()
    return torch.where(mask, values, 0).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)


def top_k_padded(values: torch.Tensor, mask: torch.Tensor | None, k: int) -> torch.Tensor:
    """The k largest valid values of the last dimension, in descending order.

    A row with fewer than k valid values (a caption shorter than k tokens) is padded by repeating its
    smallest valid value, so the padding never ranks above a real match.
    """
    if mask is not None:
        values = values.masked_fill(~mask, float("-inf"))
    available = min(k, values.shape[-1])
    top = values.topk(available, dim=-1).values
    if available < k:
        top = torch.cat([top, top.new_full((*top.shape[:-1], k - available), float("-inf"))], dim=-1)
    smallest_valid = top.masked_fill(torch.isinf(top), float("inf")).amin(dim=-1, keepdim=True)
    return torch.where(torch.isinf(top), smallest_valid.expand_as(top), top)


class SepsTokenAggregator(nn.Module):
    """Learns N_c aggregation weights per patch (docs/model.md 3.4, Eq. 4).

    MLP = LayerNorm(C) -> Linear(C, int(hidden_ratio*C)) -> GELU -> Linear(., N_c), times a learned scalar.
    The MLP acts on each patch alone, so it runs once per image; pairs only re-normalise its logits over the
    patches they keep.
    """

    def __init__(self, embed_dim: int, num_aggregated: int, hidden_ratio: float):
        super().__init__()
        hidden = int(embed_dim * hidden_ratio)
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_aggregated),
        )
        self.scale = nn.Parameter(torch.ones(1))

    @classmethod
    def from_config(cls, config: SepsConfig) -> "SepsTokenAggregator":
        """C -> N_c, with the config's hidden ratio."""
        return cls(config.embed_dim, config.num_aggregated_patches, config.aggr_hidden_ratio)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., N, C) patches -> (..., N_c, N) aggregation logits."""
        return (self.mlp(patches) * self.scale).transpose(-1, -2).contiguous()


class SepsPatchScorer(nn.Module):
    """s_p = sigmoid(MLP(v)): a two-layer MLP scoring each patch alone (Eq. 1)."""

    def __init__(self, embed_dim: int, hidden_ratio: float):
        super().__init__()
        hidden = max(1, int(embed_dim * hidden_ratio))
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., N, C) -> (..., N) scores in (0, 1)."""
        return torch.sigmoid(self.mlp(patches)).squeeze(-1)


class SepsRelevanceHead(nn.Module):
    """One direction of HRPA (Eq. 5): mean of the best matches plus MLP(top-k best matches), k -> 2k -> 1."""

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.mlp = nn.Sequential(nn.Linear(top_k, 2 * top_k), nn.GELU(), nn.Linear(2 * top_k, 1))

    def forward(self, best_matches: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(..., M) best match per word (or per token), `mask` marking real entries -> (...) scores."""
        top = top_k_padded(best_matches, mask, self.top_k)
        return masked_mean(best_matches, mask) + self.mlp(top).squeeze(-1)


def vse_triplet_loss(
    scores: torch.Tensor, image_ids: torch.Tensor | None, margin: float, max_violation: bool
) -> torch.Tensor:
    """Bidirectional triplet loss of VSE++ (Eq. 6) on a square (B, B) score matrix of paired samples.

    Pair k is (image k, caption k). Pairs whose images share an id are positives, never negatives (five
    captions share an image). `max_violation` keeps only the hardest negative of each query; otherwise the
    hinge is summed over all negatives.
    """
    batch = scores.shape[0]
    if image_ids is None:
        image_ids = torch.arange(batch, device=scores.device)
    positives = scores.diagonal().view(batch, 1)
    same_image = image_ids.view(-1, 1) == image_ids.view(1, -1)
    cost_caption = (margin + scores - positives).clamp(min=0).masked_fill(same_image, 0)
    cost_image = (margin + scores - positives.t()).clamp(min=0).masked_fill(same_image, 0)
    if max_violation:
        cost_caption = cost_caption.max(dim=1).values
        cost_image = cost_image.max(dim=0).values
    return cost_caption.sum() + cost_image.sum()


def _run_head(head: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """A small head (MLP) in its own parameters' dtype (16-bit after `model.half()`); its output in float32."""
    dtype = next(head.parameters()).dtype
    return head(*(x.to(dtype) if x.is_floating_point() else x for x in inputs)).float()


def _einsum_with_text(equation: str, image_side: torch.Tensor, text_side: torch.Tensor) -> torch.Tensor:
    """Contract an image-side tensor (I, ...) with a text-side tensor (T_i, T, ...).

    `equation` is written for cross pairing (every image with every text, text operand without its leading
    axis). When T_i == I > 1, texts are paired one-to-one with images (a dense caption with its own image)
    and the text operand gains the image axis `i`.
    """
    if text_side.shape[0] == 1:
        return torch.einsum(equation, image_side, text_side[0])
    inputs, output = equation.split("->")
    image_subscripts, text_subscripts = inputs.split(",")
    return torch.einsum(f"{image_subscripts},i{text_subscripts}->{output}", image_side, text_side)


def _cosine_with_words(weights: torch.Tensor, patch_words: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Cosine similarities between weighted sums of patches, `weights @ P`, and the words, without forming the
    (I, T, K, C) tokens: (w P) . x = w (P x), and ||w P||^2 = w G w^T with the Gram matrix G = P P^T. The
    weights need not sum to one (a cosine ignores each token's scale).

    The two products run in the dtype of `patch_words` and `gram` (bfloat16 with `similarity(dtype=...)`), their
    results and everything after them in float32.

    Args:
        weights: (I, T, K, R) float32 weights of K tokens per pair on R patches: all N, or each pair's kept ones.
        patch_words: (I, T, R, W) dot products of those patches with the (normalised) words.
        gram: (I, N, N) patch Gram matrices, or (I, T, R, R) each pair's block of them.

    Returns:
        (I, T, K, W) float32.
    """
    dots = torch.matmul(weights.to(gram.dtype), patch_words).float()
    return _normalized_dots(weights, dots, gram)


def _normalized_dots(weights: torch.Tensor, dots: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """`dots` (I, T, K, W) = (w P) . x divided by ||w P|| = sqrt(w G w^T) (`_cosine_with_words`)."""
    matmul_weights = weights.to(gram.dtype)
    if gram.dim() == 3:  # one Gram matrix per image, shared by its pairs: a single batched product
        weighted_gram = torch.bmm(matmul_weights.flatten(1, 2), gram).view_as(weights).float()
    else:
        weighted_gram = torch.matmul(matmul_weights, gram).float()
    squared_norms = (weighted_gram * weights).sum(dim=-1, keepdim=True)
    # An all-zero weight row (no dropped patch to fuse) is a zero token: cosine 0, not 0 / 0.
    return dots / squared_norms.clamp_min(torch.finfo(squared_norms.dtype).tiny).sqrt()


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SepsOutput(ModelOutput):
    """Output of [`SepsModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): alignment loss + `ratio_weight` * ratio loss
            (+ `global_contrastive_weight` * global contrastive loss, for a model with a trained first stage).
        alignment_loss (`torch.FloatTensor` of shape `()`, *optional*): the triplet loss (Eq. 6), plus
            `alignment_infonce_weight` times an InfoNCE term on S when that weight is set.
        ratio_loss (`torch.FloatTensor` of shape `()`, *optional*): the ratio loss (Eq. 7, unweighted).
        global_contrastive_loss (`torch.FloatTensor` of shape `()`, *optional*): the InfoNCE loss that trains the
            first stage (`transformers_seps.global_embedding`, unweighted); None without one.
        logits_per_image (`torch.FloatTensor` of shape `(N_img, N_txt)`): `config.logit_scale` times the score
            [`~SepsModel.similarity`] gives: S(I_j, T_i), fused with the first stage's when
            `config.first_stage_weight` > 0.
        logits_per_text (`torch.FloatTensor` of shape `(N_txt, N_img)`): its transpose.
        image_embeds (`torch.FloatTensor` of shape `(N_img, L_v, C)`): projected image tokens.
        text_embeds (`torch.FloatTensor` of shape `(N_txt, L_t, C)`): projected caption tokens.
        dense_embeds (`torch.FloatTensor` of shape `(N_img, L_d, C)`, *optional*): projected dense captions.
        sparse_keep_mask (`torch.FloatTensor` of shape `(N_img, N_txt, N)`): patches each pair keeps (D_s).
        dense_keep_mask (`torch.FloatTensor` of shape `(N_img, N)`, *optional*): the dense view's decisions
            (D_d, paper variant with dense captions).
        vision_model_output (`SepsFeaturesOutput`): the images' [`~SepsModel.get_image_features`] output, with
            the vision backbone's hidden states and attentions when requested.
        text_model_output (`SepsFeaturesOutput`): the captions' [`~SepsModel.get_text_features`] output.
    """

    loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    ratio_loss: torch.FloatTensor | None = None
    global_contrastive_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    dense_embeds: torch.FloatTensor | None = None
    sparse_keep_mask: torch.FloatTensor | None = None
    dense_keep_mask: torch.FloatTensor | None = None
    vision_model_output: "SepsFeaturesOutput | None" = None
    text_model_output: "SepsFeaturesOutput | None" = None

    def to_tuple(self) -> tuple:
        """The fields that are set, in order; the backbones' outputs nested as tuples too (`return_dict=False`)."""
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in super().to_tuple())


@dataclass
class SepsFeaturesOutput(BaseModelOutputWithPooling):
    """Output of [`SepsModel.get_image_features`] and [`SepsModel.get_text_features`], laid out as CLIP's.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(N, L, hidden_size)`): the backbone's last hidden state,
            unprojected (a CNN's feature map stays `(N, hidden_size, h, w)`).
        pooler_output (`torch.FloatTensor` of shape `(N, V, C)` for images, `(N, C)` for captions): the global
            embedding, unit vectors (the first stage of a two-stage search: [`~SepsModel.global_image_embeds`],
            V = `config.num_global_image_vectors` per image / [`~SepsModel.global_text_embeds`]).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the backbone's, with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): the backbone's, with `output_attentions=True`.
        embeds (`torch.FloatTensor` of shape `(N, L, C)`): the projected tokens [`~SepsModel.similarity`] scores,
            the bare tensor [`~SepsModel.encode_image`] / [`~SepsModel.encode_text`] return.
    """

    embeds: torch.FloatTensor | None = None


@dataclass
class _ImageSide:
    """Per-image quantities, computed once per image (never per pair)."""

    patches: torch.Tensor  # (I, N, C) spatial tokens, unnormalised
    patches_norm: torch.Tensor  # (I, N, C)
    gram: torch.Tensor  # (I, N, N) P P^T
    cls: torch.Tensor | None  # (I, C)
    self_scores: torch.Tensor  # (I, N) official: cos(mean P, P_n); paper: its min-max rescaling s_im
    aggregation_logits: torch.Tensor  # (I, N_c, N) per-image logits; each pair's softmax runs over its kept patches
    aggregation_exp: torch.Tensor  # (I, N_c, N) their exponentials shifted by the image's largest logit
    patch_scores: torch.Tensor | None = None  # (I, N) s_p (paper)
    dense_scores: torch.Tensor | None = None  # (I, N) s_dt (paper, with a dense caption)
    dense_weights: torch.Tensor | None = None  # (I, N_c, N) W_d softmax weights of the dense view (paper)
    dense_keep_mask: torch.Tensor | None = None  # (I, N) D_d (paper)

    def __getitem__(self, index: slice) -> "_ImageSide":
        return _ImageSide(**{k: (v[index] if v is not None else None) for k, v in self.__dict__.items()})


@dataclass
class _TextSide:
    """Per-caption quantities with a leading pairing axis T_i: 1 for cross scoring, I for one-to-one pairing."""

    words_norm: torch.Tensor  # (T_i, T, W, C)
    word_mask: torch.Tensor  # (T_i, T, W) bool
    global_norm: torch.Tensor  # (T_i, T, C) normalised mean of the caption's tokens

    @classmethod
    def from_embeddings(
        cls, text_embeds: torch.Tensor, attention_mask: torch.Tensor, paired: bool = False
    ) -> "_TextSide":
        """Captions (T, W, C) with their masks (T, W); `paired`: caption j belongs to image j (a dense caption)."""
        mask = attention_mask.bool()
        # Padding never reaches a score, whatever it holds (NaN included).
        text_embeds = torch.where(mask.unsqueeze(-1), text_embeds, 0)
        # The normalised mean of the real tokens: the normalised sum, padding being zero.
        words_norm, global_norm = F.normalize(text_embeds, dim=-1), F.normalize(text_embeds.sum(dim=1), dim=-1)
        if paired:
            return cls(words_norm[:, None], mask[:, None], global_norm[:, None])
        return cls(words_norm[None], mask[None], global_norm[None])

    def __getitem__(self, index: slice | torch.Tensor) -> "_TextSide":
        if self.words_norm.shape[0] == 1:
            return _TextSide(self.words_norm[:, index], self.word_mask[:, index], self.global_norm[:, index])
        return _TextSide(self.words_norm[index], self.word_mask[index], self.global_norm[index])

    def trimmed(self) -> "_TextSide":
        """Without the padding positions that no caption here uses (blocks of similar lengths pad little)."""
        length = int(self.word_mask.flatten(0, 1).any(dim=0).nonzero().max()) + 1
        return _TextSide(self.words_norm[:, :, :length], self.word_mask[:, :, :length], self.global_norm)


# --------------------------------------------------------------------------------------------------------------
# Heads: what each variant computes on top of the encoders (docs/model.md, sections 3 and 4)
# --------------------------------------------------------------------------------------------------------------

# What `similarity(dtype=...)` accepts: the large products in bfloat16 keep float32's exponent range (float16's
# would underflow, issue 11).
SCORING_DTYPES = (torch.float32, torch.bfloat16)

# A pair whose kept exponentials (shifted by the image's largest logit) sum below this (its largest kept logit lies
# more than 34.5 below the image's largest) recomputes its softmax shifted by its own largest kept logit: below it,
# float32 loses kept weights to underflow and the gradient of the normalisation (1 / total^2) overflows.
_SHARED_EXP_FLOOR = 1e-15


def _shifted_exp(logits: torch.Tensor) -> torch.Tensor:
    """exp(logits - max) over the last axis: softmax numerators that any subset of the entries can share."""
    return torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())


def kept_softmax(
    logits: torch.Tensor, shifted_exp: torch.Tensor, keep_mask: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """`masked_softmax(logits, keep_mask)` for many masks over the same logits (every pair of an image
    renormalises the image's aggregation logits over the patches it keeps), from `shifted_exp = _shifted_exp(logits)`
    computed once: per mask only a product and a sum. The rare rows whose kept entries all lie so far below the
    largest logit that their exponentials underflow (and rows that keep nothing) go through `masked_softmax`, and
    so does a straight-through mask carrying a gradient (its dropped entries' gradient is bounded there).

    With `normalize=False` each row is only proportional to its softmax (a positive factor per row, the same
    function of the logits up to that factor): enough for a cosine, which ignores the scale, and it saves the
    division, a pass over the largest tensor of the scoring loop.
    """
    if keep_mask.requires_grad:
        return masked_softmax(logits, keep_mask)
    weights = shifted_exp * keep_mask
    total = weights.sum(dim=-1, keepdim=True)
    underflow = total < _SHARED_EXP_FLOOR
    if not bool(underflow.any()):
        return weights / total if normalize else weights
    exact = masked_softmax(logits, keep_mask)
    return torch.where(underflow, exact, weights / torch.where(underflow, torch.ones_like(total), total))


# Blocks of `SepsModel.similarity` when neither its `chunk_size` nor `config.similarity_chunk_size` is set
# (docs/speed.md, Knobs): on CPU the fastest block measured; on CUDA as many pairs as fit in this share of the free
# memory.
CPU_CHUNK_SIZE = 512
CUDA_MEMORY_SHARE = 0.5
# A block holds at least this many images when it can (a block of fewer captions, sorted by length, pads less).
_IMAGES_PER_BLOCK = 8


def default_similarity_chunk_size(config: SepsConfig, device: torch.device, max_words: int) -> int:
    """Pairs per block for captions of at most `max_words` tokens on `device`: `CPU_CHUNK_SIZE` on any device but
    CUDA; on CUDA the pairs whose float32 intermediates fill `CUDA_MEMORY_SHARE` of the free memory (at least 1).

    Per pair, the largest intermediates of `SepsHead.score_block` are the (N_c, N) weights, weights x Gram matrix
    and their product (all-patch path), the (K, N) Gram rows (kept-patch path) and the (N, W) patch-word products
    with their kept rows.
    """
    if device.type != "cuda":
        return CPU_CHUNK_SIZE
    free_bytes, _ = torch.cuda.mem_get_info(device)
    patches, kept = config.num_patches, config.num_kept_patches
    floats_per_pair = 3 * config.num_aggregated_patches * patches + kept * patches + 2 * patches * max_words
    return max(1, int(free_bytes * CUDA_MEMORY_SHARE) // (4 * floats_per_pair))


def _kept_rows(values: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Each pair's kept rows of per-image values: `values` (I, N, T_v, ...), with T_v = 1 (rows shared by the
    block's texts) or T (one row per text), and `kept` (I, T, K) patch indices -> (I, T, K, ...)."""
    num_images, num_patches, num_texts = values.shape[:3]
    rows = (kept + torch.arange(num_images, device=kept.device).view(-1, 1, 1) * num_patches) * num_texts
    if num_texts > 1:
        rows = rows + torch.arange(num_texts, device=kept.device).view(1, -1, 1)
    row_shape = values.shape[3:]
    return values.reshape(-1, *row_shape).index_select(0, rows.flatten()).view(*kept.shape, *row_shape)


def kept_aggregation_weights(logits: torch.Tensor, shifted_exp: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """`kept_softmax(logits, shifted_exp, keep_mask, normalize=False)` on each pair's kept patches only, for a
    selection that keeps exactly K patches per pair at the indices `kept` (I, T, K): (I, T, N_c, K) weights from
    per-image (I, N_c, N) logits and exponentials, gathered instead of multiplied by a mask over all N patches.
    Rows whose shared exponentials underflow are the softmax of their kept logits (all of a row's entries are kept).
    """
    weights = _kept_rows(shifted_exp.transpose(1, 2).unsqueeze(2), kept).transpose(-1, -2)
    underflow = weights.sum(dim=-1, keepdim=True) < _SHARED_EXP_FLOOR
    if not bool(underflow.any()):
        return weights
    exact = torch.softmax(_kept_rows(logits.transpose(1, 2).unsqueeze(2), kept).transpose(-1, -2), dim=-1)
    return torch.where(underflow, exact, weights)


def _image_side(
    patches: torch.Tensor, cls: torch.Tensor | None, aggregator: SepsTokenAggregator, **fields: torch.Tensor
) -> _ImageSide:
    """The per-image quantities both heads share: normalised patches, Gram matrix, cos(mean P, P_n) as
    `self_scores`, and the aggregation logits of `aggregator` with their shared exponentials."""
    patches_norm = F.normalize(patches, dim=-1)
    image_global = F.normalize(patches.mean(dim=1), dim=-1)
    logits = _run_head(aggregator, patches)
    return _ImageSide(
        patches=patches,
        patches_norm=patches_norm,
        gram=patches @ patches.transpose(1, 2),
        cls=cls,
        self_scores=torch.einsum("ind,id->in", patches_norm, image_global),
        aggregation_logits=logits,
        aggregation_exp=_shifted_exp(logits),
        **fields,
    )


class SepsHead(nn.Module, ABC):
    """The variant-specific part of SEPS: per-image preparation, per-block scoring of (image, caption) pairs, the
    dense-caption terms, and what pictures and the leaky-pairing audit need. [`SepsModel`] keeps the encoders,
    the chunked loop over pairs, the input checks and the loss, and builds one head from `SEPS_HEADS`.

    A block is I images (an [`_ImageSide`]) against T captions (a [`_TextSide`]); decisions are sampled in
    training mode where the variant samples them, top-K otherwise.
    """

    # Title of the picture of the dense caption's keep mask ([`dense_caption_keep_mask`]).
    dense_keep_title: str

    def __init__(self, config: SepsConfig):
        super().__init__()
        self.config = config

    @abstractmethod
    def prepare_images(self, patches: torch.Tensor, cls: torch.Tensor | None, dense: _TextSide | None) -> _ImageSide:
        """Everything about the images that does not depend on the caption, once per image."""

    @abstractmethod
    def select_patches(
        self, image: _ImageSide, text_similarity: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Selection scores and keep masks D_s (I, T, N) of a block from the caption scores cos(t, P_n), and the
        (I, T, K) indices of the kept patches when the masks are a top-K selection (None for sampled masks)."""

    @abstractmethod
    def fuses_dropped_patches(self) -> bool:
        """Whether the tokens include [CLS] (if any) and one token fusing the dropped patches."""

    @abstractmethod
    def align(self, alignment: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """(I, T) scores from the (I, T, L, W) token-word cosines and the (T_i, T, W) word mask."""

    def dense_branch(self, image: _ImageSide, dense: _TextSide, block_size: int) -> torch.Tensor | None:
        """An (I, 1) score column the dense captions add to every pair, or None."""
        return None

    @abstractmethod
    def dense_caption_keep_mask(self, model: "SepsModel", inputs: dict, output: SepsOutput) -> torch.Tensor:
        """The (N,) patches the dense caption of the first image of `output` (`model(**inputs)`) keeps."""

    @abstractmethod
    def leaky_pairing_similarity(
        self,
        model: "SepsModel",
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        dense_embeds: torch.Tensor,
        dense_mask: torch.Tensor,
        caption_to_image: torch.Tensor,
        chunk_size: int | None,
    ) -> torch.Tensor:
        """S(I_j, T_i) computed with D_gt(i), the dense caption of caption i's ground-truth image
        `caption_to_image[i]` (the SEPS authors' pairing, docs/model.md section 2: a label leak, for the audit)."""

    def score_block(self, image: _ImageSide, text: _TextSide) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (I, T) and sparse keep masks (I, T, N) of a block of pairs."""
        text_similarity = _einsum_with_text("ind,td->itn", image.patches_norm, text.global_norm).contiguous()
        selection_scores, keep_mask, kept = self.select_patches(image, text_similarity)
        # In the scoring dtype of `similarity(dtype=...)`, which the patches and their Gram matrix already have.
        patch_words = _einsum_with_text("inc,twc->intw", image.patches, text.words_norm.to(image.patches.dtype))
        # Eq. 4, docs/model.md 3.4: each token is a softmax over the kept patches of per-image logits; with a dense
        # view (4.5), plus its token, i.e. one weight matrix per pair on the same patches.
        # Only the cosines of the tokens use the weights: unnormalised unless the dense view's weights are added.
        if kept is not None and image.dense_weights is None:
            # The weights are zero outside each pair's K kept patches: both products run on those alone,
            # w (P x) = w_K (P x)_K and w G w^T = w_K G_KK w_K^T (a quarter of the Gram product's work).
            weights = kept_aggregation_weights(image.aggregation_logits, image.aggregation_exp, kept)
            kept_gram = _kept_rows(image.gram.unsqueeze(2), kept).gather(
                -1, kept.unsqueeze(2).expand(-1, -1, kept.shape[-1], -1)
            )  # (I, T, K, K)
            pieces = [_cosine_with_words(weights, _kept_rows(patch_words, kept), kept_gram)]  # (I, T, N_c, W)
        else:
            weights = kept_softmax(
                image.aggregation_logits.unsqueeze(1),
                image.aggregation_exp.unsqueeze(1),
                keep_mask.unsqueeze(2),
                normalize=image.dense_weights is not None,
            )  # (I, T, N_c, N)
            if image.dense_weights is not None:
                weights = weights + image.dense_weights.unsqueeze(1)
            pieces = [_cosine_with_words(weights, patch_words.transpose(1, 2), image.gram)]
        if self.fuses_dropped_patches():
            # docs/model.md 3.3: one extra token fuses the dropped patches, weighted by a softmax of their scores.
            fuse_weights = masked_softmax(selection_scores, 1 - keep_mask)  # (I, T, N)
            fuse_dots = torch.einsum("itn,intw->itw", fuse_weights.to(patch_words.dtype), patch_words).float()
            pieces.append(_normalized_dots(fuse_weights.unsqueeze(2), fuse_dots.unsqueeze(2), image.gram))
            if image.cls is not None:
                cls = F.normalize(image.cls, dim=-1)
                pieces.insert(0, _einsum_with_text("id,twd->itw", cls, text.words_norm).unsqueeze(2))
        # (I, T, L, W) token-word cosine similarities.
        return self.align(torch.cat(pieces, dim=2), text.word_mask), keep_mask


def _best_matches(alignment: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best token per word (I, T, W) and best real word per token (I, T, L) of token-word similarities."""
    best_per_word = alignment.amax(dim=2)
    best_per_token = alignment.masked_fill(~word_mask.unsqueeze(2), float("-inf")).amax(dim=3)
    return best_per_word, best_per_token


class SepsOfficialHead(SepsHead):
    """The SEPS authors' released computation (docs/model.md, section 3): selection by s_im + s_st, one
    aggregation MLP, LeakyReLU alignment, and the dense caption as a second caption branch f(I_j, D_j)."""

    dense_keep_title = "dense caption"

    def __init__(self, config: SepsConfig):
        super().__init__(config)
        self.aggregator = SepsTokenAggregator.from_config(config)

    def prepare_images(self, patches: torch.Tensor, cls: torch.Tensor | None, dense: _TextSide | None) -> _ImageSide:
        if self.config.detach_selected_patches:
            # The authors select the kept patches and fuse the dropped ones under torch.no_grad() (their
            # lib/cross_net.py): the aggregation MLP learns from detached patches, [CLS] carries the gradient.
            patches = patches.detach()
        side = _image_side(patches, cls, self.aggregator)
        side.self_scores = side.self_scores.detach()  # docs/model.md 3.9: the selection scores carry no gradient
        return side

    def select_patches(
        self, image: _ImageSide, text_similarity: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # docs/model.md 3.1-3.3: s_im + s_st, hard top-K.
        selection_scores = image.self_scores.unsqueeze(1) + text_similarity.detach()
        return selection_scores, *_top_k_selection(selection_scores, self.config.num_kept_patches)

    def fuses_dropped_patches(self) -> bool:
        return True

    def align(self, alignment: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        # docs/model.md 3.6: mean over words of the best token + mean over tokens of the best word.
        alignment = F.leaky_relu(alignment, negative_slope=self.config.leaky_relu_slope)
        best_per_word, best_per_token = _best_matches(alignment, word_mask)
        return masked_mean(best_per_word, word_mask) + best_per_token.mean(dim=-1)

    def dense_branch(self, image: _ImageSide, dense: _TextSide, block_size: int) -> torch.Tensor:
        # docs/model.md 3.7, honest form: + f(I_j, D_j), each image with its own dense caption.
        columns = [
            self.score_block(image[start : start + block_size], dense[start : start + block_size])[0]
            for start in range(0, image.patches.shape[0], block_size)
        ]
        return torch.cat(columns, dim=0)

    def dense_caption_keep_mask(self, model: "SepsModel", inputs: dict, output: SepsOutput) -> torch.Tensor:
        # The dense branch f(I, D) selects patches for D as for a caption: score D as one.
        as_caption = model(inputs["pixel_values"], inputs["dense_input_ids"], inputs["dense_attention_mask"])
        return as_caption.sparse_keep_mask[0, 0]

    def leaky_pairing_similarity(
        self,
        model: "SepsModel",
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        dense_embeds: torch.Tensor,
        dense_mask: torch.Tensor,
        caption_to_image: torch.Tensor,
        chunk_size: int | None,
    ) -> torch.Tensor:
        # f(I_j, T_i) + f(I_j, D_gt(i)): the dense branch is the caption branch run on dense captions.
        sparse = model.similarity(images, text_embeds, text_mask, chunk_size=chunk_size)
        dense_branch = model.similarity(images, dense_embeds, dense_mask, chunk_size=chunk_size)
        return sparse + dense_branch[:, caption_to_image]


class SepsPaperHead(SepsHead):
    """The paper's computation (docs/model.md, section 4, Eq. 1-5): a learned patch score, sparse and dense
    views selected with Gumbel-softmax samples in training, two aggregators, and HRPA alignment."""

    dense_keep_title = "dense view"

    def __init__(self, config: SepsConfig):
        super().__init__(config)
        self.patch_scorer = SepsPatchScorer(config.embed_dim, config.scorer_hidden_ratio)
        self.sparse_aggregator = SepsTokenAggregator.from_config(config)
        self.dense_aggregator = SepsTokenAggregator.from_config(config)
        self.word_relevance = SepsRelevanceHead(config.relevance_topk)
        self.token_relevance = SepsRelevanceHead(config.relevance_topk)

    def decide(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keep decisions over the last (patch) axis: Gumbel samples in training, top-K otherwise; and the kept
        indices of a top-K selection (None for samples)."""
        if self.training:
            return gumbel_keep_mask(scores, self.config.gumbel_tau), None
        return _top_k_selection(scores, self.config.num_kept_patches)

    def prepare_images(self, patches: torch.Tensor, cls: torch.Tensor | None, dense: _TextSide | None) -> _ImageSide:
        side = _image_side(patches, cls, self.sparse_aggregator, patch_scores=_run_head(self.patch_scorer, patches))
        side.self_scores = min_max_normalize(side.self_scores)  # s_im (Eq. 2)
        if dense is not None:
            beta = self.config.beta
            side.dense_scores = min_max_normalize(
                _einsum_with_text("ind,td->itn", side.patches_norm, dense.global_norm).squeeze(1)
            )
            # Dense view (docs/model.md 4.4): depends on the image only.
            dense_view = ((1 - 2 * beta) * side.patch_scores + 2 * beta * (side.dense_scores + side.self_scores)) / (
                1 + 2 * beta
            )
            side.dense_keep_mask = self.decide(dense_view)[0]
            side.dense_weights = masked_softmax(
                _run_head(self.dense_aggregator, patches), side.dense_keep_mask.unsqueeze(1)
            )
        return side

    def select_patches(
        self, image: _ImageSide, text_similarity: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # Eq. 3, each weight normalised by the total so the score is a keep probability in [0, 1].
        beta = self.config.beta
        semantic = min_max_normalize(text_similarity) + 2 * image.self_scores.unsqueeze(1)
        total = 1 + beta
        if image.dense_scores is not None:
            semantic = semantic + image.dense_scores.unsqueeze(1)
            total = 1 + 2 * beta
        selection_scores = ((1 - 2 * beta) * image.patch_scores.unsqueeze(1) + beta * semantic) / total
        return selection_scores, *self.decide(selection_scores)

    def fuses_dropped_patches(self) -> bool:
        return self.config.keep_cls_and_extra_token

    def align(self, alignment: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        # Eq. 5 (HRPA), over the sparse caption's words only.
        best_per_word, best_per_token = _best_matches(alignment, word_mask)
        scores = _run_head(self.word_relevance, best_per_word, word_mask.expand_as(best_per_word))
        return scores + _run_head(self.token_relevance, best_per_token)

    def dense_caption_keep_mask(self, model: "SepsModel", inputs: dict, output: SepsOutput) -> torch.Tensor:
        return output.dense_keep_mask[0]

    def leaky_pairing_similarity(
        self,
        model: "SepsModel",
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        dense_embeds: torch.Tensor,
        dense_mask: torch.Tensor,
        caption_to_image: torch.Tensor,
        chunk_size: int | None,
    ) -> torch.Tensor:
        # D_gt(i) steers the selection, so each ground-truth group is scored with it given to every image.
        scores = images.new_empty(images.shape[0], text_embeds.shape[0])
        for image_index in caption_to_image.unique().tolist():
            captions = (caption_to_image == image_index).nonzero().flatten()
            dense = dense_embeds[image_index : image_index + 1].expand(images.shape[0], -1, -1)
            mask = dense_mask[image_index : image_index + 1].expand(images.shape[0], -1)
            scores[:, captions] = model.similarity(
                images, text_embeds[captions], text_mask[captions], dense, mask, chunk_size
            )
        return scores


# The one place a variant name picks code.
SEPS_HEADS: dict[str, type[SepsHead]] = {"paper": SepsPaperHead, "official": SepsOfficialHead}


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def _build_backbone(config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised backbone for `config`, without the pooling head SEPS never uses."""
    model_class = MODEL_MAPPING[type(config)]
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters else {}
    return model_class(config, **kwargs)


class SepsPreTrainedModel(PreTrainedModel):
    config_class = SepsConfig
    config: SepsConfig
    base_model_prefix = "seps"
    input_modalities = ("image", "text")
    main_input_name = "pixel_values"  # forward's first argument
    # Checkpointing, attention implementations: features of the backbones (the SEPS head has no attention layer).
    # `set_attn_implementation` and `from_pretrained(attn_implementation=...)` pass the choice on to them
    # (`SepsConfig.sub_configs`); a backbone without attention (a CNN) ignores it.
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        global_embedding = getattr(self, "global_embedding", None)
        layer_name = None
        if global_embedding is not None:
            layer_name = next((name for name, layer in global_embedding.named_children() if layer is module), None)
        if layer_name is not None:
            # PyTorch's default `nn.Linear` init: the first stage learned faster from it than from xavier's.
            # Drawn from a generator seeded by the current random state and the layer's name,
            # which leaves that state where it was (see `SepsModel.__init__`).
            if module.weight.is_meta:
                return
            digest = hashlib.sha256(torch.random.get_rng_state().numpy().tobytes() + layer_name.encode()).digest()
            generator = torch.Generator(device=module.weight.device).manual_seed(int.from_bytes(digest[:8], "little"))
            init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(module.in_features)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SepsTokenAggregator):
            init.ones_(module.scale)


class SepsModel(SepsPreTrainedModel):
    """SEPS: two backbones, a patch selector guided by the caption and the image's dense caption, an
    aggregator that slims the kept patches into N_c tokens, and a patch-word aligner.

    Scores are pairwise: use [`~SepsModel.encode_image`] and [`~SepsModel.encode_text`] once per image and
    caption, then [`~SepsModel.similarity`] (chunked and vectorised) for any gallery.
    """

    def __init__(self, config: SepsConfig):
        super().__init__(config)
        self.vision_model = _build_backbone(config.vision_config)
        self.text_model = _build_backbone(config.text_config)
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config
        vision_hidden = config.vision_hidden_size or _hidden_size(config.vision_config)
        if config.num_patches is None or config.vision_cls_token is None or vision_hidden is None:
            # The vision config does not state its patch layout (a CNN): measure it once and record it, so that
            # the saved config carries it.
            measured = _probe_vision_backbone(self.vision_model, vision_image_size(config.vision_config))
            for name, value in zip(("num_patches", "vision_cls_token", "vision_hidden_size"), measured, strict=True):
                if getattr(config, name) is None:
                    setattr(config, name, value)
            config.validate_seps()
            vision_hidden = config.vision_hidden_size or _hidden_size(config.vision_config)
        text_hidden = _hidden_size(config.text_config)
        if text_hidden is None:
            raise ValueError(
                f"text_config ({config.text_config.model_type}) has no hidden_size: not a BERT-like encoder"
            )
        embed_dim = config.embed_dim
        self.vision_projection = nn.Identity() if vision_hidden == embed_dim else nn.Linear(vision_hidden, embed_dim)
        self.text_projection = nn.Identity() if text_hidden == embed_dim else nn.Linear(text_hidden, embed_dim)

        # The variant's selection, aggregation and alignment (docs/model.md, sections 3 and 4).
        self.head = SEPS_HEADS[config.variant](config)
        # The first stage of a two-stage search (`transformers_seps.global_embedding`), if a loss trains it.
        self.global_embedding = None
        if config.global_contrastive_weight > 0:
            # Built on a forked random state and initialised from its own generator (`_init_weights`): whatever
            # its size, the other modules' initialisation and the draws that follow (shuffling, sampling) stay
            # the same.
            with torch.random.fork_rng(devices=[]):
                self.global_embedding = SepsGlobalEmbedding(
                    embed_dim, config.global_pooling_queries, config.num_global_image_vectors
                )
        self.post_init()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | PathLike | None, *model_args, **kwargs
    ) -> "SepsModel":
        """As `PreTrainedModel.from_pretrained`, with clear errors first: a path that is neither a folder nor a
        Hub id gives `FileNotFoundError` ("no such folder"), and a damaged (e.g. truncated) `.safetensors` file of
        a local folder gives an `OSError` naming the file.

        A checkpoint with a trained SEPS head but no first stage (saved before `global_contrastive_weight` existed)
        loads without one, so that its shortlists stay the mean-pooled ones rather than an untrained projection's; pass
        `global_contrastive_weight` explicitly to add a fresh one for training."""
        if pretrained_model_name_or_path is not None:  # None: weights given as `state_dict`
            folder = check_pretrained_location(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if folder is not None:
                _check_safetensors_headers(folder)
        wants_loading_info = kwargs.pop("output_loading_info", False)
        keeps_fresh_global_embedding = "global_contrastive_weight" in kwargs
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        missing = loading_info["missing_keys"]
        untrained = [key for key in missing if key.startswith("global_embedding.")]
        # A trained SEPS head without a first stage: a checkpoint from before the first stage existed.
        head_was_loaded = not any(key.startswith("head.") for key in missing)
        if untrained and head_was_loaded and model.global_embedding is not None and not keeps_fresh_global_embedding:
            logger.warning(
                "The checkpoint has no trained first stage (%s missing): the shortlist uses mean-pooled tokens "
                "(global_contrastive_weight set to 0). Pass global_contrastive_weight=... to train a new one.",
                ", ".join(untrained),
            )
            model.global_embedding = None
            model.config.global_contrastive_weight = model.config.first_stage_weight = 0.0
        return (model, loading_info) if wants_loading_info else model

    # ---------------------------------------------------------------- construction from pretrained backbones

    @classmethod
    def from_backbones(
        cls,
        vision_model: str | PathLike | PreTrainedModel,
        text_model: str | PathLike | PreTrainedModel,
        **config_kwargs,
    ) -> "SepsModel":
        """A fresh SEPS head on pretrained backbones.

        Args:
            vision_model: a hub id or local folder (`google/vit-base-patch16-224-in21k`,
                `microsoft/swin-base-patch4-window7-224`, a `timm_wrapper` checkpoint, ...) or a loaded model.
            text_model: a BERT-like hub id or local folder (`bert-base-uncased`) or a loaded model.
            config_kwargs: any other [`SepsConfig`] field (`variant`, `sparse_ratio`, `embed_dim`, ...).
                `sparse_ratio` and `aggr_ratio` default to the authors' values for the backbone
                (`paper_ratios`: 0.8 and 0.6 for Swin, 0.5 and 0.4 otherwise).
        """
        vision = vision_model if isinstance(vision_model, PreTrainedModel) else AutoModel.from_pretrained(vision_model)
        text = text_model if isinstance(text_model, PreTrainedModel) else AutoModel.from_pretrained(text_model)
        sparse_ratio, aggr_ratio = paper_ratios(vision.config)
        config_kwargs.setdefault("sparse_ratio", sparse_ratio)
        config_kwargs.setdefault("aggr_ratio", aggr_ratio)
        config = SepsConfig(vision_config=vision.config.to_dict(), text_config=text.config.to_dict(), **config_kwargs)
        model = cls(config)
        for name, pretrained in (("vision_model", vision), ("text_model", text)):
            missing, unexpected = getattr(model, name).load_state_dict(pretrained.state_dict(), strict=False)
            unexpected = [key for key in unexpected if not key.startswith("pooler.")]
            if missing or unexpected:
                raise ValueError(f"{name}: pretrained weights do not fit; missing {missing}, unexpected {unexpected}")
        return model

    # ---------------------------------------------------------------- text embeddings

    def get_input_embeddings(self) -> nn.Module:
        """The text backbone's word embeddings; `resize_token_embeddings` resizes them (and the vocabulary size
        the input checks use, `config.text_config.vocab_size`)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    # ---------------------------------------------------------------- encoders

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N_img, 3, H, W) pixels -> (N_img, L_v, C) tokens: [CLS] (if the backbone has one) then N patches,
        the `image_embeds` that [`~SepsModel.similarity`] scores. The bare-tensor encoder the library uses;
        [`~SepsModel.get_image_features`] wraps the same tokens in a `ModelOutput`.

        A CNN's (N_img, hidden, h, w) feature map becomes h*w patch tokens.
        """
        return self._encode_image(pixel_values)[1]

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N_txt, L_t) token ids -> (N_txt, L_t, C) token embeddings ([CLS] and [SEP] included), the
        `text_embeds` (captions) or `dense_embeds` (dense captions) that [`~SepsModel.similarity`] scores. The
        bare-tensor encoder the library uses; [`~SepsModel.get_text_features`] wraps them in a `ModelOutput`."""
        return self._encode_text(input_ids, attention_mask, token_type_ids)[1]

    def encode_image_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N_img, 3, H, W) pixels -> (N_img, L_v, hidden) tokens of the vision backbone, before the projection:
        `encode_image(x)` is `vision_projection(encode_image_backbone(x))`. A frozen backbone's tokens can be
        computed once and trained on (`transformers_seps.feature_cache`)."""
        return self._run_vision_backbone(pixel_values)[1]

    def encode_text_backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N_txt, L_t) token ids -> (N_txt, L_t, hidden) tokens of the text backbone, before the projection:
        `encode_text(ids, mask)` is `text_projection(encode_text_backbone(ids, mask))`."""
        return self._run_text_backbone(input_ids, attention_mask, None)[0].last_hidden_state

    def _encode_image(self, pixel_values: torch.Tensor, **backbone_kwargs) -> tuple[ModelOutput, torch.Tensor]:
        """The vision backbone's output and the projected (N_img, L_v, C) tokens."""
        outputs, hidden = self._run_vision_backbone(pixel_values, **backbone_kwargs)
        return outputs, self.vision_projection(hidden)

    def _run_vision_backbone(self, pixel_values: torch.Tensor, **backbone_kwargs) -> tuple[ModelOutput, torch.Tensor]:
        """The vision backbone's output and its (N_img, L_v, hidden) tokens. `backbone_kwargs`
        (`output_hidden_states`, `output_attentions`) reach the backbone only when set: a CNN takes no
        `output_attentions`."""
        self._check_pixel_values(pixel_values)
        backbone_kwargs = {name: value for name, value in backbone_kwargs.items() if value is not None}
        outputs = self.vision_model(pixel_values=pixel_values, **backbone_kwargs)
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:
            hidden = hidden.flatten(2).transpose(1, 2)
        expected = self.config.num_patches + int(self.config.vision_cls_token)
        if hidden.shape[1] != expected:
            raise ValueError(
                f"the vision backbone produced {hidden.shape[1]} tokens for images of size "
                f"{tuple(pixel_values.shape[-2:])}; the config expects {expected} (num_patches="
                f"{self.config.num_patches}, cls token={self.config.vision_cls_token}): resize the images"
            )
        return outputs, hidden

    def _encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        **backbone_kwargs,
    ) -> tuple[ModelOutput, torch.Tensor, torch.Tensor]:
        """The text backbone's output, the projected (N_txt, L_t, C) tokens and the checked attention mask."""
        outputs, attention_mask = self._run_text_backbone(input_ids, attention_mask, token_type_ids, **backbone_kwargs)
        return outputs, self.text_projection(outputs.last_hidden_state), attention_mask

    def _run_text_backbone(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        **backbone_kwargs,
    ) -> tuple[ModelOutput, torch.Tensor]:
        """The text backbone's output and the checked attention mask."""
        attention_mask = self._check_text_inputs(input_ids, attention_mask, "input_ids", "attention_mask")
        _check_token_type_ids(token_type_ids, input_ids)
        backbone_kwargs = {name: value for name, value in backbone_kwargs.items() if value is not None}
        if token_type_ids is not None:
            backbone_kwargs["token_type_ids"] = token_type_ids
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask, **backbone_kwargs), attention_mask

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> SepsFeaturesOutput:
        """The images' features as a `ModelOutput` (CLIP's layout, see [`SepsFeaturesOutput`]): `.embeds` holds
        the (N_img, L_v, C) tokens of [`~SepsModel.encode_image`], `.pooler_output` their global embedding
        (N_img, V, C).
        Accepts `return_dict` (default `config.return_dict`; `False` gives a tuple)."""
        outputs, embeds = self._encode_image(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        return self._image_features_output(outputs, embeds)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> SepsFeaturesOutput:
        """The captions' features as a `ModelOutput` (CLIP's layout, see [`SepsFeaturesOutput`]): `.embeds` holds
        the (N_txt, L_t, C) tokens of [`~SepsModel.encode_text`], `.pooler_output` their global embedding.
        Accepts `return_dict` (default `config.return_dict`; `False` gives a tuple)."""
        outputs, embeds, attention_mask = self._encode_text(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return _features_output(outputs, embeds, self.global_text_embeds(embeds, attention_mask))

    def _image_features_output(self, outputs: ModelOutput, embeds: torch.Tensor) -> SepsFeaturesOutput:
        return _features_output(outputs, embeds, self.global_image_embeds(embeds))

    # ---------------------------------------------------------------- global embeddings (first stage)

    def global_image_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(N_img, L_v, C) [`~SepsModel.encode_image`] tokens -> (N_img, V, C) unit vectors, V =
        `config.num_global_image_vectors`; the best inner product of an image's vectors with
        [`~SepsModel.global_text_embeds`] ranks images cheaply (`global_embedding.first_stage_scores`). Without a
        global embedding (`config.global_contrastive_weight == 0`): the normalised mean of the patch tokens, V = 1."""
        if self.global_embedding is None:
            return mean_pooled_embedding(image_embeds[:, int(self.config.vision_cls_token) :])[:, None]
        return self.global_embedding.embed_image(image_embeds)

    def global_text_embeds(self, text_embeds: torch.Tensor, text_attention_mask: torch.Tensor) -> torch.Tensor:
        """(N_txt, L_t, C) [`~SepsModel.encode_text`] tokens and their (N_txt, L_t) mask -> (N_txt, C) unit
        vectors (the normalised mean of the real tokens without a global embedding)."""
        if self.global_embedding is None:
            return mean_pooled_embedding(text_embeds, text_attention_mask)
        return self.global_embedding.embed_text(text_embeds, text_attention_mask)

    def get_global_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N_img, 3, H, W) pixels -> (N_img, V, C) global image embeddings (unit vectors; V per image, see
        [`~SepsModel.global_image_embeds`])."""
        return self.global_image_embeds(self.encode_image(pixel_values))

    def get_global_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N_txt, L_t) token ids -> (N_txt, C) global caption embeddings (unit vectors)."""
        attention_mask = self._check_text_inputs(input_ids, attention_mask, "input_ids", "attention_mask")
        return self.global_text_embeds(self.encode_text(input_ids, attention_mask), attention_mask)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}")
        if not torch.is_floating_point(pixel_values):
            raise ValueError(
                f"pixel_values must be a float tensor of normalized pixels (SepsProcessor's output), got dtype "
                f"{pixel_values.dtype}: run the images through the processor"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values holds no image (batch size 0)")
        channels = getattr(self.config.vision_config, "num_channels", None)
        if channels is not None and pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels; the vision backbone expects {channels}"
            )

    def _check_text_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, ids_name: str, mask_name: str
    ) -> torch.Tensor:
        """Checks token ids (batch, sequence) and their mask; returns the mask (all ones when None)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
            raise ValueError(f"{ids_name} must be a (batch, sequence) tensor of token ids, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{ids_name} must hold integer token ids (int64), got dtype {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise ValueError(f"{ids_name} holds no caption (shape {tuple(input_ids.shape)})")
        vocab_size = getattr(self.config.text_config, "vocab_size", None)
        low, high = input_ids.min().item(), input_ids.max().item()
        if vocab_size is not None and (low < 0 or high >= vocab_size):
            raise ValueError(
                f"{ids_name} holds token ids in [{low}, {high}], outside the text model's vocabulary [0, {vocab_size})"
                ": was it made by this model's tokenizer?"
            )
        limit = self.config.max_text_length
        if limit is not None and input_ids.shape[1] > limit:
            raise ValueError(
                f"{ids_name} has {input_ids.shape[1]} tokens per caption; the text model accepts at most {limit} "
                "(its position embeddings): truncate the captions (SepsProcessor(text_model_max_length=...) does)"
            )
        if attention_mask is None:
            return torch.ones_like(input_ids)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"{mask_name} {shape} must have the shape of {ids_name} {tuple(input_ids.shape)}")
        _check_no_empty_rows(attention_mask, mask_name)
        return attention_mask

    # ---------------------------------------------------------------- per-image and per-caption preparation

    def _prepare_images(self, image_embeds: torch.Tensor, dense: _TextSide | None) -> _ImageSide:
        if self.config.vision_cls_token:
            return self.head.prepare_images(image_embeds[:, 1:], image_embeds[:, 0], dense)
        return self.head.prepare_images(image_embeds, None, dense)

    def _chunk_size(self, chunk_size: int | None, device: torch.device, max_words: int) -> int:
        """Pairs per block: `chunk_size`, else `config.similarity_chunk_size`, else chosen from the device."""
        return (
            chunk_size
            or self.config.similarity_chunk_size
            or default_similarity_chunk_size(self.config, device, max_words)
        )

    def _pair_block_size(self, num_texts: int, chunk: int) -> tuple[int, int]:
        """(images, captions) per block of `chunk` pairs: captions up to a share of the block, images the rest."""
        texts_per_block = min(num_texts, max(1, chunk // _IMAGES_PER_BLOCK))
        return max(1, chunk // texts_per_block), texts_per_block

    def _score(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_attention_mask: torch.Tensor,
        dense_embeds: torch.Tensor | None,
        dense_attention_mask: torch.Tensor | None,
        chunk_size: int | None,
        return_masks: bool,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        self._check_similarity_inputs(
            image_embeds, text_embeds, text_attention_mask, dense_embeds, dense_attention_mask
        )
        if dtype not in SCORING_DTYPES:
            raise ValueError(f"dtype must be one of {SCORING_DTYPES}, got {dtype!r}")
        # The head computes in float32 whatever precision the backbones ran in (`model.half()`, autocast): in
        # 16-bit floats the Gram-matrix norms of `_cosine_with_words` (sums of large terms of both signs) and
        # the softmax exponentials lose their precision or underflow.
        with torch.autocast(image_embeds.device.type, enabled=False):
            return self._score_in_float32(
                image_embeds.float(),
                text_embeds.float(),
                text_attention_mask,
                None if dense_embeds is None else dense_embeds.float(),
                dense_attention_mask,
                chunk_size,
                return_masks,
                dtype,
            )

    def _score_in_float32(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_attention_mask: torch.Tensor,
        dense_embeds: torch.Tensor | None,
        dense_attention_mask: torch.Tensor | None,
        chunk_size: int | None,
        return_masks: bool,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        dense = None
        if dense_embeds is not None:
            dense = _TextSide.from_embeddings(dense_embeds, dense_attention_mask, paired=True)
        image_side = self._prepare_images(image_embeds, dense)
        # The two large products of `score_block` (patches x words, weights x Gram) run in `dtype`.
        image_side.patches, image_side.gram = image_side.patches.to(dtype), image_side.gram.to(dtype)
        # Captions go through in order of length, each block trimmed to its own longest caption.
        length_order = torch.argsort(text_attention_mask.sum(dim=1), stable=True)
        text_side = _TextSide.from_embeddings(text_embeds, text_attention_mask)[length_order]
        num_images, num_texts = image_embeds.shape[0], text_embeds.shape[0]
        device = image_embeds.device
        chunk = self._chunk_size(chunk_size, device, text_embeds.shape[1])
        images_per_block, texts_per_block = self._pair_block_size(num_texts, chunk)

        rows, mask_rows = [], []
        for image_start in range(0, num_images, images_per_block):
            image_block = image_side[image_start : image_start + images_per_block]
            columns, mask_columns = [], []
            for text_start in range(0, num_texts, texts_per_block):
                text_block = text_side[text_start : text_start + texts_per_block].trimmed()
                scores, keep_mask = self.head.score_block(image_block, text_block)
                columns.append(scores)
                if return_masks:
                    mask_columns.append(keep_mask)
            rows.append(torch.cat(columns, dim=1))
            if return_masks:
                mask_rows.append(torch.cat(mask_columns, dim=1))
        original_order = torch.argsort(length_order)
        scores = torch.cat(rows, dim=0)[:, original_order]
        sparse_masks = torch.cat(mask_rows, dim=0)[:, original_order] if return_masks else None

        if dense is not None:
            dense_chunk = self._chunk_size(chunk_size, device, dense_embeds.shape[1])
            dense_column = self.head.dense_branch(image_side, dense, dense_chunk)
            if dense_column is not None:
                scores = scores + dense_column
        return scores, sparse_masks, image_side.dense_keep_mask

    def similarity(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_attention_mask: torch.Tensor,
        dense_embeds: torch.Tensor | None = None,
        dense_attention_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        dtype: torch.dtype = torch.float32,
        first_stage_weight: float | None = None,
    ) -> torch.Tensor:
        """The score of every image and caption, S(I_j, T_i) in blocks of at most `chunk_size` pairs, plus w times
        the first stage's score when the fusion weight w (`config.first_stage_weight`) is set.

        Args:
            image_embeds: (N_img, L_v, C) from [`~SepsModel.encode_image`].
            text_embeds: (N_txt, L_t, C) from [`~SepsModel.encode_text`].
            text_attention_mask: (N_txt, L_t), 1 for real tokens.
            dense_embeds: (N_img, L_d, C), ONE dense caption per image, the image's own (docs/model.md, section 2).
                Without it the dense terms drop out.
            dense_attention_mask: (N_img, L_d).
            chunk_size: pairs scored at once (default `config.similarity_chunk_size`, else chosen from the device:
                `default_similarity_chunk_size`); memory is O(chunk_size * (N_c * N + N * L_t)), never
                N_img * N_txt * N * C.
            dtype: `torch.bfloat16` runs the two large products of the scoring (patches x words, weights x Gram
                matrix) in bfloat16, faster where the hardware has bfloat16 matrix units (CUDA, CPUs with AMX or
                AVX512-BF16; much slower on others) at a cost in precision (docs/speed.md, bfloat16); the selection, the
                softmaxes and the normalisations stay in float32. Default float32 throughout.
            first_stage_weight: w of the fused score S + w * G, G being the first stage's score of the pair
                (`transformers_seps.global_embedding.first_stage_scores`); default `config.first_stage_weight`
                (fit on the dev split after training), 0 for S alone.

        Returns:
            (N_img, N_txt) scores. Selection decisions are deterministic (top-K) in eval mode and sampled in
            training mode (paper variant).
        """
        if chunk_size is not None:
            check_positive_int("chunk_size", chunk_size)
        scores = self._score(
            image_embeds,
            text_embeds,
            text_attention_mask,
            dense_embeds,
            dense_attention_mask,
            chunk_size,
            False,
            dtype,
        )[0]
        return self._fuse_first_stage(scores, image_embeds, text_embeds, text_attention_mask, first_stage_weight)

    def _fuse_first_stage(
        self,
        scores: torch.Tensor,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_attention_mask: torch.Tensor,
        weight: float | None = None,
    ) -> torch.Tensor:
        """(N_img, N_txt) `scores` S plus `weight` (default `config.first_stage_weight`) times the first stage's
        scores of the same pairs: the one place the fused score is made."""
        weight = self.config.first_stage_weight if weight is None else weight
        if weight == 0:
            return scores
        first_stage = first_stage_scores(
            self.global_text_embeds(text_embeds, text_attention_mask).float(),
            self.global_image_embeds(image_embeds).float(),
        )
        return self.fuse_scores(scores, first_stage.t(), weight)

    def fuse_scores(
        self, seps_scores: torch.Tensor, first_stage_scores: torch.Tensor, weight: float | None = None
    ) -> torch.Tensor:
        """The fused score S + w * G of pairs whose SEPS scores S and first-stage scores G are given (any shape,
        the same for both; NumPy arrays too), w being `weight` or `config.first_stage_weight`:
        what [`~SepsModel.similarity`] returns, for callers that computed S and G apart."""
        weight = self.config.first_stage_weight if weight is None else weight
        if weight < 0 or (weight > 0 and self.global_embedding is None):
            raise ValueError(
                f"first_stage_weight must be >= 0, and > 0 needs a trained first stage (global_embedding): got "
                f"{weight} with global_embedding={type(self.global_embedding).__name__}"
            )
        return seps_scores + weight * first_stage_scores if weight else seps_scores

    def _check_similarity_inputs(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_attention_mask: torch.Tensor,
        dense_embeds: torch.Tensor | None,
        dense_attention_mask: torch.Tensor | None,
    ) -> None:
        embed_dim = self.config.embed_dim
        expected_tokens = self.config.num_patches + int(self.config.vision_cls_token)
        for name, value in (
            ("image_embeds", image_embeds),
            ("text_embeds", text_embeds),
            ("text_attention_mask", text_attention_mask),
            ("dense_embeds", dense_embeds),
            ("dense_attention_mask", dense_attention_mask),
        ):
            if value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value is not None and value.shape[0] == 0:
                raise ValueError(f"{name} is empty (shape {tuple(value.shape)}): give at least one image and caption")
        if image_embeds.dim() != 3 or image_embeds.shape[1:] != (expected_tokens, embed_dim):
            raise ValueError(
                f"image_embeds must have shape (N_img, {expected_tokens}, {embed_dim}), got {tuple(image_embeds.shape)}"
            )
        for name, embeds, mask in (
            ("text", text_embeds, text_attention_mask),
            ("dense", dense_embeds, dense_attention_mask),
        ):
            if embeds is None:
                if mask is not None:
                    raise ValueError(f"{name} attention mask given without {name} embeddings")
                continue
            if embeds.dim() != 3 or embeds.shape[-1] != embed_dim:
                raise ValueError(f"{name}_embeds must have shape (N, L, {embed_dim}), got {tuple(embeds.shape)}")
            if mask is None or tuple(mask.shape) != tuple(embeds.shape[:2]):
                got = None if mask is None else tuple(mask.shape)
                raise ValueError(f"{name} attention mask must have shape {tuple(embeds.shape[:2])}, got {got}")
            _check_no_empty_rows(mask, f"{name} attention mask")
        if dense_embeds is not None and dense_embeds.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"dense_embeds holds one dense caption per image: expected {image_embeds.shape[0]} rows, got "
                f"{dense_embeds.shape[0]}"
            )

    # ---------------------------------------------------------------- forward

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        dense_input_ids: torch.Tensor | None = None,
        dense_attention_mask: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        max_violation: bool = True,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> SepsOutput:
        """Score every image of the batch against every caption.

        Args:
            pixel_values: (N_img, 3, H, W).
            input_ids, attention_mask: (N_txt, L_t) captions.
            dense_input_ids, dense_attention_mask: (N_img, L_d), the dense caption of each image.
            image_ids: (N_img,) image identities; with `return_loss`, captions k and k' of images with the same
                id are both positives of either image (five captions share an image).
            return_loss: compute the loss; needs paired batches (N_img == N_txt, caption k describes image k).
            max_violation: hardest negative (True) or sum over negatives (the first
                `config.max_violation_warmup_epochs` epochs).
            token_type_ids: (N_txt, L_t) segment ids of the captions (BERT tokenizers emit them, all 0 for a
                caption), passed on to the text backbone.
            output_hidden_states, output_attentions: return the backbones' hidden states / attentions, in
                `vision_model_output` and `text_model_output` (default: the backbones' configs).

        `return_dict` (default `config.return_dict`): `False` gives `SepsOutput.to_tuple()`.
        """
        # Every input is checked before the encoders run.
        self._check_pixel_values(pixel_values)
        attention_mask = self._check_text_inputs(input_ids, attention_mask, "input_ids", "attention_mask")
        if dense_input_ids is None and dense_attention_mask is not None:
            raise ValueError("dense_attention_mask given without dense_input_ids")
        if dense_input_ids is not None:
            dense_attention_mask = self._check_text_inputs(
                dense_input_ids, dense_attention_mask, "dense_input_ids", "dense_attention_mask"
            )
            if dense_input_ids.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"one dense caption per image: {pixel_values.shape[0]} images but {dense_input_ids.shape[0]} "
                    "dense captions"
                )
        _check_token_type_ids(token_type_ids, input_ids)
        _check_pairing(pixel_values.shape[0], input_ids.shape[0], image_ids, return_loss)
        requested = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        vision_outputs, image_embeds = self._encode_image(pixel_values, **requested)
        text_outputs, text_embeds, _ = self._encode_text(input_ids, attention_mask, token_type_ids, **requested)
        dense_embeds = None
        if dense_input_ids is not None:
            dense_embeds = self.encode_text(dense_input_ids, dense_attention_mask)
        output = self.score_embeddings(
            image_embeds,
            text_embeds,
            attention_mask,
            dense_embeds,
            dense_attention_mask,
            image_ids=image_ids,
            return_loss=return_loss,
            max_violation=max_violation,
        )
        # Item assignment: a ModelOutput only lists (and `to_tuple` only returns) fields set that way or at init.
        output["vision_model_output"] = self._image_features_output(vision_outputs, image_embeds)
        output["text_model_output"] = _features_output(
            text_outputs, text_embeds, self.global_text_embeds(text_embeds, attention_mask)
        )
        return output

    def score_embeddings(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_attention_mask: torch.Tensor,
        dense_embeds: torch.Tensor | None = None,
        dense_attention_mask: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        max_violation: bool = True,
    ) -> SepsOutput:
        """The second half of `forward`: scores, selection masks and loss from embeddings.

        Shapes as in [`~SepsModel.similarity`]; `image_ids` (N_img,). A distributed trainer calls it on the
        gathered global batch (see `transformers_seps.loss`).
        """
        _check_pairing(image_embeds.shape[0], text_embeds.shape[0], image_ids, return_loss)
        scores, sparse_keep_mask, dense_keep_mask = self._score(
            image_embeds, text_embeds, text_attention_mask, dense_embeds, dense_attention_mask, None, True
        )
        loss = alignment_loss = ratio_loss = contrastive_loss = None
        if return_loss:
            config = self.config
            ids = image_ids if image_ids is not None else torch.arange(image_embeds.shape[0], device=scores.device)
            alignment_loss = vse_triplet_loss(scores, ids, config.margin, max_violation)
            if config.alignment_infonce_weight > 0:
                infonce = paired_infonce(scores.t() / config.alignment_temperature, ids)
                alignment_loss = alignment_loss + config.alignment_infonce_weight * infonce
            ratio_loss = config.lambda_sparse * (config.sparse_ratio - sparse_keep_mask.mean()) ** 2
            if dense_keep_mask is not None:
                ratio_loss = ratio_loss + config.lambda_dense * (config.sparse_ratio - dense_keep_mask.mean()) ** 2
            loss = alignment_loss + config.ratio_weight * ratio_loss
            if self.global_embedding is not None:
                image_tokens, text_tokens = image_embeds, text_embeds
                if config.global_detach_tokens:  # the first stage learns from the SEPS tokens without reshaping them
                    image_tokens, text_tokens = image_embeds.detach(), text_embeds.detach()
                contrastive_loss = global_contrastive_loss(
                    self.global_image_embeds(image_tokens),
                    self.global_text_embeds(text_tokens, text_attention_mask),
                    ids,
                    config.global_temperature,
                    config.global_max_smoothing,
                )
                loss = loss + config.global_contrastive_weight * contrastive_loss
        # Logits scaled as CLIP's, for a softmax over them, of the score `similarity` ranks by; the loss above stays
        # on S (Eq. 6).
        ranked = self._fuse_first_stage(scores, image_embeds, text_embeds, text_attention_mask)
        logits = ranked * self.config.logit_scale
        return SepsOutput(
            loss=loss,
            alignment_loss=alignment_loss,
            ratio_loss=ratio_loss,
            global_contrastive_loss=contrastive_loss,
            logits_per_image=logits,
            logits_per_text=logits.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            dense_embeds=dense_embeds,
            sparse_keep_mask=sparse_keep_mask,
            dense_keep_mask=dense_keep_mask,
        )


def _hidden_size(config: PreTrainedConfig) -> int | None:
    """Width of a backbone's last hidden state as its config states it (Swin: the last stage; timm: its feature
    count); None when the config does not say (ConvNeXt, ResNet)."""
    for name in ("hidden_size", "num_features"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _features_output(outputs: ModelOutput, embeds: torch.Tensor, pooled: torch.Tensor) -> SepsFeaturesOutput:
    """A backbone's output with its projected tokens `embeds` and their pooled vector, as [`SepsFeaturesOutput`]."""
    return SepsFeaturesOutput(
        last_hidden_state=outputs.last_hidden_state,
        pooler_output=pooled,
        hidden_states=getattr(outputs, "hidden_states", None),
        attentions=getattr(outputs, "attentions", None),
        embeds=embeds,
    )


def _check_token_type_ids(token_type_ids: torch.Tensor | None, input_ids: torch.Tensor) -> None:
    if token_type_ids is not None and (
        not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape
    ):
        shape = tuple(token_type_ids.shape) if isinstance(token_type_ids, torch.Tensor) else type(token_type_ids)
        raise ValueError(f"token_type_ids {shape} must have the shape of input_ids {tuple(input_ids.shape)}")


def _check_pairing(num_images: int, num_texts: int, image_ids: torch.Tensor | None, return_loss: bool) -> None:
    if return_loss and num_images != num_texts:
        raise ValueError(
            f"return_loss needs paired batches (caption k describes image k): got {num_images} images and "
            f"{num_texts} captions"
        )
    if image_ids is not None and (not isinstance(image_ids, torch.Tensor) or image_ids.shape != (num_images,)):
        got = tuple(image_ids.shape) if isinstance(image_ids, torch.Tensor) else type(image_ids).__name__
        raise ValueError(f"image_ids must be a tensor of shape ({num_images},), one id per image; got {got}")


def _check_safetensors_headers(folder: str) -> None:
    """Reads the header of every `.safetensors` file of `folder` (cheap: the tensors are not loaded), so that a
    truncated or damaged file is named before loading."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            path = os.path.join(folder, name)
            try:
                with safe_open(path, framework="pt"):
                    pass
            except SafetensorError as error:
                raise OSError(
                    f"cannot read the weights file {path!r} ({error}): it is damaged or incomplete (an interrupted "
                    "copy or download?); save or download it again"
                ) from error


def _check_no_empty_rows(mask: torch.Tensor, name: str) -> None:
    empty = (mask.sum(dim=-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{name}: rows {empty} have no token (all padding); every caption needs at least one token")


@torch.no_grad()
def _probe_vision_backbone(vision: PreTrainedModel, image_size: int) -> tuple[int, bool, int]:
    """Run a blank `image_size` image through a vision backbone (in eval mode, so BatchNorm statistics stay
    untouched): spatial patches, [CLS] token or not, output width."""
    was_training = vision.training
    vision.eval()
    channels = getattr(vision.config, "num_channels", 3)
    device = next(vision.parameters()).device
    hidden = vision(pixel_values=torch.zeros(1, channels, image_size, image_size, device=device)).last_hidden_state
    vision.train(was_training)
    if hidden.dim() == 4:
        return hidden.shape[2] * hidden.shape[3], False, hidden.shape[1]
    num_patches, cls_token = infer_patch_layout(vision.config)
    if num_patches is None:
        # The SEPS authors' rule: a square token count is a bare patch grid, one more means a [CLS] token.
        length = hidden.shape[1]
        num_patches, cls_token = (length, False) if int(length**0.5) ** 2 == length else (length - 1, True)
    return num_patches, cls_token, hidden.shape[-1]


__all__ = [
    "SEPS_HEADS",
    "SepsHead",
    "SepsFeaturesOutput",
    "SepsModel",
    "SepsOfficialHead",
    "SepsOutput",
    "SepsPaperHead",
    "SepsPreTrainedModel",
    "SepsPatchScorer",
    "SepsRelevanceHead",
    "SepsTokenAggregator",
    "gumbel_keep_mask",
    "default_similarity_chunk_size",
    "kept_aggregation_weights",
    "kept_softmax",
    "masked_softmax",
    "min_max_normalize",
    "top_k_keep_mask",
    "top_k_padded",
    "vse_triplet_loss",
]
