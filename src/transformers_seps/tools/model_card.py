"""Model cards (`README.md`) of SEPS models converted from the authors' checkpoints (the cards of trained models,
and the metadata both share, are `transformers_seps.train.model_card`).

`render_model_card` writes the card of one release: a backbone of `OFFICIAL_VISION_BACKBONES` (or a custom one)
trained on Flickr30K or MS-COCO. `convert_official_checkpoint` puts it in every folder it writes, with the facts of
the converted checkpoint; the planned releases' cards are committed in `model_cards/`, written by

    python -m transformers_seps.tools.model_card --output_dir model_cards

The cards quote no number of ours until one is measured; a measured one (an `eval_results.json`, or the
`--output_json` of `examples/evaluate_retrieval.py`) goes into the card and its machine-readable `model-index`,
with its protocol (each dense caption paired with its own image). The authors' reported numbers are quoted as
theirs, with the protocol that produced them (their evaluation pairs every text query with the dense caption of
its ground-truth image: a label leak, docs/model.md, section 2).
"""

import argparse
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..configuration_seps import SepsConfig
from ..train.model_card import HUB_DATASETS, card_metadata, model_index_results, our_results_text
from .convert_official import OFFICIAL_TEXT_BACKBONE, OFFICIAL_VISION_BACKBONES, OfficialCheckpoint

_WIDTH = 115  # line width of the cards' paragraphs
METHODS = ("seps", "laps")  # whose checkpoint: the two have the same layout, only the user can tell them apart
DATASETS = {"f30k": "Flickr30K", "coco": "MS-COCO"}
_BACKBONE_NAMES = {"vit": "ViT-B/16", "swin": "Swin-B"}
_TEXT_BACKBONE_HUB_ID = "google-bert/bert-base-uncased"
_AUTHORS_CODE = "https://github.com/Sweet4tars/seps"
_AUTHORS_README = "the README of the authors' repository (public fork `maxingan2412/seps`, commit `7f4dfa6`)"

# Reported by the SEPS authors in their README (columns: I2T R@1, I2T R@5, T2I R@1, T2I R@5, rSum, as printed
# there), evaluated with their leaky pairing on checkpoints chosen on the test split.
_F30K, _COCO_1K, _COCO_5K = "Flickr30K 1K test", "MS-COCO 1K (5 folds)", "MS-COCO 5K"
AUTHORS_REPORTED = {
    ("f30k", "vit-224"): {_F30K: (86.1, 93.7, 86.9, 98.1, 560.9)},
    ("f30k", "vit-384"): {_F30K: (90.7, 94.4, 89.3, 99.3, 571.5)},
    ("f30k", "swin-224"): {_F30K: (89.8, 96.9, 88.0, 98.9, 572.0)},
    ("f30k", "swin-384"): {_F30K: (93.6, 98.3, 91.6, 99.4, 581.9)},
    ("coco", "vit-224"): {_COCO_1K: (89.0, 94.8, 88.5, 99.3, 569.5), _COCO_5K: (73.9, 85.2, 73.5, 94.5, 516.9)},
    ("coco", "vit-384"): {_COCO_1K: (90.9, 96.1, 91.0, 99.5, 576.1), _COCO_5K: (77.8, 88.7, 78.5, 96.3, 534.6)},
    ("coco", "swin-224"): {_COCO_1K: (87.2, 94.9, 84.7, 99.0, 563.9), _COCO_5K: (71.9, 86.0, 66.8, 92.2, 506.1)},
    ("coco", "swin-384"): {_COCO_1K: (89.5, 96.5, 87.1, 99.2, 571.2), _COCO_5K: (74.7, 88.4, 70.3, 93.8, 519.1)},
}

