"""Arguments of `examples/build_index.py` (no torch import: `--help` stays fast)."""

from dataclasses import dataclass, field

from .arguments import DATASETS

INDEX_DTYPES = ("float16", "float32", "int8")  # transformers_seps.index.STORAGE_DTYPES


@dataclass
class IndexArguments:
    model: str = field(metadata={"help": "A saved SepsModel folder (with its processor) or a hub id."})
    output_dir: str = field(
        metadata={"help": "The index folder; a killed build resumes there without re-encoding finished shards."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the index in --output_dir (of other images or another model): the new one is built "
            "beside it and takes its place once complete; the old one stays usable until then."
        },
    )
    append: bool = field(
        default=False,
        metadata={
            "help": "Add to the finished index in --output_dir, in place, the images it does not hold yet (by id), "
            "a shard of --shard_size at a time; a killed run leaves every shard added or not, and run again adds "
            "the rest. One process."
        },
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Index every image under this folder (ids: paths relative to it)."}
    )
    dense_captions: str | None = field(
        default=None,
        metadata={"help": "With --image_root: a dense-caption jsonl (examples/generate_dense_captions.py)."},
    )
    data_root: str | None = field(
        default=None, metadata={"help": "Or index a split of a dataset in the SEPS authors' layout."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "With --data_root: f30k | coco | synthetic.", "choices": DATASETS}
    )
    split: str = field(default="test", metadata={"help": "With --data_root: the split to index."})
    shard_size: int = field(default=1024, metadata={"help": "Images per shard file (the unit of resumption)."})
    batch_size: int = field(default=32, metadata={"help": "Images per encoding batch."})
    dtype: str = field(
        default="float16",
        metadata={
            "help": "Storage of the SEPS tokens: float16, float32, or int8 (a byte per value and a scale per token).",
            "choices": INDEX_DTYPES,
        },
    )
    first_stage: str = field(
        default="exact",
        metadata={
            "help": "exact: FAISS inner product over every image; hnsw: approximate; qdrant: a Qdrant store in the "
            "index folder; qdrant:<url>: a Qdrant server or cluster (API key: QDRANT_API_KEY)."
        },
    )
