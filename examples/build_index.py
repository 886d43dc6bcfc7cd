"""Encode a gallery once into an index folder that `SepsRetriever.load` searches later, from any process.

    accelerate launch examples/build_index.py --model runs/demo/best --data_root data/synthetic \\
        --dataset synthetic --split test --output_dir runs/demo-index
    python examples/build_index.py --model runs/demo/best --image_root my_photos/ \\
        [--dense_captions my_photos_dense.jsonl] --output_dir my_photos.index

Images are split across the processes by shards of --shard_size; a killed build run again with the same command
resumes without re-encoding its finished shards. See `transformers_seps.index` for the folder's layout.
"""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse `argv` (default: the command line), build the index, and return its manifest; a bad argument exits
    with status 2 and a one-line message."""
    from transformers_seps.train.cli import run_cli
    from transformers_seps.train.index_arguments import IndexArguments

    def build(arguments: list) -> dict:
        from transformers_seps.train.indexing import run_build_index  # after parsing: `--help` needs no torch

        return run_build_index(*arguments)

    return run_cli(build, (IndexArguments,), argv, __doc__, __file__)


if __name__ == "__main__":
    main()
