"""Evaluate a SEPS model on Flickr30K (1K test), MS-COCO (5K and 5-fold 1K) or the synthetic benchmark.

    accelerate launch examples/evaluate_retrieval.py --model runs/seps/best --dataset f30k \\
        --data_root data/f30k --image_root data/flickr30k-images --split test --output_json f30k.json

`--dense_pairing query_ground_truth` adds the SEPS authors' (leaky) pairing side by side with the honest one.
"""

from transformers import HfArgumentParser

from transformers_seps.evaluation import EvaluationArguments, run_evaluation


def main() -> None:
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses()
    run_evaluation(args)


if __name__ == "__main__":
    main()
