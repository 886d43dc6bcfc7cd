"""Retrieval data for SEPS: the SEPS authors' layout (Flickr30K, MS-COCO), `datasets` builders and a collator.

The synthetic fine-grained benchmark, written in the same layout, lives in `transformers_seps.train.data.synthetic`
(also a command line: `python -m transformers_seps.train.data.synthetic --output_dir DIR`).
"""

from .authors_layout import (
    DENSE_CAPTION_MODES,
    RetrievalDataError,
    RetrievalFileNotFoundError,
    RetrievalFiles,
    RetrievalSplit,
    SepsRetrievalCollator,
    UnreadableImageError,
    build_caption_dataset,
    build_image_dataset,
    load_retrieval_split,
    load_rgb_image,
)

__all__ = [
    "DENSE_CAPTION_MODES",
    "RetrievalDataError",
    "RetrievalFileNotFoundError",
    "RetrievalFiles",
    "RetrievalSplit",
    "SepsRetrievalCollator",
    "UnreadableImageError",
    "build_caption_dataset",
    "build_image_dataset",
    "load_retrieval_split",
    "load_rgb_image",
]
