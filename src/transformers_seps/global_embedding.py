"""A few vectors per image and one per caption: the first stage of a two-stage search, before SEPS re-ranks a shortlist.

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
    tokens), then linear projections to unit vectors, one pooling and projection per modality, so that inner
    product is cosine.

    A caption's pooled vectors are concatenated and projected to one vector. An image keeps `image_vectors`
    vectors: its queries are split into that many groups of consecutive ones, and each group's pooled vectors,
    concatenated, go through one shared projection (one group of all queries: a single vector). An image scores a
    caption by its best vector (`first_stage_scores`), as PVSE (Song and Soleymani, CVPR 2019) scores its
    multiple image embeddings: each vector can describe another object of the scene, where a single query's
    softmax settles on a few tokens and a single vector of a crowded scene matches each object weakly.
    Images pool all their tokens ([CLS] included), captions their real tokens.
    """

    def __init__(self, embed_dim: int, num_queries: int = 1, image_vectors: int = 1):
        super().__init__()
        if num_queries % image_vectors:
            raise ValueError(
                f"image_vectors ({image_vectors}) must divide num_queries ({num_queries}): each image vector "
                "pools as many queries"
            )
        self.image_vectors = image_vectors
        # No bias: the softmax over the tokens would ignore it.
        self.image_pool = nn.Linear(embed_dim, num_queries, bias=False)
        self.text_pool = nn.Linear(embed_dim, num_queries, bias=False)
        self.image_projection = nn.Linear(num_queries // image_vectors * embed_dim, embed_dim)
        self.text_projection = nn.Linear(num_queries * embed_dim, embed_dim)

    @staticmethod
    def _pool(
        tokens: torch.Tensor, mask: torch.Tensor | None, score: nn.Linear, projection: nn.Linear, vectors: int
    ) -> torch.Tensor:
        tokens = tokens.to(score.weight.dtype)  # e.g. float16 tokens of an index on disk, for a float32 model
        weights = masked_token_softmax(score(tokens).transpose(1, 2), mask)  # (N, queries, L)
        pooled = torch.einsum("nql,nlc->nqc", weights, tokens)
        grouped = pooled.reshape(pooled.shape[0], vectors, -1)  # consecutive queries concatenated per vector
        return F.normalize(projection(grouped), dim=-1)

    def embed_image(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(N_img, L_v, C) `SepsModel.encode_image` tokens -> (N_img, image_vectors, C) unit vectors."""
        return self._pool(image_embeds, None, self.image_pool, self.image_projection, self.image_vectors)

    def embed_text(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N_txt, L_t, C) `SepsModel.encode_text` tokens and their (N_txt, L_t) mask -> (N_txt, C) unit vectors."""
        return self._pool(text_embeds, attention_mask, self.text_pool, self.text_projection, 1)[:, 0]


# Inner products `first_stage_scores` computes at once: 64 MB of float32.
SCORE_BLOCK_PRODUCTS = 2**24


def first_stage_scores(text_global: torch.Tensor, image_global: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """The first stage's score of every caption-image pair: the largest inner product of the caption's vector with
    the image's vectors (PVSE's max over an image's embeddings).

    Args:
        text_global: (N_txt, D) caption vectors.
        image_global: (N_img, V, D) image vectors, V per image.
        smoothing: 0 (search) takes the maximum; s > 0 (training) the smooth maximum s * logsumexp(x / s), which
            lets every vector near the best one learn (at most s * log V above the maximum).

    Returns: (N_txt, N_img).
    """

    def best_of_vectors(products: torch.Tensor) -> torch.Tensor:
        if smoothing == 0:
            return products.amax(dim=-1)
        return smoothing * torch.logsumexp(products / smoothing, dim=-1)

    # In blocks of captions, so that their (captions, images, V) products stay below `SCORE_BLOCK_PRODUCTS` values
    # (a search of 5000 captions over 100k images x 16 vectors would be 32 GB at once).
    per_caption = max(1, image_global.shape[0] * image_global.shape[1])
    blocks = text_global.split(max(1, SCORE_BLOCK_PRODUCTS // per_caption))
    return torch.cat([best_of_vectors(torch.einsum("td,ivd->tiv", block, image_global)) for block in blocks])


def mean_pooled_embedding(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised mean of (N, L, C) tokens over the real ones -> (N, C): the untrained first stage of a model
    without a `SepsGlobalEmbedding` (the authors' converted checkpoints; an image's is its single vector)."""
    weights = masked_token_softmax(tokens.new_zeros(tokens.shape[:2]), mask)
    return F.normalize(torch.einsum("nl,nlc->nc", weights, tokens), dim=-1)


def global_contrastive_loss(
    image_global: torch.Tensor,
    text_global: torch.Tensor,
    image_ids: torch.Tensor,
    temperature: float,
    max_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE of a paired batch (caption k describes image k), as CLIP's and BLIP's ITC.

    Args:
        image_global: (N, V, D) unit vectors, V per image; text_global: (N, D) unit vectors.
        image_ids: (N,) image identities; every image with the caption's image id is a positive (the target
            spreads evenly over them), so repeated images of a batch are not pushed apart.
        temperature: logits are the `first_stage_scores` (the best of an image's cosines) / temperature.
        max_smoothing: the `smoothing` of `first_stage_scores` (0: the maximum a search takes).
    """
    return paired_infonce(first_stage_scores(text_global, image_global, max_smoothing) / temperature, image_ids)


def paired_infonce(logits: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of the (N, N) logits of a paired batch (row k: caption k; column k: image k): a
    cross-entropy over the images for each caption and over the captions for each image, every pair of the same
    image id a positive (the target spreads evenly over them)."""
    positives = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


__all__ = [
    "SepsGlobalEmbedding",
    "first_stage_scores",
    "global_contrastive_loss",
    "mean_pooled_embedding",
    "paired_infonce",
]
