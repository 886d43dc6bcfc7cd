"""Retrieval for notebooks: score a handful of pairs, or rank a gallery, with an optional two-stage search."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from .configuration_seps import check_positive_int
from .inputs import as_caption_batch, as_image_batch, check_one_caption, check_one_image
from .modeling_seps import SepsModel, masked_mean
from .processing_seps import SepsProcessor


def pad_and_stack(chunks: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (B, L, C) embedding chunks and their (B, L) masks, right-padded to the longest L."""
    length = max(chunk.shape[1] for chunk in chunks)
    embeds = torch.cat([F.pad(chunk, (0, 0, 0, length - chunk.shape[1])) for chunk in chunks])
    mask = torch.cat([F.pad(mask, (0, length - mask.shape[1])) for mask in masks])
    return embeds, mask


@dataclass
class RetrievalResult:
    """Best matches of each query, best first: scores and gallery indices, both (num_queries, top_k)."""

    scores: torch.Tensor
    indices: torch.Tensor


def score_processed(model: SepsModel, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """S(image, text), (num_images, num_texts), of a [`SepsProcessor`] output (on the model's device): the raw
    scores of [`SepsModel.similarity`], not the scaled `logits_per_image`. Dense captions are used when present."""
    dense = ()
    if "dense_input_ids" in inputs:
        dense_mask = inputs["dense_attention_mask"]
        dense = (model.encode_text(inputs["dense_input_ids"], dense_mask), dense_mask)
    image_embeds = model.encode_image(inputs["pixel_values"])
    text_embeds = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    return model.similarity(image_embeds, text_embeds, inputs["attention_mask"], *dense)


@torch.no_grad()
def score_pairs(
    model: SepsModel,
    processor: SepsProcessor,
    images: Sequence[Image.Image] | Image.Image,
    texts: Sequence[str] | str,
    dense_captions: Sequence[str] | None = None,
) -> torch.Tensor:
    """S(image, text) for every image and text: (num_images, num_texts). `dense_captions`: one per image.

    A single image, caption or dense caption (a `str`) counts as a list of one.
    """
    model.eval()
    texts = as_caption_batch(texts, "texts")
    if dense_captions is not None:
        dense_captions = as_caption_batch(dense_captions, "dense_captions")
    inputs = processor(images=images, text=texts, dense_text=dense_captions, return_tensors="pt").to(model.device)
    return score_processed(model, inputs).cpu()


def _global(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised mean of token embeddings (N, L, C) -> (N, C): the cheap first-stage representation."""
    return F.normalize(masked_mean(tokens.transpose(1, 2), None if mask is None else mask.unsqueeze(1)), dim=-1)


@torch.no_grad()
def shortlist_and_rerank(
    model: SepsModel,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_attention_mask: torch.Tensor,
    shortlist_size: int,
    dense_embeds: torch.Tensor | None = None,
    dense_attention_mask: torch.Tensor | None = None,
) -> RetrievalResult:
    """Two-stage text-to-image search over encoded embeddings (shapes as in [`SepsModel.similarity`]).

    Stage 1 keeps, for each caption, the `shortlist_size` images whose mean-pooled embedding is closest to the
    caption's (cosine); stage 2 scores that shortlist with SEPS. Returns the SEPS scores and gallery indices of
    each shortlist, (N_txt, min(shortlist_size, N_img)), in shortlist order (not sorted): a shortlist larger than
    the gallery is the whole gallery.
    """
    check_positive_int("shortlist_size", shortlist_size)
    model._check_similarity_inputs(image_embeds, text_embeds, text_attention_mask, dense_embeds, dense_attention_mask)
    shortlist_size = min(shortlist_size, image_embeds.shape[0])
    device = model.device
    image_global = _global(image_embeds[:, int(model.config.vision_cls_token) :])
    shortlists = (_global(text_embeds, text_attention_mask) @ image_global.t()).topk(shortlist_size, dim=1).indices
    scores = []
    for query, shortlist in enumerate(shortlists):
        dense_args = ()
        if dense_embeds is not None:
            dense_args = (dense_embeds[shortlist].to(device), dense_attention_mask[shortlist].to(device))
        query_scores = model.similarity(
            image_embeds[shortlist].to(device),
            text_embeds[query : query + 1].to(device),
            text_attention_mask[query : query + 1].to(device),
            *dense_args,
        )
        scores.append(query_scores[:, 0].cpu())
    return RetrievalResult(torch.stack(scores), shortlists)


class SepsRetriever:
    """Ranks a gallery of images for a text (and texts for an image) with a [`SepsModel`].

    Images (and their own dense captions) are encoded once by [`add_images`]. A search scores the query against
    the whole gallery, or, with `shortlist_size`, first keeps the `shortlist_size` images whose mean-pooled
    embedding is closest to the query's (cosine), then re-ranks that shortlist with SEPS (like BLIP's `k_test`).
    A shortlist as large as the gallery gives the exhaustive ranking.

    Args:
        model, processor: a SEPS model and its processor.
        shortlist_size: images kept by the first stage; None scores the whole gallery. A search asking for more
            images (`top_k`) than this shortlists `top_k` images instead.
        batch_size: images per encoding batch.
    """

    def __init__(
        self, model: SepsModel, processor: SepsProcessor, shortlist_size: int | None = None, batch_size: int = 32
    ):
        if shortlist_size is not None:
            check_positive_int("shortlist_size", shortlist_size)
        check_positive_int("batch_size", batch_size)
        self.model = model.eval()
        self.processor = processor
        self.shortlist_size = shortlist_size
        self.batch_size = batch_size
        self._images: list[torch.Tensor] = []
        self._dense: list[torch.Tensor] = []
        self._dense_masks: list[torch.Tensor] = []

    def __len__(self) -> int:
        return sum(chunk.shape[0] for chunk in self._images)

    @torch.no_grad()
    def add_images(self, images: Sequence[Image.Image], dense_captions: Sequence[str] | None = None) -> None:
        """Encode and append images to the gallery; `dense_captions` holds one per image (each its own).

        A gallery either has dense captions for every image or for none. One image (and its dense caption, a `str`)
        counts as a list of one.
        """
        images = as_image_batch(images)
        if dense_captions is not None:
            dense_captions = as_caption_batch(dense_captions, "dense_captions")
            if len(dense_captions) != len(images):
                raise ValueError(
                    f"dense_captions must hold one dense caption per image: got {len(images)} images and "
                    f"{len(dense_captions)} dense captions"
                )
        if len(self) and bool(self._dense) != (dense_captions is not None):
            raise ValueError("a gallery has dense captions for all images or for none")
        for start in range(0, len(images), self.batch_size):
            part = slice(start, start + self.batch_size)
            dense = list(dense_captions[part]) if dense_captions is not None else None
            inputs = self.processor(images=list(images[part]), dense_text=dense, return_tensors="pt")
            inputs = inputs.to(self.model.device)
            self._images.append(self.model.encode_image(inputs["pixel_values"]).cpu())
            if dense is not None:
                mask = inputs["dense_attention_mask"]
                self._dense.append(self.model.encode_text(inputs["dense_input_ids"], mask).cpu())
                self._dense_masks.append(mask.cpu())

    def _gallery(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not self._images:
            raise ValueError("the gallery is empty: call add_images first")
        images = torch.cat(self._images)
        self._images = [images]
        if not self._dense:
            return images, None, None
        dense, mask = pad_and_stack(self._dense, self._dense_masks)
        self._dense, self._dense_masks = [dense], [mask]
        return images, dense, mask

    @torch.no_grad()
    def search(self, text: str | Sequence[str], top_k: int = 10) -> RetrievalResult:
        """The `top_k` gallery images for each text: scores and indices, (num_texts, min(top_k, len(self))).

        `top_k` larger than the gallery returns the whole gallery, ranked; larger than `shortlist_size`, the
        first stage keeps `top_k` images.
        """
        check_positive_int("top_k", top_k)
        images, dense, dense_mask = self._gallery()
        texts = as_caption_batch(text, "text")
        inputs = self.processor(text=texts, return_tensors="pt").to(self.model.device)
        words = self.model.encode_text(inputs["input_ids"], inputs["attention_mask"]).cpu()
        word_mask = inputs["attention_mask"].cpu()
        top_k = min(top_k, images.shape[0])
        shortlist_size = None if self.shortlist_size is None else max(self.shortlist_size, top_k)
        device = self.model.device
        if shortlist_size is None or shortlist_size >= images.shape[0]:
            dense_args = (dense.to(device), dense_mask.to(device)) if dense is not None else ()
            scores = self.model.similarity(images.to(device), words.to(device), word_mask.to(device), *dense_args)
            best = scores.t().cpu().topk(top_k, dim=1)
            return RetrievalResult(best.values, best.indices)
        shortlisted = shortlist_and_rerank(self.model, images, words, word_mask, shortlist_size, dense, dense_mask)
        best = shortlisted.scores.topk(top_k, dim=1)
        return RetrievalResult(best.values, shortlisted.indices.gather(1, best.indices))

    @torch.no_grad()
    def search_image(
        self, image: Image.Image, texts: Sequence[str], top_k: int = 10, dense_caption: str | None = None
    ) -> RetrievalResult:
        """The `top_k` of `texts` for one image (with its own dense caption, if given): (1, min(top_k, len(texts))).

        A single caption (a `str`) counts as a list of one.
        """
        check_positive_int("top_k", top_k)
        check_one_image(image, "image")  # score_pairs ranks several
        texts = as_caption_batch(texts, "texts")
        if dense_caption is not None:
            check_one_caption(dense_caption, "dense_caption")
        scores = score_pairs(self.model, self.processor, image, texts, dense_caption)
        best = scores.topk(min(top_k, len(texts)), dim=1)
        return RetrievalResult(best.values, best.indices)
