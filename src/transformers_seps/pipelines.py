"""The `image-text-matching` pipeline: SEPS scores of an image with captions, in their order or ranked.

Importing this module registers the task with Transformers (`PIPELINE_REGISTRY`), after which
`pipeline("image-text-matching", model=...)` builds a [`SepsImageTextMatchingPipeline`]. Its `save_pretrained` (and
`push_to_hub`) writes the model with `custom_pipelines` in `config.json`, this file and the modules it imports
beside it, and the processor, so that `pipeline("image-text-matching", model=<folder or Hub id>,
trust_remote_code=True)` loads it in a process without this package (Transformers' "custom pipeline" mechanism).
Its imports are relative, so the copy works as remote code.
"""

from typing import Any

from transformers import AutoModel, Pipeline
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_seps import check_positive_int
from .inputs import as_caption_batch
from .retrieval import score_processed

IMAGE_TEXT_MATCHING = "image-text-matching"


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
        inputs = self.processor(images=load_image(image, timeout=timeout), text=captions, return_tensors="pt")
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


PIPELINE_REGISTRY.register_pipeline(
    IMAGE_TEXT_MATCHING, pipeline_class=SepsImageTextMatchingPipeline, pt_model=AutoModel, type="multimodal"
)

__all__ = ["IMAGE_TEXT_MATCHING", "SepsImageTextMatchingPipeline"]
