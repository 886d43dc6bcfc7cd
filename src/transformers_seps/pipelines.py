"""The pipelines of a SEPS model: `image-text-matching` (SEPS scores of an image with captions, in their order or
ranked) and Transformers' `zero-shot-image-classification` (a softmax over `logit_scale * S`).

Importing this module (which loading a SEPS model's config does, `transformers_seps.register_auto_classes`) registers
the `image-text-matching` task with Transformers (`PIPELINE_REGISTRY`), after which `pipeline("image-text-matching",
model=...)` builds a [`SepsImageTextMatchingPipeline`]. Its `save_pretrained` (and `push_to_hub`) writes the model
with `custom_pipelines` in `config.json`, this file and the modules it imports beside it, and the processor, so that
`pipeline("image-text-matching", model=<folder or Hub id>, trust_remote_code=True)` loads it in a process without
this package (Transformers' "custom pipeline" mechanism). Its imports are relative, so the copy works as remote code.

It also makes the `zero-shot-image-classification` task build [`SepsZeroShotImageClassificationPipeline`], a subclass
of Transformers' pipeline that prepares a SEPS model's inputs as `SepsProcessor` does and runs Transformers' code
unchanged for any other model.
"""

import io
import os
from typing import Any

from huggingface_hub.utils import httpx
from PIL import Image
from transformers import AutoModel, BatchFeature, Pipeline, ZeroShotImageClassificationPipeline
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_seps import check_positive_int
from .images import open_rgb_image
from .inputs import as_caption_batch
from .processing_seps import SepsProcessor
from .retrieval import score_processed

IMAGE_TEXT_MATCHING = "image-text-matching"
ZERO_SHOT_IMAGE_CLASSIFICATION = "zero-shot-image-classification"


