"""Peak CPU memory and time of one SEPS training step with and without gradient checkpointing of the backbones.

ViT-B/16 (224 px) + BERT-base with random weights (the memory does not depend on their values), the paper variant
with dense captions, embed 512, a paired batch of `--batch_size` images, captions of `--caption_length` tokens and
dense captions of `--dense_length` tokens; forward, backward and an AdamW step. Each mode runs in a fresh process;
a peak is the resident set's high-water mark (Linux: reset through /proc/self/clear_refs before the step) above
the resident set before the step: through the backward pass (activations and gradients), and over the whole step
(plus AdamW's state, created by its first step). The weights are not counted. `--results_file
docs/results/NAME.json` also writes the table for the docs (`benchmarks/results.py`).

    .venv/bin/python benchmarks/bench_gradient_checkpointing.py [--batch_size 8] [--tiny]
        [--results_file docs/results/gradient_checkpointing.json]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from results import Column, Recorder, Table, add_results_argument
from transformers import BertConfig, ViTConfig

from transformers_seps import SepsConfig, SepsModel

MODES = ("without", "with")


def memory_kib(field: str) -> int:
    """A `Vm*` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build_model(tiny: bool) -> SepsModel:
    if tiny:  # a quick smoke run of the script
        vision = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
        text = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    else:
        vision, text = ViTConfig(), BertConfig()  # the defaults are ViT-B/16 at 224 px and BERT-base
    torch.manual_seed(0)
    config = SepsConfig(vision_config=vision, text_config=text, embed_dim=32 if tiny else 512, variant="paper")
    return SepsModel(config).train()


def run_step(mode: str, batch_size: int, caption_length: int, dense_length: int, tiny: bool) -> dict:
    model = build_model(tiny)
    if mode == "with":
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch_size, 3, 224, 224, generator=generator)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(1000, vocab, (batch_size, caption_length), generator=generator)
    dense_ids = torch.randint(1000, vocab, (batch_size, dense_length), generator=generator)
    rss_before = memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    start = time.perf_counter()
    torch.manual_seed(2)  # the same sampled patch selection in both modes
    loss = model(pixels, ids, dense_input_ids=dense_ids, return_loss=True).loss
    loss.backward()
    backward_peak_kib = memory_kib("VmHWM")
    optimizer.step()
    seconds = time.perf_counter() - start
    return {
        "backward_peak_mib": (backward_peak_kib - rss_before) / 1024,
        "peak_mib": (memory_kib("VmHWM") - rss_before) / 1024,
        "seconds": seconds,
        "loss": loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--caption_length", type=int, default=32)
    parser.add_argument("--dense_length", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="tiny backbones instead of ViT-B + BERT-base")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in a child process
    add_results_argument(parser)
    args = parser.parse_args()
    sizes = (args.batch_size, args.caption_length, args.dense_length, args.tiny)
    if args.mode:
        print(json.dumps(run_step(args.mode, *sizes)))
        return
    recorder = Recorder(args.results_file)
    table = Table(
        [
            Column("mode", "gradient checkpointing"),
            Column("backward_peak_mib", "peak through backward (MiB)", "{:.0f}"),
            Column("peak_mib", "peak of the step (MiB)", "{:.0f}"),
            Column("seconds", "step time (s)", "{:.1f}"),
            Column("loss", "loss", "{:.6f}"),
        ]
    )
    for mode in MODES:
        command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        table.rows.append({"mode": mode, **result})
    print(table.markdown())
    recorder.write({"main": table})


if __name__ == "__main__":
    main()
