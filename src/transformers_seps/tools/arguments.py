"""Command-line arguments of the publishing tools; this module imports neither torch nor Transformers, so that
`examples/convert_official_checkpoint.py --help` answers at once."""

from dataclasses import dataclass, field

# The text encoder of every SEPS checkpoint the authors released.
OFFICIAL_TEXT_BACKBONE = "bert-base-uncased"


@dataclass
class ConversionArguments:
    """Command-line arguments of `examples/convert_official_checkpoint.py`."""

    checkpoint: str = field(metadata={"help": "The authors' model_best.pth (SEPS or LAPS)."})
    output_dir: str = field(metadata={"help": "The Hub repo folder to write."})
    tokenizer: str = field(
        default=OFFICIAL_TEXT_BACKBONE, metadata={"help": "Hub id or folder of the bert-base-uncased tokenizer."}
    )
    vision_config: str | None = field(
        default=None,
        metadata={"help": "A config.json (or its folder) replacing the vision backbone inferred from opt.vit_type."},
    )
    text_config: str | None = field(
        default=None, metadata={"help": "A config.json (or its folder) replacing bert-base-uncased."}
    )
    method: str = field(
        default="seps",
        metadata={"help": "Whose checkpoint it is (for the model card).", "choices": ("seps", "laps")},
    )
    eval_results: str | None = field(
        default=None,
        metadata={
            "help": "Our evaluation of the converted model on the test split (the --output_json of "
            "examples/evaluate_retrieval.py), for the card's results and model-index."
        },
    )
    eval_dense_pairing: str = field(
        default="image",
        metadata={
            "help": "The --dense_pairing of that evaluation: image (each image's own dense caption) or none.",
            "choices": ("image", "none"),
        },
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the folder to this Hub repo (org/name)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a non-empty --output_dir (all of it: no earlier file stays to be uploaded)."},
    )
