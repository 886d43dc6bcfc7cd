"""Train SEPS for image-text retrieval, on one or many processes.

    accelerate launch examples/train_retrieval.py --dataset f30k --data_root data/f30k \\
        --image_root data/flickr30k-images --vision_model google/vit-base-patch16-224-in21k \\
        --text_model bert-base-uncased --output_dir runs/seps-vit-f30k

With no argument it trains on the synthetic benchmark (generated under --data_root on first use) with
backbones that need no download. See `transformers_seps.training` for every option.
"""

from transformers import HfArgumentParser

from transformers_seps.training import DataArguments, ModelArguments, RetrievalTrainingArguments, run_training


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, RetrievalTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    run_training(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
