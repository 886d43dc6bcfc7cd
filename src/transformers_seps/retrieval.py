"""Retrieval for notebooks: score a handful of pairs, or rank a gallery, with an optional two-stage search."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .configuration_seps import check_positive_int
from .global_embedding import first_stage_scores
from .index import (
    PROCESSOR_FOLDER,
    StoredGallery,
    check_first_stage,
    check_storage_dtype,
    finalize_index,
    import_first_stage_library,
    model_signature,
    write_shard,
)
from .index_updates import append_images, compact_index, remove_images
from .inputs import as_caption_batch, as_image_batch, check_one_caption, check_one_image
from .modeling_seps import SepsModel
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


# Rows of a gallery (a 1-D tensor of indices) -> their image tokens and dense captions (or None, None).
GalleryRows = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


@torch.no_grad()
def rerank_shortlists(
    model: SepsModel,
    shortlists: torch.Tensor,
    gallery_rows: GalleryRows,
    text_embeds: torch.Tensor,
    text_attention_mask: torch.Tensor,
) -> RetrievalResult:
    """Stage 2 of a two-stage search: SEPS scores of each caption against its own (N_txt, k) shortlist of gallery
    indices, read through `gallery_rows` (from memory or from an index on disk). Returns scores and indices in
    shortlist order (not sorted)."""
    device = model.device
    scores = []
    for query, shortlist in enumerate(shortlists):
        images, dense, dense_mask = gallery_rows(shortlist)
        dense_args = () if dense is None else (dense.to(device), dense_mask.to(device))
        query_scores = model.similarity(
            images.to(device),
            text_embeds[query : query + 1].to(device),
            text_attention_mask[query : query + 1].to(device),
            *dense_args,
        )
        scores.append(query_scores[:, 0].cpu())
    return RetrievalResult(torch.stack(scores), shortlists)


@torch.no_grad()
def global_image_embeds(model: SepsModel, image_embeds: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[`SepsModel.global_image_embeds`] of a gallery's (N_img, L_v, C) tokens, in batches on the model's device:
    (N_img, V, C) on the CPU."""
    return torch.cat(
        [
            model.global_image_embeds(image_embeds[start : start + batch_size].to(model.device)).cpu()
            for start in range(0, image_embeds.shape[0], batch_size)
        ]
    )


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

    Stage 1 keeps, for each caption, the `shortlist_size` images whose global embedding
    ([`SepsModel.global_image_embeds`], trained by the contrastive loss; the mean-pooled tokens for a model
    without one) is closest to the caption's (the best of an image's vectors, `first_stage_scores`); stage 2
    scores that shortlist with SEPS. Returns the SEPS scores and gallery indices of each shortlist, (N_txt,
    min(shortlist_size, N_img)), in shortlist order (not sorted): a shortlist larger than the gallery is the whole
    gallery.
    """
    check_positive_int("shortlist_size", shortlist_size)
    model._check_similarity_inputs(image_embeds, text_embeds, text_attention_mask, dense_embeds, dense_attention_mask)
    shortlist_size = min(shortlist_size, image_embeds.shape[0])
    text_global = model.global_text_embeds(text_embeds.to(model.device), text_attention_mask.to(model.device)).cpu()
    image_global = global_image_embeds(model, image_embeds)
    shortlists = first_stage_scores(text_global, image_global).topk(shortlist_size, dim=1).indices

    def gallery_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if dense_embeds is None:
            return image_embeds[rows], None, None
        return image_embeds[rows], dense_embeds[rows], dense_attention_mask[rows]

    return rerank_shortlists(model, shortlists, gallery_rows, text_embeds, text_attention_mask)


@dataclass
class EncodedImages:
    """A batch of gallery images encoded for search: SEPS tokens (n, L_v, C), global embeddings (n, V, D), and the
    images' own dense captions (n, L_d, C) with their mask (n, L_d), or None."""

    image_embeds: torch.Tensor
    global_embeds: torch.Tensor
    dense_embeds: torch.Tensor | None
    dense_attention_mask: torch.Tensor | None