def load_pipeline_image(image: Any, timeout: float | None = None) -> Any:
    """A pipeline's image as the model sees it: a URL fetched (an error names the URL), a file path decoded by
    `transformers_seps.images.open_rgb_image` (16-bit pixels scaled, EXIF orientation applied), a PIL image as it
    is (the processor converts it the same way); anything else (a base64 string) as Transformers' `load_image`
    reads it."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        try:
            response = httpx.get(image, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise OSError(f"cannot fetch the image {image} ({type(error).__name__}: {error})") from error
        return open_rgb_image(io.BytesIO(response.content), image)
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        return open_rgb_image(image)
    if isinstance(image, Image.Image):
        return image
    return load_image(image, timeout=timeout)


class SepsImageTextMatchingPipeline(Pipeline):
    """Scores an image against captions with a SEPS model: S(image, caption), the raw score of
    [`SepsModel.similarity`] (higher matches better; comparable across calls, unlike a softmax).

    ```python
    >>> import transformers_seps.pipelines  # registers the task
    >>> from transformers import pipeline
    >>> matcher = pipeline("image-text-matching", model="runs/demo/best")
    >>> matcher("dog.jpg", text=["a dog on grass", "a red car"])  # in the captions' order
    [{'text': 'a dog on grass', 'score': ...}, {'text': 'a red car', 'score': ...}]
    >>> matcher("dog.jpg", text=["a red car", "a dog on grass"], top_k=1)  # ranked, the best caption first
    [{'text': ..., 'score': ...}]
    ```

    Call arguments: `images` (one image, a path or URL, or a list of them: a list of results), `text` (a caption or
    a list), `top_k` (rank the captions and keep the best `top_k`; default: all captions, in the order given),
    `timeout` (seconds to fetch an image URL).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                f"the {IMAGE_TEXT_MATCHING} pipeline needs the model's processor: pass processor=SepsProcessor... "
                "or a model folder that holds one"
            )
        self.model.eval()  # deterministic (top-K) patch selection

    def __call__(self, images: Any, text: str | list[str] | None = None, **kwargs: Any) -> Any:
        if text is None:
            raise ValueError(f"the {IMAGE_TEXT_MATCHING} pipeline needs `text`: a caption or a list of captions")
        return super().__call__(images, text=text, **kwargs)

    def _sanitize_parameters(
        self, text: Any = None, top_k: int | None = None, timeout: float | None = None
    ) -> tuple[dict, dict, dict]:
        preprocess_params: dict[str, Any] = {}
        if text is not None:
            preprocess_params["captions"] = as_caption_batch(text, "text")
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        postprocess_params: dict[str, Any] = {}
        if top_k is not None:
            check_positive_int("top_k", top_k)
            postprocess_params["top_k"] = top_k
        return preprocess_params, {}, postprocess_params

    def preprocess(self, image: Any, captions: list[str], timeout: float | None = None) -> dict[str, Any]:
        inputs = self.processor(images=load_pipeline_image(image, timeout), text=captions, return_tensors="pt")
        return {"captions": captions, **inputs}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        captions = model_inputs.pop("captions")
        return {"captions": captions, "scores": score_processed(self.model, model_inputs)[0]}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int | None = None) -> list[dict[str, Any]]:
        results = [
            {"text": caption, "score": score}
            for caption, score in zip(model_outputs["captions"], model_outputs["scores"].tolist(), strict=True)
        ]
        if top_k is None:
            return results
        return sorted(results, key=lambda result: -result["score"])[:top_k]

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None:
        """The model, with `custom_pipelines` in its config and this pipeline's code beside it
        (`Pipeline.save_pretrained`), and the processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


class SepsZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """Transformers' `zero-shot-image-classification` pipeline, which `pipeline(...)` builds for every model once this
    module is imported. For a SEPS model, `candidate_labels` is checked (an empty list is refused, one label may be
    a `str`) and the inputs are those of `SepsProcessor`: the formatted labels truncated at the model's token limit
    as the processor truncates captions, the image decoded by `load_pipeline_image`. Any other model runs
    Transformers' code unchanged."""

    @property
    def _is_seps(self) -> bool:
        return getattr(self.model.config, "model_type", None) == "seps"

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if self._is_seps and "candidate_labels" in preprocess_params:
            labels = as_caption_batch(preprocess_params["candidate_labels"], "candidate_labels")
            preprocess_params["candidate_labels"] = labels
        return preprocess_params, forward_params, postprocess_params

    def preprocess(
        self,
        image: Any,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str = "This is a photo of {}.",
        timeout: float | None = None,
        tokenizer_kwargs: dict | None = None,
    ) -> dict[str, Any]:
        if not self._is_seps:
            return super().preprocess(image, candidate_labels, hypothesis_template, timeout, tokenizer_kwargs)
        if getattr(self, "_seps_processor", None) is None:
            self._seps_processor = SepsProcessor(
                self.image_processor, self.tokenizer, text_model_max_length=self.model.config.max_text_length
            )
        sequences = [hypothesis_template.format(label) for label in candidate_labels]
        inputs = self._seps_processor(images=load_pipeline_image(image, timeout), text=sequences, return_tensors="pt")
        text_inputs = BatchFeature({key: inputs[key] for key in ("input_ids", "attention_mask")})
        return {
            "pixel_values": inputs["pixel_values"].to(self.dtype),
            "candidate_labels": candidate_labels,
            "text_inputs": [text_inputs],
        }


PIPELINE_REGISTRY.register_pipeline(
    IMAGE_TEXT_MATCHING, pipeline_class=SepsImageTextMatchingPipeline, pt_model=AutoModel, type="multimodal"
)
# Transformers' entry of the task, with this subclass as its class (not `register_pipeline`, which would warn at each
# import and mark the class as a custom pipeline that `save_pretrained` ships as code).
PIPELINE_REGISTRY.supported_tasks[ZERO_SHOT_IMAGE_CLASSIFICATION] = {
    **PIPELINE_REGISTRY.supported_tasks[ZERO_SHOT_IMAGE_CLASSIFICATION],
    "impl": SepsZeroShotImageClassificationPipeline,
}

__all__ = [
    "IMAGE_TEXT_MATCHING",
    "SepsImageTextMatchingPipeline",
    "SepsZeroShotImageClassificationPipeline",
    "load_pipeline_image",
]
