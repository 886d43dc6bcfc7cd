"""SEPS demo page (a Gradio app, the entry point of a Hugging Face Space): type a caption, get the gallery's best
images, and for each the patches the caption keeps.

    python demo/app.py --model runs/demo/best --gallery data/synthetic/images --pattern 'test_*.png'
    python demo/app.py --model runs/demo/best --gallery my_photos/     # every image file of the folder

(`make demo-app` after `make demo`.) A Space sets the same options through the environment: SEPS_MODEL (a folder or
Hub id holding a SEPS model and its processor), SEPS_GALLERY, SEPS_PATTERN. The ranking is
`transformers_seps.SepsRetriever.search`; the pictures are `transformers_seps.visualization.plot_patch_selection`.
The options are checked before anything loads: a mistake is one line on stderr, exit status 2, as in `examples/`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from transformers_seps import SepsModel, SepsProcessor, SepsRetriever
from transformers_seps.images import list_image_files, open_rgb_image
from transformers_seps.train.cli import USAGE_ERROR_STATUS, UsageError, check_existing, check_int, check_model_location

if TYPE_CHECKING:
    import gradio as gr

# A caption of the synthetic test split that is true of one test image only (test_00021.png), so the page opens on a
# ranking with one right answer.
EXAMPLE_CAPTION = "a small red cross above a large yellow star"
DEFAULT_TOP_K = 4
MAX_TOP_K = 8


def load_gallery(folder: str | os.PathLike, pattern: str, max_images: int) -> tuple[list[str], list[Image.Image]]:
    """The first `max_images` image files of `folder` matching `pattern`, sorted by path: their names (paths
    relative to `folder`) and images as the model sees them (`transformers_seps.images`). Other files matching
    `pattern` are skipped, counted and named on stderr."""
    files = list_image_files(folder, pattern)
    if files.skipped:
        print(files.skipped_message(), file=sys.stderr)
    paths = files.images[:max_images]
    if not paths:
        raise UsageError(f"--gallery {os.fspath(folder)} holds no image file matching --pattern {pattern!r}")
    return [path.relative_to(folder).as_posix() for path in paths], [open_rgb_image(path) for path in paths]


def figure_to_image(figure: Any) -> Image.Image:
    """A matplotlib figure rendered to a PIL image (and closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def build_demo(retriever: SepsRetriever, names: Sequence[str], images: Sequence[Image.Image]) -> gr.Blocks:
    """The page: a caption box and a `top_k` slider; the ranked images with their patch pictures and the ranking
    as JSON (rank, image name, score S). It opens with the results of `EXAMPLE_CAPTION`, computed here."""
    import gradio as gr  # here: the arguments are checked without it

    from transformers_seps.visualization import plot_patch_selection

    def search(caption: str, top_k: float) -> tuple[list[tuple[Image.Image, str]], list[dict[str, Any]]]:
        if not caption or not caption.strip():
            raise gr.Error("Type a caption to search the gallery for.")
        best = retriever.search(caption, top_k=int(top_k))
        ranking, pictures = [], []
        for rank, (index, score) in enumerate(zip(best.indices[0].tolist(), best.scores[0].tolist(), strict=True)):
            ranking.append({"rank": rank + 1, "image": names[index], "score": score})
            figure = plot_patch_selection(retriever.model, retriever.processor, images[index], caption)
            pictures.append((figure_to_image(figure), f"#{rank + 1} {names[index]}  S = {score:.3f}"))
        return pictures, ranking

    initial_top_k = min(DEFAULT_TOP_K, len(names))
    initial_pictures, initial_ranking = search(EXAMPLE_CAPTION, initial_top_k)
    with gr.Blocks(title="SEPS image-text retrieval") as demo:
        gr.Markdown(
            "# SEPS: semantic-enhanced patch slimming\n"
            f"Type a caption: SEPS ranks the {len(names)} gallery images, and shows for the best ones the patches "
            "the caption keeps (the others are veiled)."
        )
        with gr.Row():
            caption = gr.Textbox(value=EXAMPLE_CAPTION, label="Caption", scale=4)
            top_k = gr.Slider(1, min(MAX_TOP_K, len(names)), value=initial_top_k, step=1, label="Top k")
        button = gr.Button("Search", variant="primary")
        pictures = gr.Gallery(
            initial_pictures,
            label="Best images and the patches the caption keeps",
            columns=2,
            object_fit="contain",
            height="auto",
        )
        ranking = gr.JSON(initial_ranking, label="Ranking")
        button.click(search, [caption, top_k], [pictures, ranking], api_name="search")
        caption.submit(search, [caption, top_k], [pictures, ranking], api_visibility="private")
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=os.path.basename(__file__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=os.environ.get("SEPS_MODEL", "runs/demo/best"), help="model folder or Hub id"
    )
    parser.add_argument("--gallery", default=os.environ.get("SEPS_GALLERY", "data/synthetic/images"))
    parser.add_argument(
        "--pattern",
        default=os.environ.get("SEPS_PATTERN", "**/*"),
        help="glob of the gallery files to rank (default: every image file under --gallery, subfolders included)",
    )
    parser.add_argument("--max_images", type=int, default=200, help="gallery size limit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str], list[Image.Image]]:
    """The options, checked, and the gallery (names and images): a mistake exits with one line and status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_int("max_images", args.max_images, 1)
        check_model_location("model", args.model)
        check_existing("gallery", args.gallery, "folder")
        names, images = load_gallery(args.gallery, args.pattern, args.max_images)
    except UsageError as error:
        parser.exit(USAGE_ERROR_STATUS, f"{parser.prog}: error: {error}\n")
    return args, names, images


def main(argv: Sequence[str] | None = None) -> None:
    args, names, images = parse_args(argv)
    model = SepsModel.from_pretrained(args.model)
    retriever = SepsRetriever(model, SepsProcessor.from_pretrained(args.model))
    retriever.add_images(images)
    build_demo(retriever, names, images).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