@torch.no_grad()
def encode_images(
    model: SepsModel, processor: SepsProcessor, images: Sequence[Image.Image], dense_captions: Sequence[str] | None
) -> EncodedImages:
    """Encode one batch of gallery images (and each image's own dense caption), results on the CPU."""
    inputs = processor(images=list(images), dense_text=dense_captions, return_tensors="pt").to(model.device)
    image_embeds = model.encode_image(inputs["pixel_values"])
    global_embeds = model.global_image_embeds(image_embeds).cpu()
    dense = mask = None
    if dense_captions is not None:
        mask = inputs["dense_attention_mask"]
        dense = model.encode_text(inputs["dense_input_ids"], mask).cpu()
        mask = mask.cpu()
    return EncodedImages(image_embeds.cpu(), global_embeds, dense, mask)


def _merge(parts: Sequence[EncodedImages]) -> EncodedImages:
    """Batches of encoded images as one (dense captions padded to the longest)."""
    dense = mask = None
    if parts[0].dense_embeds is not None:
        dense, mask = pad_and_stack(
            [part.dense_embeds for part in parts], [part.dense_attention_mask for part in parts]
        )
    image_embeds = torch.cat([part.image_embeds for part in parts])
    return EncodedImages(image_embeds, torch.cat([part.global_embeds for part in parts]), dense, mask)


@dataclass
class _InMemoryGallery:
    """The encoded gallery of a `SepsRetriever` built with `add_images`."""

    image_embeds: torch.Tensor
    global_embeds: torch.Tensor
    dense_embeds: torch.Tensor | None
    dense_attention_mask: torch.Tensor | None

    def __len__(self) -> int:
        return self.image_embeds.shape[0]

    def live_rows(self) -> torch.Tensor:
        return torch.arange(len(self))

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.dense_embeds is None:
            return self.image_embeds[rows], None, None
        return self.image_embeds[rows], self.dense_embeds[rows], self.dense_attention_mask[rows]

    def shortlist(self, text_global: torch.Tensor, size: int) -> torch.Tensor:
        return first_stage_scores(text_global, self.global_embeds).topk(size, dim=1).indices


# Gallery images scored at once by an exhaustive search (a block of the gallery, read from memory or disk).
EXHAUSTIVE_BLOCK_SIZE = 1024


