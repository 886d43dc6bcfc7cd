"""Processor for SEPS (Semantic-Enhanced Patch Slimming, arXiv 2511.01390).

[`SepsProcessor`] wraps one image processor and one BERT tokenizer, like transformers' `CLIPProcessor`, and
adds a third input: *dense captions*, i.e. long image descriptions written by a multimodal LLM for each image. It
also carries the settings of that LLM (model id, prompt, generation arguments), so that
`processor(images=..., generate_dense=True)` can write the dense captions itself.

This module imports nothing from its own package (only transformers and PIL), so that
`save_pretrained` on a processor registered with `register_for_auto_class()` copies a self-contained file that
`AutoProcessor.from_pretrained(..., trust_remote_code=True)` can load. The one exception is generating dense
captions, which imports `transformers_seps.captioning` when first asked to (and says so if the package is missing).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from transformers import AutoImageProcessor, BatchFeature, BertTokenizer, ViTImageProcessorPil
from transformers.image_utils import PILImageResampling, is_valid_image, make_flat_list_of_images
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import LARGE_INTEGER

__all__ = [
    "DEFAULT_TEXT_MAX_LENGTH",
    "DENSE_CAPTION_GENERATION_KWARGS",
    "DENSE_CAPTION_PROMPT",
    "SEPS_IMAGE_MEAN",
    "SEPS_IMAGE_STD",
    "SepsProcessor",
    "check_pretrained_location",
]

#: ImageNet per-channel mean used by the SEPS authors' `T.Normalize` (RGB order).
SEPS_IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet per-channel standard deviation used by the SEPS authors' `T.Normalize` (RGB order).
SEPS_IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The instruction the SEPS paper gives its multimodal LLM (LLaVA-13B) to write a dense caption.
DENSE_CAPTION_PROMPT = "Provide a comprehensive description of this image"
#: The paper's sampling settings for dense captions (copy before changing).
DENSE_CAPTION_GENERATION_KWARGS: dict[str, Any] = {
    "do_sample": True,
    "temperature": 0.2,
    "top_p": 0.9,
    "max_new_tokens": 500,
}

# Special tokens added around every caption: [CLS] ... [SEP].
_NUM_SPECIAL_TOKENS = 2

#: Token limit of captions when neither the tokenizer nor the text model states one (BERT's).
DEFAULT_TEXT_MAX_LENGTH = 512

# `from_pretrained` keyword arguments that say where files come from; forwarded when the image processor is
# reloaded with another backend.
_UNSET = object()

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")

# A processor folder needs one of these for its BERT tokenizer (the fast tokenizer's file, or the WordPiece vocabulary).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")

# Values `return_tensors` takes.
_RETURN_TENSORS = ("pt", "np", None)

# Settings of the dense-caption model, saved in `processor_config.json`.
_DENSE_CAPTION_SETTINGS = ("dense_caption_model", "dense_caption_prompt", "dense_caption_generation_kwargs")


class SepsProcessor(ProcessorMixin):
    r"""
    Builds SEPS model inputs from images, short captions and dense captions.

    It holds an image processor (turns images into `pixel_values`) and a BERT tokenizer (turns captions into
    `input_ids`/`attention_mask`). The same tokenizer encodes the *dense captions*: long, MLLM-written
    descriptions of an image (typically 130-200 word pieces, up to about 250), returned as
    `dense_input_ids`/`dense_attention_mask`.

    [`SepsProcessor.official`] builds the preprocessing used by the SEPS authors (bicubic resize to a square
    with no crop, ImageNet mean/std, uncased BERT word pieces wrapped in `[CLS] ... [SEP]`).

    Args:
        image_processor ([`~image_processing_utils.BaseImageProcessor`]):
            Turns images into `pixel_values` of shape `(batch_size, 3, height, width)`.
        tokenizer ([`~tokenization_utils_base.PreTrainedTokenizerBase`]):
            Tokenizes both the short captions and the dense captions (a BERT WordPiece tokenizer for the
            authors' models; any tokenizer works, with or without a `model_max_length`).
        dense_max_length (`int`, *optional*):
            Token limit for dense captions, special tokens included. A dense caption longer than this is
            truncated to exactly `dense_max_length` tokens, the last of which is `[SEP]`. `None` (the default)
            means [`SepsProcessor.text_max_length`]. It must be at least 2 and at most `text_max_length`. It is
            saved in `processor_config.json` by `save_pretrained` and restored by `from_pretrained`.
        text_model_max_length (`int`, *optional*):
            The longest token sequence the text model accepts (`SepsConfig.max_text_length`: its
            `max_position_embeddings`), saved with the processor so that no caption it encodes is too long for
            the model. `None`: only the tokenizer's limit applies.
        dense_caption_model (`str`, *optional*):
            Hub id or folder of the image-text-to-text model that writes dense captions (the paper uses LLaVA-13B,
            e.g. `"llava-hf/llava-1.5-13b-hf"`). Only needed for `generate_dense=True`.
        dense_caption_prompt (`str`, *optional*, defaults to `DENSE_CAPTION_PROMPT`):
            The instruction given to that model with each image.
        dense_caption_generation_kwargs (`dict`, *optional*):
            Its `generate` arguments; `None` means the paper's `DENSE_CAPTION_GENERATION_KWARGS`
            (`do_sample=True`, `temperature=0.2`, `top_p=0.9`, `max_new_tokens=500`). Must be JSON-serializable.

    The three `dense_caption_*` settings are saved in `processor_config.json` with `dense_max_length`, so a Hub repo
    holding a SEPS model also says how its dense captions are made.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        dense_max_length: int | None = None,
        dense_caption_model: str | None = None,
        dense_caption_prompt: str = DENSE_CAPTION_PROMPT,
        dense_caption_generation_kwargs: Mapping[str, Any] | None = None,
        text_model_max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)
        self.text_model_max_length = _check_token_limit("text_model_max_length", text_model_max_length)
        self.dense_max_length = _check_token_limit("dense_max_length", dense_max_length, self.text_max_length)
        self._set_dense_caption_settings(
            dense_caption_model=dense_caption_model,
            dense_caption_prompt=dense_caption_prompt,
            dense_caption_generation_kwargs=dense_caption_generation_kwargs,
        )
        # The loaded captioner, as (model it was loaded from, captioner); runtime state, never saved.
        self._dense_captioner: tuple[str, Any] | None = None

    @property
    def text_max_length(self) -> int:
        """`int`: the token limit of captions, and of dense captions unless `dense_max_length` is set: the smaller
        of the tokenizer's `model_max_length` and `text_model_max_length`, each when known (a tokenizer built from
        a vocabulary file has none), else `DEFAULT_TEXT_MAX_LENGTH` (512)."""
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        # Transformers marks an unknown limit with VERY_LARGE_INTEGER (1e30); anything above LARGE_INTEGER is one.
        if not isinstance(tokenizer_limit, int) or tokenizer_limit >= LARGE_INTEGER:
            tokenizer_limit = None
        limits = [limit for limit in (tokenizer_limit, self.text_model_max_length) if limit is not None]
        return min(limits) if limits else DEFAULT_TEXT_MAX_LENGTH

    @property
    def effective_dense_max_length(self) -> int:
        """`int`: the token limit actually applied to dense captions (`dense_max_length`, or
        [`SepsProcessor.text_max_length`] when `dense_max_length` is None)."""
        if self.dense_max_length is not None:
            return self.dense_max_length
        return self.text_max_length

    @property
    def model_input_names(self) -> list[str]:
        """`list[str]`: names of every tensor [`SepsProcessor.__call__`] can return."""
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
        Loads a processor saved with `save_pretrained` (folder or Hub id), as `ProcessorMixin.from_pretrained`.

        `dense_max_length` comes back from `processor_config.json`. In transformers v5, `AutoImageProcessor`
        picks the torchvision backend whenever torchvision is installed; the SEPS preprocessing is defined by
        PIL's bicubic resize, so the image processor is reloaded with `image_processor_backend` ("pil" by
        default) when the automatic choice differs. Pass `image_processor_backend=None` to keep the automatic
        choice.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                Folder written by `save_pretrained`, or a Hub model id.
            image_processor_backend (`str`, *optional*, defaults to `"pil"`):
                Backend of the image processor: `"pil"`, `"torchvision"`, or None for transformers' choice.
            args, kwargs:
                Passed to `ProcessorMixin.from_pretrained` (e.g. `local_files_only=True`, `revision`);
                `dense_max_length=...` and the `dense_caption_*` settings override the saved values.

        Raises:
            FileNotFoundError: if `pretrained_model_name_or_path` is neither a folder nor a Hub id, or the folder
                has no tokenizer file (`tokenizer.json` or `vocab.txt`).
        """
        folder = check_pretrained_location(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if folder is not None and not any(os.path.isfile(os.path.join(folder, name)) for name in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{folder!r} holds no tokenizer file (needs {' or '.join(_TOKENIZER_FILES)}; it has "
                f"{sorted(os.listdir(folder))}): save the processor there with `processor.save_pretrained(folder)`."
            )
        # Set processor settings after loading: passed down, they would also land in the tokenizer's init kwargs.
        dense_max_length = kwargs.pop("dense_max_length", _UNSET)
        caption_settings = {key: kwargs.pop(key) for key in _DENSE_CAPTION_SETTINGS if key in kwargs}
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if dense_max_length is not _UNSET:
            processor.dense_max_length = _check_token_limit(
                "dense_max_length", dense_max_length, processor.text_max_length
            )
        processor._set_dense_caption_settings(**caption_settings)
        current_backend = getattr(processor.image_processor, "backend", None)
        if image_processor_backend is not None and current_backend not in (None, image_processor_backend):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            processor.image_processor = AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, backend=image_processor_backend, **hub_kwargs
            )
        return processor

    @classmethod
    def official(
        cls,
        tokenizer_name_or_path: str = "bert-base-uncased",
        image_size: int = 224,
        *,
        dense_max_length: int | None = None,
        dense_caption_model: str | None = None,
        dense_caption_prompt: str = DENSE_CAPTION_PROMPT,
        dense_caption_generation_kwargs: Mapping[str, Any] | None = None,
        text_model_max_length: int | None = None,
        **tokenizer_kwargs: Any,
    ) -> SepsProcessor:
        r"""
        Builds the preprocessing of the SEPS authors' evaluation code.

        Images: converted to RGB, resized with PIL bicubic resampling to `(image_size, image_size)` (aspect
        ratio not kept, **no** center crop), rescaled by 1/255, normalized with the ImageNet mean
        `(0.485, 0.456, 0.406)` and std `(0.229, 0.224, 0.225)`. The image processor is the PIL/numpy
        `ViTImageProcessorPil`, so torchvision is not needed.

        Captions: BERT basic tokenization then WordPiece (a standard uncased [`BertTokenizer`]), wrapped in
        `[CLS] ... [SEP]`. Text that looks like a special token (e.g. a literal `"[MASK]"`) is tokenized as
        plain text, as the authors' code does.

        Args:
            tokenizer_name_or_path (`str`, *optional*, defaults to `"bert-base-uncased"`):
                Hub id or local folder of an uncased BERT tokenizer.
            image_size (`int`, *optional*, defaults to 224):
                Side of the square images fed to the vision encoder (the authors use 224 or 384).
            dense_max_length (`int`, *optional*):
                See [`SepsProcessor`]; `None` means [`SepsProcessor.text_max_length`] (512 for BERT).
            dense_caption_model, dense_caption_prompt, dense_caption_generation_kwargs:
                The dense-caption model and its settings, see [`SepsProcessor`].
            text_model_max_length (`int`, *optional*):
                The text model's limit (`model.config.max_text_length`), see [`SepsProcessor`].
            tokenizer_kwargs:
                Passed to `BertTokenizer.from_pretrained` (e.g. `local_files_only=True`).

        Returns:
            [`SepsProcessor`]: a processor whose `pixel_values` have shape `(batch_size, 3, image_size,
            image_size)`.
        """
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
        image_processor = ViTImageProcessorPil(
            do_convert_rgb=True,
            do_resize=True,
            size={"height": image_size, "width": image_size},
            resample=PILImageResampling.BICUBIC,
            do_center_crop=False,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(SEPS_IMAGE_MEAN),
            image_std=list(SEPS_IMAGE_STD),
        )
        tokenizer = BertTokenizer.from_pretrained(tokenizer_name_or_path, **tokenizer_kwargs)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            dense_max_length=dense_max_length,
            dense_caption_model=dense_caption_model,
            dense_caption_prompt=dense_caption_prompt,
            dense_caption_generation_kwargs=dense_caption_generation_kwargs,
            text_model_max_length=text_model_max_length,
        )

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        dense_text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        generate_dense: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        r"""
        Prepares images, captions and dense captions for the SEPS model.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                One image or a batch of images. PIL images that are not RGB are converted with
                `Image.convert("RGB")`, as the authors' loader does (an alpha channel is dropped, not
                blended onto white). Pixels are uint8 (PIL) or numbers in [0, 255]; float images (NumPy or
                torch) whose values all lie in [0, 1] are taken as already rescaled, and the image processor's
                1/255 rescale is skipped for them (Transformers' image processors only warn), so they give the
                `pixel_values` of the same image in uint8. A batch must not mix the two conventions, and float
                images outside [0, 255] (already normalized) are refused. Pass `do_rescale=...` to decide
                yourself.
            text (`str` or `list[str]`, *optional*):
                One caption or a batch of captions. Padded to the longest caption of the batch and truncated
                at [`SepsProcessor.text_max_length`] (or at `max_length` if given as a keyword argument, which
                may not exceed it).
            dense_text (`str` or `list[str]`, *optional*):
                One dense caption per image. When `images` is given too, there must be exactly as many dense
                captions as images. Padded to the longest of the batch and truncated to
                [`SepsProcessor.effective_dense_max_length`] tokens (`dense_max_length`, or `text_max_length`
                when it is None); a truncated caption still ends with `[SEP]`.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for PyTorch tensors, `"np"` for NumPy arrays, `None` for Python lists.
            generate_dense (`bool`, *optional*, defaults to `False`):
                Write the dense captions of `images` with [`SepsProcessor.generate_dense_captions`] and encode
                them as if given as `dense_text` (which must then be left out).
            kwargs:
                Extra options for the image processor or the tokenizer, flat (e.g. `padding="max_length"`,
                `max_length=32`) or grouped as `images_kwargs={...}` / `text_kwargs={...}`. Text options apply
                to both `text` and `dense_text`, except that dense captions always use the dense limit for
                `max_length` and are always truncated.

        Returns:
            [`BatchFeature`] with, each only when the matching input is given:

            - **pixel_values** -- `(num_images, 3, height, width)` float32.
            - **input_ids**, **attention_mask** -- `(num_texts, text_length)` int64, `text_length` being the
              longest caption of the batch in tokens, `[CLS]` and `[SEP]` included.
            - **dense_input_ids**, **dense_attention_mask** -- `(num_dense_texts, dense_length)` int64, with
              `dense_length <= effective_dense_max_length`.

        Raises:
            ValueError: if no input is given; if a caption is not a string, is empty or whitespace-only, or
                has no token left after BERT normalization; if an image is not an image, or its float values
                are outside [0, 255], or the batch mixes [0, 1] and [0, 255] float images; if `return_tensors`
                is not one of "pt", "np", None; if `images` and `dense_text` differ in count; if
                `generate_dense=True` comes without `images`, with `dense_text`, or without `dense_caption_model`;
                if `max_length` exceeds `text_max_length`.
        """
        if images is None and text is None and dense_text is None:
            raise ValueError(
                f"{type(self).__name__} needs at least one of `images`, `text` or `dense_text`; none was given."
            )
        if generate_dense and (images is None or dense_text is not None):
            raise ValueError(
                "`generate_dense=True` needs `images` and writes their dense captions: leave out `dense_text`."
            )
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"`return_tensors` must be one of {_RETURN_TENSORS}, got {return_tensors!r}.")
        text_batch = _as_caption_batch(text, "text") if text is not None else None
        image_batch = _as_image_batch(images) if images is not None else None
        if generate_dense:
            dense_text = self.generate_dense_captions(image_batch)
        dense_batch = _as_caption_batch(dense_text, "dense_text") if dense_text is not None else None
        if image_batch is not None and dense_batch is not None and len(image_batch) != len(dense_batch):
            raise ValueError(
                "`dense_text` must hold one dense caption per image: got "
                f"{len(image_batch)} image(s) and {len(dense_batch)} dense caption(s)."
            )

        # `tokenizer_init_kwargs={}`: a tokenizer's saved init kwargs may carry a `max_length` (e.g. 128 for
        # sentence-transformers checkpoints) that must not silently cap the captions.
        merged = self._merge_kwargs(tokenizer_init_kwargs={}, **kwargs)
        text_kwargs = {k: v for k, v in merged["text_kwargs"].items() if k != "return_tensors"}
        text_limit = self.text_max_length
        if text_kwargs.get("max_length") is None:
            text_kwargs["max_length"] = text_limit
        elif text_kwargs["max_length"] > text_limit:
            raise ValueError(
                f"`max_length` ({text_kwargs['max_length']}) exceeds the longest caption the text model accepts "
                f"(text_max_length={text_limit})."
            )
        images_kwargs = {k: v for k, v in merged["images_kwargs"].items() if k != "return_tensors"}
        # Images in [0, 1] skip the 1/255 rescale, unless the caller decides (`do_rescale=...`).
        rescales = "do_rescale" not in images_kwargs and getattr(self.image_processor, "do_rescale", False)
        if image_batch is not None and rescales and _already_rescaled(image_batch):
            images_kwargs["do_rescale"] = False

        data: dict[str, Any] = {}
        if image_batch is not None:
            pixel_values = self.image_processor(image_batch, return_tensors=return_tensors, **images_kwargs)
            data["pixel_values"] = pixel_values["pixel_values"]
        if text_batch is not None:
            data.update(self._tokenize(text_batch, "text", "", dict(text_kwargs), return_tensors))
        if dense_batch is not None:
            dense_kwargs = dict(text_kwargs, truncation=True, max_length=self.effective_dense_max_length)
            data.update(self._tokenize(dense_batch, "dense_text", "dense_", dense_kwargs, return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def load_dense_captioner(self, **kwargs: Any) -> Any:
        r"""
        Loads the model named by `dense_caption_model` as a `transformers_seps.SepsDenseCaptioner` with this
        processor's prompt and generation arguments, and keeps it for [`SepsProcessor.generate_dense_captions`].

        Called automatically (with no argument, so on the CPU) the first time dense captions are generated; call it
        first to choose where and how the model is loaded.

        Args:
            kwargs:
                Passed to `SepsDenseCaptioner.from_pretrained`, e.g. `device="cuda"`, `dtype=torch.float16`,
                `device_map="auto"`, `batch_size=16`, `seed=0`.

        Raises:
            ValueError: if `dense_caption_model` is not set.
            ImportError: if the `transformers-seps` package is not installed (a processor loaded as remote code).
        """
        if self.dense_caption_model is None:
            raise ValueError(
                "This processor has no dense-caption model: set `processor.dense_caption_model` (e.g. "
                '"llava-hf/llava-1.5-13b-hf") to generate dense captions, or pass `dense_text`.'
            )
        # Imported here, and inside `try`, so that this file still loads alone as remote code.
        try:
            from transformers_seps.captioning import SepsDenseCaptioner
        except ImportError as error:
            raise ImportError(
                "Generating dense captions needs the `transformers-seps` package: `pip install transformers-seps`."
            ) from error
        captioner = SepsDenseCaptioner.from_pretrained(
            self.dense_caption_model,
            prompt=self.dense_caption_prompt,
            generation_kwargs=self.dense_caption_generation_kwargs,
            **kwargs,
        )
        self._dense_captioner = (self.dense_caption_model, captioner)
        return captioner

    def generate_dense_captions(self, images: Any) -> list[str]:
        r"""
        Writes one dense caption per image with the model, prompt and generation arguments of this processor
        (`dense_caption_*`), loading the model on first use (see [`SepsProcessor.load_dense_captioner`]).

        Args:
            images (`PIL.Image.Image`, `np.ndarray` or a list of them):
                One image or a batch of images; non-RGB PIL images are converted to RGB.

        Returns:
            `list[str]`: the dense captions, in image order.
        """
        image_batch = _as_image_batch(images)
        self._set_dense_caption_settings()  # the attributes may have been changed since: check them again
        if self._dense_captioner is None or self._dense_captioner[0] != self.dense_caption_model:
            self.load_dense_captioner()
        captioner = self._dense_captioner[1]
        captioner.prompt = self.dense_caption_prompt
        captioner.generation_kwargs = dict(self.dense_caption_generation_kwargs)
        return captioner(image_batch)

    def _set_dense_caption_settings(self, **settings: Any) -> None:
        """Validates and sets the `dense_caption_*` settings; those not given keep their current value, and
        `dense_caption_generation_kwargs=None` means the paper's settings."""
        model, prompt, generation_kwargs = (
            settings.get(key, getattr(self, key, None)) for key in _DENSE_CAPTION_SETTINGS
        )
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"`dense_caption_model` must be a Hub id or a folder, got {model!r}.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"`dense_caption_prompt` must be a non-empty string, got {prompt!r}.")
        if generation_kwargs is None:
            generation_kwargs = DENSE_CAPTION_GENERATION_KWARGS
        if not isinstance(generation_kwargs, Mapping):
            raise ValueError(
                f"`dense_caption_generation_kwargs` must be a dict, got {type(generation_kwargs).__name__}."
            )
        try:
            json.dumps(dict(generation_kwargs))
        except TypeError as error:
            raise ValueError(f"`dense_caption_generation_kwargs` must be JSON-serializable: {error}.") from error
        self.dense_caption_model = model
        self.dense_caption_prompt = prompt
        self.dense_caption_generation_kwargs = dict(generation_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serializes the processor as `ProcessorMixin.to_dict`, leaving out a loaded dense captioner (a whole
        model, which `to_dict` would otherwise deep-copy)."""
        without_captioner = copy.copy(self)
        without_captioner._dense_captioner = None
        return super(SepsProcessor, without_captioner).to_dict()

    def _tokenize(
        self,
        captions: list[str],
        name: str,
        prefix: str,
        text_kwargs: dict[str, Any],
        return_tensors: str | None,
    ) -> dict[str, Any]:
        """Tokenizes a validated batch of captions and returns its outputs with keys prefixed by `prefix`."""
        text_kwargs.setdefault("padding", "longest")
        text_kwargs.setdefault("truncation", True)
        text_kwargs.setdefault("add_special_tokens", True)
        text_kwargs.setdefault("return_attention_mask", True)
        text_kwargs.setdefault("return_token_type_ids", False)
        # The authors tokenize raw caption text with the basic tokenizer, which never treats "[MASK]" etc. as
        # special tokens; `split_special_tokens=True` gives the same ids with the Rust tokenizer.
        text_kwargs.setdefault("split_special_tokens", True)
        encoded = self.tokenizer(captions, return_tensors=None, **text_kwargs)
        framing_ids = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id}
        for index, ids in enumerate(encoded["input_ids"]):
            if all(token_id in framing_ids for token_id in ids):
                raise ValueError(f"`{name}[{index}]` ({captions[index]!r}) has no token left after BERT normalization.")
        out = BatchFeature(data=dict(encoded), tensor_type=return_tensors)
        return {prefix + key: value for key, value in out.items()}


def _as_caption_batch(value: Any, name: str) -> list[str]:
    """Turns `text`/`dense_text` into a non-empty list of non-blank strings, or raises a `ValueError`."""
    if isinstance(value, str):
        batch: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        batch = list(value)
    else:
        raise ValueError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}.")
    if not batch:
        raise ValueError(f"`{name}` is an empty list; give at least one caption.")
    for index, caption in enumerate(batch):
        if not isinstance(caption, str):
            raise ValueError(f"`{name}[{index}]` must be a string, got {type(caption).__name__} ({caption!r}).")
        if not caption.strip():
            raise ValueError(f"`{name}[{index}]` is an empty or whitespace-only string ({caption!r}).")
    return batch


def _as_image_batch(images: Any) -> list[Any]:
    """Turns `images` into a flat, non-empty list; non-RGB PIL images are converted with `convert("RGB")`."""
    if isinstance(images, (list, tuple)) and len(images) == 0:
        raise ValueError("`images` is an empty list; give at least one image.")
    try:
        batch = make_flat_list_of_images(images)
    except ValueError as error:
        invalid = type(images).__name__
        if isinstance(images, (list, tuple)):
            index = next((i for i, image in enumerate(images) if not _is_image_or_list(image)), None)
            if index is not None:
                invalid = f"{type(images).__name__} whose item {index} is a {type(images[index]).__name__}"
        raise ValueError(
            f"`images` must be a PIL image, a numpy array, a torch tensor, or a list of them; got {invalid}."
        ) from error
    return [
        image.convert("RGB") if isinstance(image, Image.Image) and image.mode != "RGB" else image for image in batch
    ]


def _check_one_image(image: Any, name: str) -> None:
    """Raises a `ValueError` unless `image` is exactly one image (not a list or batch of them)."""
    num_images = len(_as_image_batch(image))
    if num_images != 1:
        raise ValueError(f"`{name}` must be one image, got a batch of {num_images}.")


def _check_one_caption(caption: Any, name: str) -> None:
    """Raises a `ValueError` unless `caption` is one string (a list of captions is a batch)."""
    if not isinstance(caption, str):
        raise ValueError(f"`{name}` must be one caption (a str), got {type(caption).__name__}.")


def _is_image_or_list(value: Any) -> bool:
    return is_valid_image(value) or isinstance(value, (list, tuple))


def _float_value_range(image: Any) -> tuple[float, float] | None:
    """(min, max) of a float NumPy or torch image; None for PIL and integer images."""
    if isinstance(image, torch.Tensor) and torch.is_floating_point(image):
        return image.min().item(), image.max().item()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        return float(image.min()), float(image.max())
    return None


def _already_rescaled(images: list[Any]) -> bool:
    """Whether the batch holds float images in [0, 1] (rescaled already), as `transformers.image_utils.
    is_scaled_image` tells; raises for float images outside [0, 255] and for a batch mixing both conventions."""
    scaled = []
    for index, image in enumerate(images):
        value_range = _float_value_range(image)
        if value_range is None:
            continue
        low, high = value_range
        if not (low >= 0 and high <= 255):  # also catches NaN
            raise ValueError(
                f"`images[{index}]` is a float image with values in [{low:.3g}, {high:.3g}], outside [0, 1] and "
                "[0, 255]: it looks normalized already. Pass the raw image (PIL, uint8, or floats in [0, 1] or "
                "[0, 255]), not `pixel_values`."
            )
        if high <= 1:
            scaled.append(index)
    if scaled and len(scaled) != len(images):
        raise ValueError(
            f"`images` mixes float images with values in [0, 1] (images {scaled[:5]}) with images in [0, 255]: "
            "pass all images in one convention (or rescale the [0, 1] ones by 255)."
        )
    return bool(scaled)


def check_pretrained_location(name_or_path: str | os.PathLike, subfolder: str = "") -> str | None:
    """The local folder `from_pretrained` will read (with `subfolder`), or None for a Hub id.

    Raises `FileNotFoundError` for a path that is neither an existing folder nor a valid Hub id ('name' or
    'org/name'), e.g. "./runs/demo/best" or "runs/demo/best" before training wrote it, instead of the Hub's
    "Repo id must be in the form ..."; `NotADirectoryError` for a file.
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        folder = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder: {folder!r} (subfolder {subfolder!r} of {path!r})")
        return folder
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; from_pretrained takes the folder that holds the saved files")
    try:
        validate_repo_id(path)
    except HFValidationError:
        hint = "; '~' is not expanded: pass os.path.expanduser(path)" if path.startswith("~") else ""
        raise FileNotFoundError(
            f"no such folder: {path!r} (and it is not a Hub id of the form 'org/name'{hint})"
        ) from None
    return None


def _check_token_limit(name: str, value: Any, upper: int | None = None) -> int | None:
    """Returns `value` if it is None or an int in [2, upper], else raises a `ValueError` naming `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int or None, got {type(value).__name__} ({value!r}).")
    if value < _NUM_SPECIAL_TOKENS:
        raise ValueError(f"`{name}` must be at least {_NUM_SPECIAL_TOKENS} (room for [CLS] and [SEP]), got {value}.")
    if upper is not None and value > upper:
        raise ValueError(
            f"`{name}` ({value}) exceeds the longest sequence the tokenizer and the text model accept "
            f"(text_max_length={upper})."
        )
    return value
