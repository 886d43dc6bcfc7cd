"""Processor for SEPS (Semantic-Enhanced Patch Slimming, arXiv 2511.01390), like transformers' `CLIPProcessor`.

It also names the multimodal LLM that writes the dense captions (`dense_caption_*`, saved in `processor_config.json`);
writing them is `transformers_seps.captioning`'s job, imported only when asked to, so that this file and the modules
it imports load alone as remote code (`trust_remote_code=True`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from transformers import BatchFeature, BertTokenizer
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs

from .caption_settings import check_dense_caption_settings
from .inputs import (
    already_rescaled,
    as_caption_batch,
    as_image_batch,
    caption_token_limit,
    caption_tokenizer_kwargs,
    check_processor_location,
    check_token_limit,
    tokenize_captions,
    tokenizer_defaults,
)
from .official_preprocessing import official_image_processor, with_image_backend

__all__ = ["SepsProcessor", "SepsProcessorKwargs"]

_RETURN_TENSORS = ("pt", "np", None)
# The processor's settings (its `__init__` arguments), saved in processor_config.json.
_DENSE_CAPTION_SETTINGS = ("dense_caption_model", "dense_caption_prompt", "dense_caption_generation_kwargs")
_SETTINGS = ("dense_max_length", "text_model_max_length", *_DENSE_CAPTION_SETTINGS)


class SepsProcessorKwargs(ProcessingKwargs, total=False):
    """`SepsProcessor.__call__` options beyond Transformers' `ProcessingKwargs`: `dense_text_kwargs` (tokenizer
    options for dense captions only) and `generate_dense`."""

    dense_text_kwargs: TextKwargs
    generate_dense: bool


class SepsProcessor(ProcessorMixin):
    r"""
    Builds SEPS model inputs: images (`pixel_values`), captions (`input_ids`) and dense captions (`dense_input_ids`,
    the long descriptions a multimodal LLM writes for each image), with one image processor and one tokenizer.
    [`SepsProcessor.official`] builds the SEPS authors' preprocessing.

    Args:
        image_processor ([`~image_processing_utils.BaseImageProcessor`]): turns images into `pixel_values`.
        tokenizer ([`~tokenization_utils_base.PreTrainedTokenizerBase`]): encodes captions and dense captions.
        dense_max_length (`int`, *optional*):
            Token limit of dense captions, special tokens included (a truncated one still ends with `[SEP]`);
            between 2 and [`SepsProcessor.text_max_length`], which `None` (the default) means.
        dense_caption_model, dense_caption_prompt, dense_caption_generation_kwargs (*optional*):
            The captioner that writes dense captions for `generate_dense=True`: Hub id or folder of an
            image-text-to-text model (the paper's LLaVA-13B, e.g. `"llava-hf/llava-1.5-13b-hf"`), its instruction
            and its `generate` arguments (`None`: the paper's, see `transformers_seps.caption_settings`).
        text_model_max_length (`int`, *optional*): the most tokens the text model takes (`SepsConfig.max_text_length`).

    The five settings are saved in `processor_config.json`, so a Hub repo says how its dense captions are made.
    """

    valid_processor_kwargs = SepsProcessorKwargs
    # Call defaults, below the tokenizer's saved ones (Transformers' `_merge_kwargs`). The authors' captions: padded
    # to the longest, truncated (at `text_max_length`), no token type ids; "[MASK]" etc. in a caption are text, as
    # with their basic tokenizer. Dense captions take the same options, truncated at `effective_dense_max_length`.
    text_kwargs = {
        "padding": "longest",
        "truncation": True,
        "return_token_type_ids": False,
        "split_special_tokens": True,
        "return_tensors": "pt",
    }
    images_kwargs = {"return_tensors": "pt"}
    dense_text_kwargs = {}
    generate_dense = False

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        dense_max_length: int | None = None,
        dense_caption_model: str | None = None,
        dense_caption_prompt: str | None = None,
        dense_caption_generation_kwargs: Mapping[str, Any] | None = None,
        text_model_max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)
        self.dense_max_length, self.text_model_max_length = dense_max_length, text_model_max_length
        self.dense_caption_model, self.dense_caption_prompt = dense_caption_model, dense_caption_prompt
        self.dense_caption_generation_kwargs = dense_caption_generation_kwargs
        self._check_settings()

    @property
    def text_max_length(self) -> int:
        """`int`: the most tokens a caption may keep (see `transformers_seps.inputs.caption_token_limit`)."""
        return caption_token_limit(self.tokenizer, self.text_model_max_length)

    @property
    def effective_dense_max_length(self) -> int:
        """`int`: the token limit applied to dense captions (`dense_max_length`, else `text_max_length`)."""
        return self.text_max_length if self.dense_max_length is None else self.dense_max_length

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "dense_input_ids", "dense_attention_mask"]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        image_processor_backend: str | None = "pil",
        **kwargs: Any,
    ) -> SepsProcessor:
        r"""
        `ProcessorMixin.from_pretrained`, after checking the location; settings given (e.g. `dense_max_length`)
        override the saved ones. The image processor gets `image_processor_backend` (see
        `transformers_seps.official_preprocessing.with_image_backend`).
        """
        check_processor_location(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        # Set processor settings after loading: passed down, they would also land in the tokenizer's init kwargs.
        settings = {key: kwargs.pop(key) for key in _SETTINGS if key in kwargs}
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor.__dict__.update(settings)
        processor._check_settings()
        processor.image_processor = with_image_backend(
            processor.image_processor, pretrained_model_name_or_path, image_processor_backend, kwargs
        )
        return processor

    @classmethod
    def official(cls, tokenizer_name_or_path: str = "bert-base-uncased", image_size: int = 224, **kwargs: Any):
        """The SEPS authors' evaluation preprocessing: `official_image_processor(image_size)` and an uncased
        [`BertTokenizer`] (`[CLS] ... [SEP]`). `kwargs` naming a setting go to the processor, the others to the
        tokenizer."""
        settings = {key: kwargs.pop(key) for key in _SETTINGS if key in kwargs}
        image_processor = official_image_processor(image_size)
        return cls(image_processor, BertTokenizer.from_pretrained(tokenizer_name_or_path, **kwargs), **settings)

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        dense_text: str | Sequence[str] | None = None,
        **kwargs: Unpack[SepsProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Prepares images, captions and dense captions (one per image) for the SEPS model, each when given.

        PIL images are turned upright by their EXIF orientation and into 8-bit RGB (`transformers_seps.images.
        rgb_image`: as the authors' loader's `convert("RGB")`, but 16-bit pixels are scaled, not clipped at
        white). Float images in [0, 1] skip the
        1/255 rescale (unless `do_rescale=True`); a batch must not mix them with [0, 255] images; floats outside
        [0, 255] are refused. `kwargs` are routed as in Transformers (flat, `text_kwargs=`, `images_kwargs=`,
        `common_kwargs=`) over the tokenizer's saved defaults, e.g. `return_tensors` (`"pt"`, `"np"`, or `None` for
        lists) or `max_length` (at most `text_max_length`, the default). `generate_dense=True` writes the dense
        captions of `images` with [`SepsProcessor.generate_dense_captions`] (leave out `dense_text`).

        Returns:
            [`BatchFeature`]: `pixel_values`, `input_ids`/`attention_mask`, `dense_input_ids`/`dense_attention_mask`.
        """
        if images is None and text is None and dense_text is None:
            raise ValueError(f"{type(self).__name__} needs at least one of `images`, `text` or `dense_text`.")
        merged = self._merge_kwargs(
            tokenizer_init_kwargs=tokenizer_defaults(self.tokenizer, self.text_max_length), **kwargs
        )
        if merged["generate_dense"] and (images is None or dense_text is not None):
            raise ValueError(
                "`generate_dense=True` needs `images` and writes their dense captions: leave out `dense_text`."
            )
        return_tensors = merged["text_kwargs"].pop("return_tensors", None)
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"`return_tensors` must be one of {_RETURN_TENSORS}, got {return_tensors!r}.")
        text_kwargs, dense_kwargs = caption_tokenizer_kwargs(
            merged["text_kwargs"], merged["dense_text_kwargs"], self.text_max_length, self.effective_dense_max_length
        )
        text_batch = as_caption_batch(text, "text") if text is not None else None
        image_batch = as_image_batch(images) if images is not None else None
        if merged["generate_dense"]:
            dense_text = self.generate_dense_captions(image_batch)
        dense_batch = as_caption_batch(dense_text, "dense_text") if dense_text is not None else None
        if image_batch is not None and dense_batch is not None and len(image_batch) != len(dense_batch):
            raise ValueError(
                "`dense_text` must hold one dense caption per image: got "
                f"{len(image_batch)} image(s) and {len(dense_batch)} dense caption(s)."
            )

        data: dict[str, Any] = {}
        if image_batch is not None:
            images_kwargs = merged["images_kwargs"]
            rescales = "do_rescale" not in images_kwargs and getattr(self.image_processor, "do_rescale", False)
            if rescales and already_rescaled(image_batch):
                images_kwargs["do_rescale"] = False
            data["pixel_values"] = self.image_processor(image_batch, **images_kwargs)["pixel_values"]
        captions = (("", "text", text_batch, text_kwargs), ("dense_", "dense_text", dense_batch, dense_kwargs))
        for prefix, name, batch, options in captions:
            if batch is not None:
                encoded = tokenize_captions(self.tokenizer, batch, name, options)
                data.update({prefix + key: value for key, value in encoded.items()})
        return BatchFeature(data=data, tensor_type=return_tensors)

    def generate_dense_captions(self, images: Any) -> list[str]:
        """One dense caption per image, written by the captioner this processor names (`dense_caption_*`) with
        `transformers_seps.captioning.caption_for_processor`, which loads it on first use (see there)."""
        try:  # imported here, inside `try`, so that this file still loads alone as remote code
            from transformers_seps.captioning import caption_for_processor
        except ImportError as error:
            raise ImportError(
                "Generating dense captions needs the `transformers-seps` package: `pip install transformers-seps`."
            ) from error
        return caption_for_processor(self, as_image_batch(images))

    def _check_settings(self) -> None:
        """Checks the token limits and the `dense_caption_*` settings, filling in the paper's prompt and sampling."""
        self.text_model_max_length = check_token_limit("text_model_max_length", self.text_model_max_length)
        self.dense_max_length = check_token_limit("dense_max_length", self.dense_max_length, self.text_max_length)
        settings = check_dense_caption_settings(*(getattr(self, key) for key in _DENSE_CAPTION_SETTINGS))
        self.__dict__.update(zip(_DENSE_CAPTION_SETTINGS, settings, strict=True))
