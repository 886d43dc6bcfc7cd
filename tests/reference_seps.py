"""Plain one-caption-at-a-time SEPS scoring, written independently of the vectorised model code.

It follows the spec step by step with sort/gather on the kept patches (as the authors' loop does) and
serves as the ground truth that `SepsModel.similarity` must match.
"""

from contextlib import nullcontext

import torch
import torch.nn.functional as F


def _split(image_embeds: torch.Tensor, has_cls: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    if has_cls:
        return image_embeds[:, :1], image_embeds[:, 1:]
    return None, image_embeds


def _cosine_to_patches(vector: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """vector (I or 1, C) unnormalised, patches (I, N, C) -> (I, N) cosines."""
    return (F.normalize(vector, dim=-1).unsqueeze(1) * F.normalize(patches, dim=-1)).sum(-1)


def _gather(patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(patches, 1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def _minmax(values: torch.Tensor) -> torch.Tensor:
    low = values.min(dim=1, keepdim=True).values
    high = values.max(dim=1, keepdim=True).values
    return (values - low) / (high - low + 1e-6)


def official_image_side(config, image_embeds: torch.Tensor) -> dict:
    """What the authors' caption loop computes once per image batch, before its loop over captions: [CLS] and
    spatial patches, the normalised patches and the self-attention scores cos(mean P, P_n)."""
    cls, patches = _split(image_embeds, config.vision_cls_token)
    patches_norm = F.normalize(patches, dim=-1)
    with torch.no_grad():
        self_scores = (F.normalize(patches.mean(1), dim=-1).unsqueeze(1) * patches_norm).sum(-1)
    return {"cls": cls, "patches": patches, "patches_norm": patches_norm, "self_scores": self_scores}


def official_caption_scores(
    config, aggregator_mlp, aggregator_scale, image: dict, caption: torch.Tensor
) -> torch.Tensor:
    """f(I, T) of docs/model.md section 3 for all images (`official_image_side`) and ONE caption (W, C), real
    tokens only -> (I,). The same operations, in the same order, as one step of the authors' caption loop."""
    patches = image["patches"]
    with torch.no_grad():
        text_scores = (F.normalize(caption.mean(0), dim=-1) * image["patches_norm"]).sum(-1)
        sorted_scores, order = torch.sort(image["self_scores"] + text_scores, dim=1, descending=True)
    k = config.num_kept_patches
    with torch.no_grad() if config.detach_selected_patches else nullcontext():
        kept = _gather(patches, order[:, :k])
        dropped = _gather(patches, order[:, k:])
        extra = (F.softmax(sorted_scores[:, k:], dim=1).unsqueeze(-1) * dropped).sum(1, keepdim=True)
    weights = F.softmax((aggregator_mlp(kept) * aggregator_scale).transpose(1, 2), dim=2)
    pieces = [weights @ kept, extra]
    if image["cls"] is not None:
        pieces.insert(0, image["cls"])
    tokens = F.normalize(torch.cat(pieces, dim=1), dim=-1)
    words = F.normalize(caption, dim=-1).expand(tokens.shape[0], -1, -1)
    alignment = F.leaky_relu(words @ tokens.transpose(1, 2), negative_slope=config.leaky_relu_slope)
    return alignment.max(dim=2).values.mean(dim=1) + alignment.max(dim=1).values.mean(dim=1)


def official_branch(
    config, aggregator_mlp, aggregator_scale, image_embeds: torch.Tensor, caption: torch.Tensor
) -> torch.Tensor:
    """f(I, T) for all images and ONE caption (W, C), real tokens only -> (I,).

    `aggregator_mlp` (LayerNorm, Linear, GELU, Linear) and `aggregator_scale` may be a `SepsModel`'s or the
    authors' own `cross_net.aggr_net.weight` / `.scale`. Gradients as in the authors' training: the selection
    scores carry none, and with `config.detach_selected_patches` neither do the kept and fused patches.
    """
    image = official_image_side(config, image_embeds)
    return official_caption_scores(config, aggregator_mlp, aggregator_scale, image, caption)


def official_caption_loop(model, image_embeds: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
    """(I, T) scores f(I, T) of one caption branch, shaped as the authors' loop (their lib/cross_net.py): the
    per-image work once, then one caption at a time against all images. benchmarks/bench_similarity.py times
    it as the authors' speed."""
    aggregator = model.head.aggregator
    image = official_image_side(model.config, image_embeds)
    columns = [
        official_caption_scores(model.config, aggregator.mlp, aggregator.scale, image, caption) for caption in captions
    ]
    return torch.stack(columns, dim=1)


def _relevance(head, values: torch.Tensor) -> torch.Tensor:
    """values (I, M) -> mean + MLP(top-k), short rows padded with their smallest value."""
    k = head.top_k
    ordered = values.sort(dim=1, descending=True).values[:, :k]
    if ordered.shape[1] < k:
        ordered = torch.cat([ordered, ordered[:, -1:].expand(-1, k - ordered.shape[1])], dim=1)
    return values.mean(dim=1) + head.mlp(ordered).squeeze(-1)


def _aggregate_kept(aggregator, patches: torch.Tensor, kept_index: torch.Tensor) -> torch.Tensor:
    kept = _gather(patches, kept_index)
    weights = F.softmax((aggregator.mlp(kept) * aggregator.scale).transpose(1, 2), dim=2)
    return weights @ kept


def paper_score(model, image_embeds: torch.Tensor, caption: torch.Tensor, dense: list | None) -> torch.Tensor:
    """S(I, T) of spec section 4 (eval mode) for all images and ONE caption; dense[j] is image j's own."""
    config = model.config
    beta, k = config.beta, config.num_kept_patches
    cls, patches = _split(image_embeds, config.vision_cls_token)
    patch_scores = model.head.patch_scorer(patches)
    self_scores = _minmax(_cosine_to_patches(patches.mean(1), patches))
    text_scores = _minmax(_cosine_to_patches(caption.mean(0, keepdim=True), patches))
    if dense is None:
        scores = ((1 - 2 * beta) * patch_scores + beta * (text_scores + 2 * self_scores)) / (1 + beta)
    else:
        dense_global = torch.stack([d.mean(0) for d in dense])
        dense_scores = _minmax(_cosine_to_patches(dense_global, patches))
        scores = ((1 - 2 * beta) * patch_scores + beta * (text_scores + dense_scores + 2 * self_scores)) / (
            1 + 2 * beta
        )
    sorted_scores, order = torch.sort(scores, dim=1, descending=True)
    tokens = _aggregate_kept(model.head.sparse_aggregator, patches, order[:, :k])
    if dense is not None:
        dense_view = ((1 - 2 * beta) * patch_scores + beta * (2 * dense_scores + 2 * self_scores)) / (1 + 2 * beta)
        dense_order = torch.sort(dense_view, dim=1, descending=True).indices
        tokens = tokens + _aggregate_kept(model.head.dense_aggregator, patches, dense_order[:, :k])
    pieces = [tokens]
    if config.keep_cls_and_extra_token:
        dropped = _gather(patches, order[:, k:])
        extra = (F.softmax(sorted_scores[:, k:], dim=1).unsqueeze(-1) * dropped).sum(1, keepdim=True)
        pieces = ([cls] if cls is not None else []) + [tokens, extra]
    tokens = F.normalize(torch.cat(pieces, dim=1), dim=-1)
    alignment = torch.einsum("wc,ilc->iwl", F.normalize(caption, dim=-1), tokens)
    return _relevance(model.head.word_relevance, alignment.max(dim=2).values) + _relevance(
        model.head.token_relevance, alignment.max(dim=1).values
    )


def reference_similarity(model, image_embeds, text_embeds, text_mask, dense_embeds=None, dense_mask=None):
    """(N_img, N_txt) scores, one caption at a time."""
    dense = None
    if dense_embeds is not None:
        dense = [d[m.bool()] for d, m in zip(dense_embeds, dense_mask, strict=True)]
    captions = [caption[mask.bool()] for caption, mask in zip(text_embeds, text_mask, strict=True)]
    if model.config.variant == "official":
        scores = official_caption_loop(model, image_embeds, captions)
        if dense is not None:
            own = [official_caption_loop(model, image_embeds[j : j + 1], [d])[0, 0] for j, d in enumerate(dense)]
            scores = scores + torch.stack(own).unsqueeze(1)
        return scores
    return torch.stack([paper_score(model, image_embeds, caption, dense) for caption in captions], dim=1)
