"""One vector per image and per caption: the first stage of a two-stage search, before SEPS re-ranks a shortlist.

As BLIP pairs its ITC embeddings with ITM re-ranking: the SEPS tokens are pooled and projected to a global
embedding, trained by a contrastive loss (InfoNCE) over the global batch (`transformers_seps.loss`).
"""

import torch
import torch.nn.functional as F
from torch import nn


def masked_token_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax of (N, ..., L) token logits over the tokens where `mask` (N, L) is true (all of them when None)."""
    if mask is not None:
        mask = mask.bool().view(mask.shape[0], *([1] * (logits.dim() - 2)), mask.shape[-1])
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


class SepsGlobalEmbedding(nn.Module):
    """Attention pooling with `num_queries` learned queries (a score per token and query, softmax over the real
    tokens), the pooled vectors concatenated and linearly projected, one pooling and projection per modality; the
    output is L2-normalised, so that inner product is cosine.

    Several queries let one vector describe several objects of an image: a single query's softmax settles on a
    few tokens (README, "Speed"). Images pool all their tokens ([CLS] included), captions their real tokens.
    """

    def __init__(self, embed_dim: int, num_queries: int = 1):
        super().__init__()
        # No bias: the softmax over the tokens would ignore it.
        self.image_pool = nn.Linear(embed_dim, num_queries, bias=False)
        self.text_pool = nn.Linear(embed_dim, num_queries, bias=False)
        self.image_projection = nn.Linear(num_queries * embed_dim, embed_dim)
        self.text_projection = nn.Linear(num_queries * embed_dim, embed_dim)

    @staticmethod
    def _pool(tokens: torch.Tensor, mask: torch.Tensor | None, score: nn.Linear, projection: nn.Linear) -> torch.Tensor:
        weights = masked_token_softmax(score(tokens).transpose(1, 2), mask)  # (N, queries, L)
        pooled = torch.einsum("nql,nlc->nqc", weights, tokens).flatten(1)
        return F.normalize(projection(pooled), dim=-1)

    def embed_image(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(N_img, L_v, C) `SepsModel.encode_image` tokens -> (N_img, C) unit vectors."""
        return self._pool(image_embeds, None, self.image_pool, self.image_projection)

    def embed_text(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N_txt, L_t, C) `SepsModel.encode_text` tokens and their (N_txt, L_t) mask -> (N_txt, C) unit vectors."""
        return self._pool(text_embeds, attention_mask, self.text_pool, self.text_projection)


def mean_pooled_embedding(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised mean of (N, L, C) tokens over the real ones -> (N, C): the untrained first stage of a model
    without a `SepsGlobalEmbedding` (the authors' converted checkpoints)."""
    weights = masked_token_softmax(tokens.new_zeros(tokens.shape[:2]), mask)
    return F.normalize(torch.einsum("nl,nlc->nc", weights, tokens), dim=-1)


def global_contrastive_loss(
    image_global: torch.Tensor, text_global: torch.Tensor, image_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE of a paired batch (caption k describes image k), as CLIP's and BLIP's ITC.

    Args:
        image_global, text_global: (N, D) unit vectors.
        image_ids: (N,) image identities; every image with the caption's image id is a positive (the target
            spreads evenly over them), so repeated images of a batch are not pushed apart.
        temperature: logits are cosine / temperature.
    """
    logits = text_global @ image_global.t() / temperature
    positives = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


__all__ = ["SepsGlobalEmbedding", "global_contrastive_loss", "mean_pooled_embedding"]