SEPS_BIBTEX = """@misc{mao2025seps,
  title         = {{SEPS}: Semantic-enhanced Patch Slimming Framework for fine-grained cross-modal alignment},
  author        = {Mao, Xinyu and Li, Junsi and Zhang, Haoji and Liang, Yu and Sun, Ming},
  year          = {2025},
  eprint        = {2511.01390},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2511.01390}
}"""
LAPS_BIBTEX = """@inproceedings{fu2024linguistic,
  title     = {Linguistic-Aware Patch Slimming Framework for Fine-grained Cross-Modal Alignment},
  author    = {Fu, Zheren and Zhang, Lei and Xia, Hou and Mao, Zhendong},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""


def release_name(backbone: str, dataset: str) -> str:
    """The planned Hub repo name of a release, e.g. `seps-vit-224-f30k`."""
    return f"seps-{backbone}-{dataset}"


def planned_releases() -> list[tuple[str, str]]:
    """(backbone, dataset) of every planned release: the four backbones on Flickr30K and MS-COCO."""
    return [(backbone, dataset) for dataset in DATASETS for backbone in OFFICIAL_VISION_BACKBONES]


def _backbone_label(backbone: str) -> str:
    family, resolution = backbone.split("-")
    return f"{'ViT' if family == 'vit' else 'Swin'}-{resolution}"


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------


def _title(method: str, backbone: str | None, dataset: str | None) -> str:
    parts = ["SEPS (the authors' weights)" if method == "seps" else "LAPS (the authors' weights) as a SEPS model"]
    if backbone is not None:
        parts.append(f"{_backbone_label(backbone)} backbone")
    if dataset in DATASETS:
        parts.append(DATASETS[dataset])
    return "# " + ", ".join(parts)


def _status(checkpoint: OfficialCheckpoint | None, dataset: str | None, measured: bool = False) -> str:
    no_results = (
        "Our evaluation of these weights is under *Results*."
        if measured
        else "We have not evaluated these weights yet: this card holds no retrieval result of ours."
    )
    if checkpoint is None:
        where = f"{DATASETS[dataset]} " if dataset in DATASETS else ""
        status = (
            f"**Weights not released yet.** This card describes a planned release: the authors' {where}checkpoint "
            "for this backbone, converted to `transformers` with `examples/convert_official_checkpoint.py` of "
            "transformers-seps. Until it is published, convert the authors' `model_best.pth` yourself (see *Convert "
            f"the authors' checkpoint*). {no_results}"
        )
        return textwrap.fill(status, width=_WIDTH, initial_indent="> ", subsequent_indent="> ")
    status = (
        f"Converted from the authors' checkpoint (`model_best.pth`, saved after epoch {checkpoint.epoch}, "
        f"{checkpoint.iterations} iterations) with `examples/convert_official_checkpoint.py` of transformers-seps. "
        f"{no_results} The checkpoint records `best_rsum` = {checkpoint.best_rsum:.1f}: the authors' training script "
        "measured it on the **test** split with the leaky dense-caption pairing described below, so it is their "
        "number, not a retrieval result."
    )
    return textwrap.fill(status, width=_WIDTH)


def _model_section(backbone: str | None, config: SepsConfig | None) -> str:
    if backbone is not None:
        family, resolution = backbone.split("-")
        vision = f"{_BACKBONE_NAMES[family]} `{OFFICIAL_VISION_BACKBONES[backbone]}`, {resolution} px"
    else:
        vision = f"custom `{config.vision_config.model_type}` backbone" if config is not None else "custom backbone"
    rows = [
        ("variant", '`"official"`: the computation of the authors\' released code'),
        ("vision encoder", vision),
        ("text encoder", f"`{OFFICIAL_TEXT_BACKBONE}` (the caption and the dense caption)"),
    ]
    if config is not None:
        cls = " + [CLS]" if config.vision_cls_token else ""
        rows += [
            ("embedding size C", str(config.embed_dim)),
            ("patches N", f"{config.num_patches}{cls}"),
            ("kept per pair K = ceil(rho N)", f"{config.num_kept_patches} (sparse_ratio rho = {config.sparse_ratio})"),
            (
                "aggregated tokens N_c = int(N aggr_ratio rho)",
                f"{config.num_aggregated_patches} (aggr_ratio = {config.aggr_ratio})",
            ),
        ]
    else:
        rows.append(
            (
                "C, sparse_ratio, aggr_ratio",
                "read from the checkpoint's `opt` when converting (the authors' README commands use sparse_ratio 0.5 "
                "and aggr_ratio 0.4 for ViT, 0.8 and 0.6 for Swin, C = 512, and 1024 in one Swin command)",
            )
        )
    table = "\n".join(["| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])
    return f"""## Model

