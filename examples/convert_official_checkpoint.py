"""Convert the SEPS (or LAPS) authors' `model_best.pth` into a Hugging Face Hub repo folder.

    python examples/convert_official_checkpoint.py --checkpoint model_best.pth --output_dir seps-vit-224-f30k \\
        [--tokenizer bert-base-uncased] [--push_to_hub org/seps-vit-224-f30k]

The checkpoint is read with `torch.load(weights_only=True)`; the backbone comes from its options (`vit_type`,
`img_res`); the folder holds the model (safetensors), its code, the processor and a model card. See
`transformers_seps.tools.publish`.
"""

from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse `argv` (default: the command line), convert, and return the written folder; a bad argument exits with
    status 2 and a one-line message."""
    from transformers_seps.tools.arguments import ConversionArguments
    from transformers_seps.train.cli import run_cli

    return run_cli(_convert, (ConversionArguments,), argv, __doc__, __file__)


def _convert(arguments: tuple) -> Path:
    from transformers_seps.tools.publish import run_conversion  # imported here: `--help` needs no torch

    return run_conversion(*arguments)


if __name__ == "__main__":
    main()
