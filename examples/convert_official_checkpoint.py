"""Convert the SEPS (or LAPS) authors' `model_best.pth` into a Hugging Face Hub repo folder.

    python examples/convert_official_checkpoint.py --checkpoint model_best.pth --output_dir seps-vit-224-f30k \\
        [--tokenizer bert-base-uncased] [--push_to_hub org/seps-vit-224-f30k]

The checkpoint is read with `torch.load(weights_only=True)`; the backbone comes from its options (`vit_type`,
`img_res`); the folder holds the model (safetensors), its code, the processor and a model card. See
`transformers_seps.convert_official`.
"""

from transformers import HfArgumentParser

from transformers_seps.convert_official import ConversionArguments, run_conversion


def main() -> None:
    (args,) = HfArgumentParser(ConversionArguments).parse_args_into_dataclasses()
    run_conversion(args)


if __name__ == "__main__":
    main()