SEPS (Semantic-Enhanced Patch Slimming, Mao et al., arXiv 2511.01390) scores an image-caption pair by matching
image patches with caption words. For each pair it keeps the K patches most similar to the image's own mean patch
and to the caption, fuses the dropped ones into one token, slims the kept ones into N_c aggregated tokens with a
learned MLP, and scores the pair with a mean-max patch-word alignment, plus the same score against a *dense
caption* of the image written by a multimodal LLM (LLaVA-13B, prompt "Provide a comprehensive description of this
image"). The official variant is the LAPS architecture (CVPR 2024) with that dense-caption branch.

{table}"""


def _laps_weights() -> str:
    return """## LAPS weights

These weights were trained by the LAPS authors (https://github.com/CrossmodalGroup/LAPS), without dense captions.
SEPS's official variant is LAPS plus a dense-caption branch that has no weights of its own, so without dense
captions the model computes exactly LAPS's score. Do not pass dense captions: the branch would reuse the
aggregation LAPS trained for captions, which it never saw with dense captions."""


def _intended_use() -> str:
    return """## Intended use

- Ranking images for an English caption, or captions for an image, on photographs like those of Flickr30K and
  MS-COCO (people, animals, everyday scenes); re-ranking the top candidates of a faster retriever.
- Research on fine-grained image-text alignment; reproducing and auditing the SEPS paper's results.
- Looking at which patches a caption selects (`transformers_seps.visualization`).

Out of scope: decisions about people (identification, surveillance, profiling), captions in other languages,
images far from the training photographs (documents, medical or satellite images), and use as a general
embedding model: a score needs the image and the caption together."""


def _usage(repo_id: str) -> str:
    return f'''## How to score pairs

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)

images = [Image.open("dog.jpg"), Image.open("beach.jpg")]
captions = ["a dog catches a frisbee in a park", "two children build a sandcastle"]
inputs = processor(images=images, text=captions)  # dense_text=[...]: one per image, that image's own
with torch.no_grad():
    scores = model(**inputs).logits_per_image  # (2 images, 2 captions)
```

With `transformers-seps` installed, `SepsModel.from_pretrained` and `SepsProcessor.from_pretrained` load the
same folder without remote code. To rank a gallery, encode every image and caption once and score all pairs in
chunks:

```python
with torch.no_grad():
    image_embeds = model.encode_image(inputs["pixel_values"])  # (N_img, L_v, C)
    text_embeds = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    scores = model.similarity(image_embeds, text_embeds, inputs["attention_mask"])  # (N_img, N_txt)
ranking = scores[:, 0].argsort(descending=True)  # images for the first caption, best first
```

A dense caption always belongs to the candidate image (`dense_text[j]` describes `images[j]`); without dense
captions the dense branch drops out. To see the patches a caption keeps:

```python
from transformers_seps.visualization import plot_patch_selection

figure = plot_patch_selection(model, processor, images[0], captions[0])  # needs matplotlib
figure.savefig("selection.png")
```'''


def _conversion_usage() -> str:
    return """### Convert the authors' checkpoint

From a clone of transformers-seps (`pip install -e .`):

```bash
python examples/convert_official_checkpoint.py --checkpoint model_best.pth --output_dir seps-model \\
    [--tokenizer bert-base-uncased] [--method laps] [--push_to_hub <org>/<name>]
```

The checkpoint is read with `torch.load(weights_only=True)` (tensors and the run's `argparse.Namespace` only); the
backbone is inferred from the run's options and every weight must find its place."""


def _training_recipe(method: str, dataset: str | None) -> str:
    if method == "laps":
        return """## Training recipe (the authors')

The weights come from the LAPS authors' `train.py` (https://github.com/CrossmodalGroup/LAPS), as published; we did
not retrain them. Their README gives the commands and hyper-parameters; like SEPS's, their `train.py` picks the
epoch with the best rSum on the **test** split. A clean protocol selects on the dev split."""
    caption_files = {"f30k": "`data/f30k/f30k_train.jsonl`", "coco": "`data/coco/coco_train.jsonl`"}
    dense = caption_files.get(dataset, "their `data/<dataset>/*_train.jsonl`")
    return f"""## Training recipe (the authors')

The weights come from the authors' `train.py` ({_AUTHORS_CODE}), as published; we did not retrain
them.

- Initialisation: the pretrained vision backbone above and `bert-base-uncased`; the projections and the
  aggregation MLP from scratch.
- 30 epochs, AdamW (weight decay 1e-4), learning rate 2e-4 for the new layers and 2e-5 for both backbones,
  multiplied by 0.3 at epochs 9, 15, 20 and 25; gradient norm clipped at 2.
- Bidirectional triplet loss, margin 0.2: summed over negatives in the first epoch, hardest negative after; five
  captions of an image are never negatives of each other; scaled from 0 to 1 over the first epoch. Plus 2 x the
  ratio loss, which is constant with hard top-K masks (it has no gradient).
- Batch size 64 per GPU (72 for Swin on MS-COCO on 3 GPUs), gathered over the GPUs for the loss; images
  `RandomResizedCrop` (scale 0.6-1, bicubic) and horizontal flips at the backbone's resolution; captions: 20% of
  the words masked, replaced by a random word piece or deleted.
- Dense captions: one per training image, written by LLaVA-13B (their repository's
  {dense}).
- Model selection: the epoch with the best rSum on the **test** split (their `train.py` validates on it), with
  the leaky pairing below. A clean protocol selects on the dev split."""


def _evaluation_protocol() -> str:
    return """## Evaluation protocol

As VSE++, SCAN and LAPS: Flickr30K 1K test (1000 images x 5000 captions); MS-COCO 5K test (5000 x 25000) and 1K,
the mean over 5 folds of 1000 images. Image-to-text: the rank of the best of the image's 5 captions; text-to-image:
the rank of the caption's image. R@1/5/10 in percent, rSum the sum of the six recalls. Every score S(I_j, T_i)
may use the dense caption D_j of the candidate image, never that of the image T_i was written for. Run it with

```bash
python examples/evaluate_retrieval.py --model <folder or hub id> --dataset f30k --data_root data/f30k \\
    --image_root data/flickr30k-images --split test
```

(`--dense_pairing query_ground_truth` adds the authors' pairing side by side, to measure the leak)."""


def _dense_caption_leak() -> str:
    return """## The dense-caption leak in the authors' evaluation

A dense caption is written from one image alone, so it belongs to that image. The authors' `lib/evaluation.py`
indexes dense captions by caption, and `lib/cross_net.py` adds S(I_j, D_gt(i)) to S(I_j, T_i): every text query
is scored with the dense caption of its **ground-truth** image, whichever candidate image it is compared with.
That hands the answer to the model. On the Flickr30K test captions we measured that a human caption finds its
image's dense caption at R@1 51.7 (of 1000, with an off-the-shelf sentence encoder, all-MiniLM-L6-v2), and a
text-only proxy of the leaky pairing reaches R@1 99.8.

transformers-seps evaluates honestly by default (each candidate image with its own dense caption) and reproduces
the authors' pairing only when asked, to measure the leak."""


def _results(method: str, backbone: str | None, dataset: str | None, ours: str | None = None) -> str:
    """The authors' reported numbers (with their protocol) after ours, when measured (`our_results_text`)."""
    paragraphs = [
        "**Ours: not measured yet.** The numbers below are the authors', under their protocol."
        if ours is None
        else "The numbers below ours are the authors', under their protocol."
    ]
    reported = AUTHORS_REPORTED.get((dataset, backbone)) if method == "seps" else None
    table = []
    if reported:
        paragraphs.append(
            f"Reported by the SEPS authors in {_AUTHORS_README}, for {_backbone_label(backbone)} on "
            f"{DATASETS[dataset]}, columns as printed there. Protocol: every text query carries the dense caption of "
            "its ground-truth image (the leak above), and the checkpoint is the epoch with the best test-split rSum. "
            "They are not comparable with honest retrieval results."
        )
        table = [
            "| test set | I2T R@1 | I2T R@5 | T2I R@1 | T2I R@5 | rSum |",
            "| --- | --- | --- | --- | --- | --- |",
            *(f"| {split} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for split, values in reported.items()),
        ]
    paragraphs.append(
        "For scale, on Flickr30K with a ViT-224 backbone the SEPS authors report T2I R@1 86.9 under that protocol, "
        "while methods evaluated without the leak report 62.5 (LAPS, the same architecture without dense captions) "
        "and 68.5 (D2S-VSE, which uses dense captions in training only), as reported by their authors."
    )
    blocks = ["## Results", *(textwrap.fill(paragraph, width=_WIDTH) for paragraph in paragraphs)]
    if table:
        blocks.insert(3, "\n".join(table))
    if ours is not None:
        blocks.insert(1, ours)
    return "\n\n".join(blocks)


def _limitations() -> str:
    return """## Limitations

- Scoring is pairwise: every image-caption pair needs its own patch selection and alignment, so ranking a large
  gallery is costly (the Flickr30K test split alone is 5 million pairs). Use it to re-rank a short list.
- Dense captions cost one multimodal-LLM generation per image (LLaVA-13B in the paper), and their errors or
  hallucinations steer the patch selection.
- English captions only (uncased BERT word pieces); images are resized to a square without cropping, so extreme
  aspect ratios are distorted.
- Flickr30K and MS-COCO are photographs of everyday scenes whose captions carry the biases of their annotators
  (gender, age, culture); the model inherits them.
- The authors' code and checkpoints carry no license; ask them before redistributing the weights. The conversion
  code (transformers-seps) is Apache-2.0."""


def _citation() -> str:
    return f"""## Citation

```bibtex
{SEPS_BIBTEX}
```

The official variant builds on LAPS:

```bibtex
{LAPS_BIBTEX}
```"""


def render_model_card(
    backbone: str | None,
    dataset: str | None,
    repo_id: str,
    config: SepsConfig | None = None,
    checkpoint: OfficialCheckpoint | None = None,
    method: str = "seps",
    eval_results: Mapping[str, Any] | None = None,
    dense_pairing: str = "image",
) -> str:
    """The model card (Markdown with YAML front matter) of a SEPS model in the official variant.

    Args:
        backbone: a key of `OFFICIAL_VISION_BACKBONES` ("vit-224", ...), or None for a custom backbone.
        dataset: "f30k", "coco", or None when unknown.
        repo_id: the Hub id (or folder) the code examples load.
        config: the converted model's config, for its exact sizes (K, N_c, ...).
        checkpoint: the converted checkpoint, for its provenance; None for a planned release (no weights yet).
        method: "seps" or "laps", whose checkpoint it is (their files have the same layout).
        eval_results: our evaluation of the converted weights on the test split of `dataset`
            (`examples/evaluate_retrieval.py --output_json`), for the Results section and the `model-index`; None:
            not measured (always, for a planned release).
        dense_pairing: the dense captions of that evaluation: "image" (each image's own) or "none".
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if eval_results is not None and checkpoint is None:
        raise ValueError("eval_results are the evaluation of converted weights: pass their `checkpoint` too")
    base_model = [OFFICIAL_VISION_BACKBONES[backbone], _TEXT_BACKBONE_HUB_ID] if backbone is not None else None
    results = None if eval_results is None else model_index_results(eval_results, dataset, dense_pairing)
    ours = None if eval_results is None else our_results_text(eval_results, dataset, dense_pairing)
    sections = [
        card_metadata(
            repo_id.split("/")[-1], base_model, [HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None, results
        ),
        _title(method, backbone, dataset),
        _status(checkpoint, dataset, measured=eval_results is not None),
        _model_section(backbone, config),
        *([_laps_weights()] if method == "laps" else []),
        _intended_use(),
        _usage(repo_id),
        _conversion_usage(),
        _training_recipe(method, dataset),
        _evaluation_protocol(),
        _dense_caption_leak(),
        _results(method, backbone, dataset, ours),
        _limitations(),
        _citation(),
    ]
    return "\n\n".join(sections) + "\n"


def write_planned_cards(output_dir: str | Path, organization: str = "<org>") -> list[Path]:
    """Write the card of every planned release to `output_dir/<release name>.md`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for backbone, dataset in planned_releases():
        name = release_name(backbone, dataset)
        card = render_model_card(backbone, dataset, repo_id=f"{organization}/{name}")
        path = output_dir / f"{name}.md"
        path.write_text(card, encoding="utf-8")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the model cards of the planned SEPS releases.")
    parser.add_argument("--output_dir", default="model_cards")
    parser.add_argument("--organization", default="<org>", help="Hub organization of the planned repos")
    args = parser.parse_args()
    for path in write_planned_cards(args.output_dir, args.organization):
        print(path)


if __name__ == "__main__":
    main()
