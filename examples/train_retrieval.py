"""Train SEPS for image-text retrieval, on one or many processes.

    accelerate launch examples/train_retrieval.py --dataset f30k --data_root data/f30k \\
        --image_root data/flickr30k-images --vision_model google/vit-base-patch16-224-in21k \\
        --text_model bert-base-uncased --output_dir runs/seps-vit-f30k

With no argument it trains on the synthetic benchmark (generated under --data_root on first use) with
backbones that need no download. See `transformers_seps.train.arguments` for every option.
"""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parse `argv` (default: the command line), train, and return the test metrics; a bad argument exits with
    status 2 and a one-line message."""
    from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
    from transformers_seps.train.cli import run_cli

    def train(arguments: list) -> dict[str, float]:
        from transformers_seps.train.training import run_training  # after parsing: `--help` needs no torch

        return run_training(*arguments)

    return run_cli(
        train,
        (ModelArguments, DataArguments, RetrievalTrainingArguments),
        argv,
        description=__doc__,
        script=__file__,
    )


if __name__ == "__main__":
    main()