class SepsRetriever:
    """Ranks a gallery of images for a text (and texts for an image) with a [`SepsModel`].

    Images (and their own dense captions) are encoded once by [`add_images`]; [`save`] writes the gallery to an
    index folder that [`load`] opens in another process (`transformers_seps.index`). A search scores the query
    against the whole gallery, or, with `shortlist_size`, first keeps the `shortlist_size` images whose global
    embedding ([`SepsModel.global_image_embeds`]) is closest to the query's, then re-ranks that shortlist with
    SEPS (as BLIP re-ranks its ITC shortlist with ITM). A shortlist as large as the gallery gives the exhaustive
    ranking.

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
        self.image_ids: list = []
        self._encoded: list[EncodedImages] = []
        self._stored = None  # a StoredGallery, for a retriever opened with `load`

    def __len__(self) -> int:
        """The images a search can return."""
        return len(self._stored) if self._stored is not None else len(self.image_ids)

    @torch.no_grad()
    def add_images(
        self,
        images: Sequence[Image.Image],
        dense_captions: Sequence[str] | None = None,
        image_ids: Sequence[str | int] | None = None,
    ) -> None:
        """Encode and append images to the gallery; `dense_captions` holds one per image (each its own).

        A gallery either has dense captions for every image or for none. One image (and its dense caption, a `str`)
        counts as a list of one. `image_ids` (strings or integers, saved with the index) default to the images'
        positions in the gallery. On a retriever opened with [`load`], the images are added to the index on disk,
        in place (`transformers_seps.index_updates.append_images`: one new shard; a process killed meanwhile
        leaves the index as it was); their ids must be new to it.
        """
        images = as_image_batch(images)
        if dense_captions is not None:
            dense_captions = as_caption_batch(dense_captions, "dense_captions")
            if len(dense_captions) != len(images):
                raise ValueError(
                    f"dense_captions must hold one dense caption per image: got {len(images)} images and "
                    f"{len(dense_captions)} dense captions"
                )
        if image_ids is None:
            image_ids = range(len(self.image_ids), len(self.image_ids) + len(images))
        elif len(image_ids) != len(images) or not all(isinstance(i, (str, int)) for i in image_ids):
            raise ValueError(
                f"image_ids must hold one str or int per image: got {len(images)} images and image_ids={image_ids!r}"
            )
        if self._encoded and (self._encoded[0].dense_embeds is not None) != (dense_captions is not None):
            raise ValueError("a gallery has dense captions for all images or for none")
        encoded = []
        for start in range(0, len(images), self.batch_size):
            part = slice(start, start + self.batch_size)
            dense = list(dense_captions[part]) if dense_captions is not None else None
            encoded.append(encode_images(self.model, self.processor, images[part], dense))
        if self._stored is None:
            self._encoded.extend(encoded)
            self.image_ids.extend(image_ids)
            return
        merged = _merge(encoded)
        append_images(
            self._stored.directory,
            self.model,
            list(image_ids),
            merged.image_embeds,
            merged.global_embeds,
            merged.dense_embeds,
            merged.dense_attention_mask,
        )
        self._reopen()

    def remove_images(self, image_ids: Sequence[str | int]) -> None:
        """Remove the images of `image_ids` from the gallery (`KeyError` naming ids it does not hold). On a
        retriever opened with [`load`], they are marked deleted in the index on disk, in place: searches skip them
        at once, and [`compact`] frees their disk (`transformers_seps.index_updates`)."""
        image_ids = list(image_ids)
        if self._stored is not None:
            remove_images(self._stored.directory, self.model, image_ids)
            self._reopen()
            return
        wanted = set(image_ids)
        missing = [image_id for image_id in image_ids if image_id not in self.image_ids]
        if missing:
            raise KeyError(f"not in the gallery: {missing[:5]!r}")
        keep = torch.tensor([image_id not in wanted for image_id in self.image_ids], dtype=torch.bool)
        gallery = self._gallery()
        dense = gallery.dense_embeds
        kept = EncodedImages(
            gallery.image_embeds[keep],
            gallery.global_embeds[keep],
            None if dense is None else dense[keep],
            None if dense is None else gallery.dense_attention_mask[keep],
        )
        self._encoded = [kept] if keep.any() else []  # an empty gallery holds no block
        self.image_ids = [image_id for image_id in self.image_ids if image_id not in wanted]

    def compact(self) -> None:
        """Rewrite a loaded index's shards without its removed images and rebuild its first stage, in place
        (`transformers_seps.index_updates.compact_index`); row numbers, and so search indices into `image_ids`,
        change. Nothing to do for a gallery in memory (removing drops the images at once)."""
        if self._stored is not None:
            compact_index(self._stored.directory, self.model)
            self._reopen()

    def _reopen(self) -> None:
        """Open the loaded index again after an update."""
        self._stored = StoredGallery(self._stored.directory, self.model)
        self.image_ids = self._stored.image_ids

    def _gallery(self):
        """The gallery to search: the `load`ed index, or the encoded images merged into one block."""
        if self._stored is not None:
            return self._stored
        if not self._encoded:
            raise ValueError("the gallery is empty: call add_images first")
        if len(self._encoded) > 1:
            self._encoded = [_merge(self._encoded)]
        part = self._encoded[0]
        return _InMemoryGallery(part.image_embeds, part.global_embeds, part.dense_embeds, part.dense_attention_mask)

    @torch.no_grad()
    def search(self, text: str | Sequence[str], top_k: int = 10) -> RetrievalResult:
        """The `top_k` gallery images for each text: scores and indices, (num_texts, min(top_k, len(self))).
        `self.image_ids[i]` is the id of gallery index i.

        `top_k` larger than the gallery returns the whole gallery, ranked; larger than `shortlist_size`, the
        first stage keeps `top_k` images.
        """
        check_positive_int("top_k", top_k)
        gallery = self._gallery()
        texts = as_caption_batch(text, "text")
        inputs = self.processor(text=texts, return_tensors="pt").to(self.model.device)
        words = self.model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        word_mask = inputs["attention_mask"]
        num_images = len(gallery)
        if num_images == 0:
            raise ValueError("the gallery is empty: every image was removed")
        top_k = min(top_k, num_images)
        shortlist_size = None if self.shortlist_size is None else max(self.shortlist_size, top_k)
        if shortlist_size is None or shortlist_size >= num_images:
            blocks, live = [], gallery.live_rows()
            for block in live.split(EXHAUSTIVE_BLOCK_SIZE):
                images, dense, dense_mask = gallery.rows(block)
                dense_args = () if dense is None else (dense.to(words.device), dense_mask.to(words.device))
                blocks.append(self.model.similarity(images.to(words.device), words, word_mask, *dense_args).cpu())
            best = torch.cat(blocks).t().topk(top_k, dim=1)
            return RetrievalResult(best.values, live[best.indices])
        shortlists = gallery.shortlist(self.model.global_text_embeds(words, word_mask).cpu(), shortlist_size)
        shortlisted = rerank_shortlists(self.model, shortlists, gallery.rows, words, word_mask)
        best = shortlisted.scores.topk(top_k, dim=1)
        return RetrievalResult(best.values, shortlisted.indices.gather(1, best.indices))

    def save(
        self,
        directory: str | PathLike,
        dtype: torch.dtype = torch.float16,
        first_stage: str = "exact",
        shard_size: int = 1024,
    ) -> None:
        """Write the gallery to a new index folder (`transformers_seps.index`), for [`load`] in another process.

        Args:
            directory: a folder that does not exist yet, or an empty one.
            dtype: storage of the SEPS tokens and dense captions, `torch.float16` (half the disk, scores within
                about 1e-3 of float32; measured by `benchmarks/bench_index.py`), `torch.float32` (exact), or
                `torch.int8` (a quarter of float32's disk: a byte per value and a float16 scale per token,
                `transformers_seps.index.quantize_tokens`; recall against float32: `benchmarks/bench_token_codecs.py`).
            first_stage: "exact" (FAISS inner product over every image), "hnsw" (approximate, for large galleries),
                "qdrant" (a Qdrant store embedded in the index folder) or "qdrant:<url>" (a Qdrant server or
                cluster; `transformers_seps.qdrant_first_stage`).
            shard_size: images per shard file.
        """
        check_positive_int("shard_size", shard_size)
        check_storage_dtype(dtype)
        check_first_stage(first_stage)
        if self._stored is not None:
            raise ValueError("this retriever was opened with SepsRetriever.load: its index is already on disk")
        gallery = self._gallery()
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise FileExistsError(f"{directory} exists and is not an empty folder: save an index to a new folder")
        import_first_stage_library(first_stage)  # before any file is written
        directory.mkdir(parents=True, exist_ok=True)
        signature = model_signature(self.model)
        for start in range(0, len(gallery), shard_size):
            rows = slice(start, start + shard_size)
            dense = gallery.dense_embeds
            write_shard(
                directory,
                start,
                self.image_ids[rows],
                gallery.image_embeds[rows],
                gallery.global_embeds[rows],
                None if dense is None else dense[rows],
                None if dense is None else gallery.dense_attention_mask[rows],
                dtype,
                signature,
            )
        self.processor.save_pretrained(directory / PROCESSOR_FOLDER)
        finalize_index(directory, signature, first_stage)

    @classmethod
    def load(
        cls,
        directory: str | PathLike,
        model: SepsModel,
        processor: SepsProcessor | None = None,
        shortlist_size: int | None = None,
        batch_size: int = 32,
    ) -> "SepsRetriever":
        """Open an index folder written by [`save`] or `examples/build_index.py` for search with `model`: the model
        that encoded it, loaded from any folder (another model is refused, naming what differs). `processor`
        defaults to the one saved with the index. A folder without its manifest (an interrupted build) is refused.
        The SEPS tokens stay on disk (memory-mapped)."""
        stored = StoredGallery(directory, model)
        if processor is None:
            processor = SepsProcessor.from_pretrained(Path(directory) / PROCESSOR_FOLDER)
        retriever = cls(model, processor, shortlist_size, batch_size)
        retriever._stored = stored
        retriever.image_ids = stored.image_ids
        return retriever

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
