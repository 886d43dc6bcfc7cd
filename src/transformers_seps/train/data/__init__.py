"""Retrieval data for SEPS: the SEPS authors' layout (Flickr30K, MS-COCO) or a `datasets` dataset in the Hub layout
of Flickr30K and MS-COCO (`hub`), `datasets` builders and a collator.

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
from .hub import HubColumns, load_hub_split, load_split

__all__ = [
    "DENSE_CAPTION_MODES",
    "HubColumns",
    "RetrievalDataError",
    "RetrievalFileNotFoundError",
    "RetrievalFiles",
    "RetrievalSplit",
    "SepsRetrievalCollator",
    "UnreadableImageError",
    "build_caption_dataset",
    "build_image_dataset",
    "load_hub_split",
    "load_retrieval_split",
    "load_rgb_image",
    "load_split",
]
