"""The dense-caption settings of SEPS: the paper's prompt and sampling, and the check of the captioner settings a
`SepsProcessor` saves with a model (`dense_caption_model`, `dense_caption_prompt`,
`dense_caption_generation_kwargs`).

The captioner itself lives in `transformers_seps.captioning`. This module imports neither torch nor Transformers,
so that `examples/generate_dense_captions.py --help` answers at once, and nothing of its own package:
`save_pretrained` copies it, with the processor file that imports it, into a folder that `trust_remote_code=True`
loads without the package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["DENSE_CAPTION_GENERATION_KWARGS", "DENSE_CAPTION_PROMPT", "check_dense_caption_settings"]

#: The instruction the SEPS paper gives its multimodal LLM (LLaVA-13B) to write a dense caption.
DENSE_CAPTION_PROMPT = "Provide a comprehensive description of this image"
#: The paper's sampling settings for dense captions (copy before changing).
DENSE_CAPTION_GENERATION_KWARGS: dict[str, Any] = {
    "do_sample": True,
    "temperature": 0.2,
    "top_p": 0.9,
    "max_new_tokens": 500,
}


def check_dense_caption_settings(
    model: str | os.PathLike | None, prompt: str | None, generation_kwargs: Mapping[str, Any] | None
) -> tuple[str | None, str, dict[str, Any]]:
    """
    Checks the captioner settings a `SepsProcessor` saves with a model (`dense_caption_model`,
    `dense_caption_prompt`, `dense_caption_generation_kwargs`) and returns them as it saves them: the model as a
    string, and `None` prompt or generation arguments as the paper's (`DENSE_CAPTION_PROMPT`, a copy of
    `DENSE_CAPTION_GENERATION_KWARGS`).

    Raises:
        ValueError: naming the setting, if `model` is neither None nor a Hub id or folder, `prompt` is blank, or
            `generation_kwargs` is not a JSON-serializable dict (it is saved in `processor_config.json`).
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"`dense_caption_model` must be a Hub id or a folder, got {model!r}.")
    prompt = DENSE_CAPTION_PROMPT if prompt is None else prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"`dense_caption_prompt` must be a non-empty string, got {prompt!r}.")
    generation_kwargs = DENSE_CAPTION_GENERATION_KWARGS if generation_kwargs is None else generation_kwargs
    if not isinstance(generation_kwargs, Mapping):
        raise ValueError(f"`dense_caption_generation_kwargs` must be a dict, got {type(generation_kwargs).__name__}.")
    try:
        json.dumps(dict(generation_kwargs))
    except TypeError as error:
        raise ValueError(f"`dense_caption_generation_kwargs` must be JSON-serializable: {error}.") from error
    return model, prompt, dict(generation_kwargs)
