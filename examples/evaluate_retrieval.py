"""Evaluate a SEPS model on Flickr30K (1K test), MS-COCO (5K and 5-fold 1K) or the synthetic benchmark.

    accelerate launch examples/evaluate_retrieval.py --model runs/seps/best --data_root data/f30k \\
        --image_root data/flickr30k-images --split test --output_json f30k.json

`--dataset` is inferred from the files in --data_root when not given. `--dense_pairing query_ground_truth` adds
the SEPS authors' (leaky) pairing side by side with the honest one.
"""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse `argv` (default: the command line), evaluate, and return the report; a bad argument exits with
    status 2 and a one-line message."""
    from transformers_seps.train.arguments import EvaluationArguments
    from transformers_seps.train.cli import run_cli

    def evaluate(arguments: list) -> dict:
        from transformers_seps.train.evaluation import run_evaluation  # after parsing: `--help` needs no torch

        return run_evaluation(*arguments)

    return run_cli(evaluate, (EvaluationArguments,), argv, __doc__, __file__)


if __name__ == "__main__":
    main()
