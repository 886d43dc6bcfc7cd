"""Processor for SEPS (Semantic-Enhanced Patch Slimming, arXiv 2511.01390).

[`SepsProcessor`] prepares the three inputs of the SEPS model, like transformers' `CLIPProcessor`: images
(`pixel_values`), captions (`input_ids`) and *dense captions* (`dense_input_ids`), the long descriptions a multimodal
LLM writes for each image. It also names that LLM (`dense_caption_*`, saved in `processor_config.json`); writing
dense captions is `transformers_seps.captioning`'s job, imported only when asked to, so that this file and the
`inputs.py` it imports load alone as remote code (`trust_remote_code=True`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import AutoImageProcessor, BatchFeature, BertTokenizer, ViTImageProcessorPil
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import LARGE_INTEGER

from .inputs import already_rescaled, as_caption_batch, as_image_batch, check_pretrained_location, check_token_limit

__all__ = ["DEFAULT_TEXT_MAX_LENGTH", "SEPS_IMAGE_MEAN", "SEPS_IMAGE_STD", "SepsProcessor"]

#: ImageNet per-channel mean and standard deviation of the SEPS authors' `T.Normalize` (RGB order).
SEPS_IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
SEPS_IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Token limit of captions when neither the tokenizer nor the text model states one (BERT's).
DEFAULT_TEXT_MAX_LENGTH = 512

# `from_pretrained` arguments saying where files come from, forwarded when the image processor is reloaded.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# A processor folder needs one of these for its tokenizer (the fast tokenizer's file, or the WordPiece vocabulary).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_RETURN_TENSORS = ("pt", "np", None)
# The captioner's settings (see `transformers_seps.captioning`) and all the processor's, saved in processor_config.json.
_DENSE_CAPTION_SETTINGS = ("dense_caption_model", "dense_caption_prompt", "dense_caption_generation_kwargs")
_SETTINGS = ("dense_max_length", "text_model_max_length", *_DENSE_CAPTION_SETTINGS)


class SepsProcessor(ProcessorMixin):
    r"""
    Builds SEPS model inputs from images, captions and dense captions, with one image processor and one tokenizer
    (which encodes both kinds of captions). [`SepsProcessor.official`] builds the SEPS authors' preprocessing.

    Args:
        image_processor ([`~image_processing_utils.BaseImageProcessor`]):
            Turns images into `pixel_values` of shape `(batch_size, 3, height, width)`.
        tokenizer ([`~tokenization_utils_base.PreTrainedTokenizerBase`]):
            Tokenizes captions and dense captions (BERT WordPiece for the authors' models; any tokenizer works).
        dense_max_length (`int`, *optional*):
            Token limit of dense captions, special tokens included (a truncated one still ends with `[SEP]`);
            between 2 and [`SepsProcessor.text_max_length`], which `None` (the default) means.
        dense_caption_model, dense_caption_prompt, dense_caption_generation_kwargs (*optional*):
            The captioner that writes dense captions for `generate_dense=True`: Hub id or folder of an
            image-text-to-text model (the paper's LLaVA-13B, e.g. `"llava-hf/llava-1.5-13b-hf"`), its instruction
            and its `generate` arguments (`None`: the paper's, see `transformers_seps.captioning`).
        text_model_max_length (`int`, *optional*):
            The longest token sequence the text model accepts (`SepsConfig.max_text_length`); `None`: only the
            tokenizer's limit applies.

    All five settings are saved in `processor_config.json`, so a Hub repo says how its dense captions are made.
    """

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
        """`int`: the token limit of captions: the smaller of the tokenizer's `model_max_length` and
        `text_model_max_length`, each when known, else `DEFAULT_TEXT_MAX_LENGTH` (512)."""
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        # Transformers marks an unknown limit with VERY_LARGE_INTEGER (1e30); anything above LARGE_INTEGER is one.
        if not isinstance(tokenizer_limit, int) or tokenizer_limit >= LARGE_INTEGER:
            tokenizer_limit = None
        limits = [limit for limit in (tokenizer_limit, self.text_model_max_length) if limit is not None]
        return min(limits) if limits else DEFAULT_TEXT_MAX_LENGTH

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
        Loads a processor saved with `save_pretrained` (folder or Hub id), as `ProcessorMixin.from_pretrained`;
        `dense_max_length=...` and the `dense_caption_*` settings override the saved values. The image processor
        is reloaded with `image_processor_backend` ("pil": the authors resize with PIL's bicubic) when transformers
        picks another one (torchvision, when installed); `None` keeps transformers' choice.

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
        settings = {key: kwargs.pop(key) for key in _SETTINGS if key in kwargs}
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor.__dict__.update(settings)
        processor._check_settings()
        current_backend = getattr(processor.image_processor, "backend", None)
        if image_processor_backend is not None and current_backend not in (None, image_processor_backend):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            processor.image_processor = AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, backend=image_processor_backend, **hub_kwargs
            )
        return processor

    @classmethod
    def official(
        cls, tokenizer_name_or_path: str = "bert-base-uncased", image_size: int = 224, **kwargs: Any
    ) -> SepsProcessor:
        r"""
        The preprocessing of the SEPS authors' evaluation code. Images: RGB, PIL bicubic resize to
        `(image_size, image_size)` (no crop, aspect ratio not kept), rescaled by 1/255, normalized with
        `SEPS_IMAGE_MEAN`/`SEPS_IMAGE_STD` (a `ViTImageProcessorPil`: no torchvision needed). Captions: an uncased
        [`BertTokenizer`] from `tokenizer_name_or_path`, wrapped in `[CLS] ... [SEP]`. `kwargs` naming a
        [`SepsProcessor`] setting go to it, the others to `BertTokenizer.from_pretrained`.
        """
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
        processor_kwargs = {key: kwargs.pop(key) for key in _SETTINGS if key in kwargs}
        image_processor = ViTImageProcessorPil(
            do_convert_rgb=True,
            size={"height": image_size, "width": image_size},
            resample=PILImageResampling.BICUBIC,
            do_center_crop=False,
            rescale_factor=1 / 255,
            image_mean=list(SEPS_IMAGE_MEAN),
            image_std=list(SEPS_IMAGE_STD),
        )
        tokenizer = BertTokenizer.from_pretrained(tokenizer_name_or_path, **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **processor_kwargs)

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
                One image or a batch. Non-RGB PIL images go through `convert("RGB")` (as the authors' loader).
                Float images whose values all lie in [0, 1] skip the 1/255 rescale (pass `do_rescale=...` to
                decide); a batch must not mix them with [0, 255] images; floats outside [0, 255] are refused.
            text (`str` or `list[str]`, *optional*):
                Captions, padded to the longest and truncated at `text_max_length` (or a smaller `max_length`).
            dense_text (`str` or `list[str]`, *optional*):
                One dense caption per image, truncated at `effective_dense_max_length`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"`, `"np"`, or `None` for lists.
            generate_dense (`bool`, *optional*, defaults to `False`):
                Write the dense captions of `images` with [`SepsProcessor.generate_dense_captions`] and encode them
                as `dense_text` (which must then be left out).
            kwargs: image processor or tokenizer options, flat or as `images_kwargs={...}` / `text_kwargs={...}`.

        Returns:
            [`BatchFeature`] with `pixel_values`, `input_ids`/`attention_mask` and
            `dense_input_ids`/`dense_attention_mask`, each when the matching input is given.
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
        text_batch = as_caption_batch(text, "text") if text is not None else None
        image_batch = as_image_batch(images) if images is not None else None
        if generate_dense:
            dense_text = self.generate_dense_captions(image_batch)
        dense_batch = as_caption_batch(dense_text, "dense_text") if dense_text is not None else None
        if image_batch is not None and dense_batch is not None and len(image_batch) != len(dense_batch):
            raise ValueError(
                "`dense_text` must hold one dense caption per image: got "
                f"{len(image_batch)} image(s) and {len(dense_batch)} dense caption(s)."
            )

        # `tokenizer_init_kwargs={}`: a tokenizer's saved init kwargs may carry a `max_length` (e.g. 128 for
        # sentence-transformers checkpoints) that must not silently cap the captions.
        merged = self._merge_kwargs(tokenizer_init_kwargs={}, **kwargs)
        text_kwargs = {k: v for k, v in merged["text_kwargs"].items() if k != "return_tensors"}
        if text_kwargs.get("max_length") is None:
            text_kwargs["max_length"] = self.text_max_length
        check_token_limit("max_length", text_kwargs["max_length"], self.text_max_length)
        images_kwargs = {k: v for k, v in merged["images_kwargs"].items() if k != "return_tensors"}
        rescales = "do_rescale" not in images_kwargs and getattr(self.image_processor, "do_rescale", False)
        if image_batch is not None and rescales and already_rescaled(image_batch):
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

    def _tokenize(
        self, captions: list[str], name: str, prefix: str, text_kwargs: dict[str, Any], return_tensors: str | None
    ) -> dict[str, Any]:
        """Tokenizes a checked batch of captions and returns its outputs with keys prefixed by `prefix`."""
        defaults = {"padding": "longest", "truncation": True, "add_special_tokens": True, "return_attention_mask": True}
        # The authors tokenize raw caption text with the basic tokenizer, which never treats "[MASK]" etc. as
        # special tokens; `split_special_tokens=True` gives the same ids with the Rust tokenizer.
        defaults.update(return_token_type_ids=False, split_special_tokens=True)
        encoded = self.tokenizer(captions, return_tensors=None, **{**defaults, **text_kwargs})
        framing_ids = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id}
        for index, ids in enumerate(encoded["input_ids"]):
            if all(token_id in framing_ids for token_id in ids):
                raise ValueError(f"`{name}[{index}]` ({captions[index]!r}) has no token left after BERT normalization.")
        out = BatchFeature(data=dict(encoded), tensor_type=return_tensors)
        return {prefix + key: value for key, value in out.items()}

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
        """Checks the token limits, then the `dense_caption_*` settings with the captioning module, which fills in
        the paper's defaults. Remote code (this file saved next to a model) must not import the package: in a
        process that has not imported it, the settings stay as saved (they were checked before saving)."""
        self.text_model_max_length = check_token_limit("text_model_max_length", self.text_model_max_length)
        self.dense_max_length = check_token_limit("dense_max_length", self.dense_max_length, self.text_max_length)
        if "transformers_seps" not in sys.modules:
            return
        # In `try`, as below: transformers' remote-code loader requires (and imports) what is imported outside one.
        try:
            from transformers_seps.captioning import check_dense_caption_settings
        except ImportError:  # the package without its captioning module: `generate_dense_captions` says so
            return
        settings = check_dense_caption_settings(*(getattr(self, key) for key in _DENSE_CAPTION_SETTINGS))
        self.__dict__.update(zip(_DENSE_CAPTION_SETTINGS, settings, strict=True))
