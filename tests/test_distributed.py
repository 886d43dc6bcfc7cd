"""N processes of batch B compute the loss and gradients of one process of batch N * B (gloo, CPU)."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_bert_config, tiny_vit_config
from torch.nn.parallel import DistributedDataParallel

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.loss import SepsForRetrievalTraining

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
LOCAL_BATCH = 3


def build_model(variant: str) -> SepsModel:
    torch.manual_seed(0)
    config = SepsConfig(
        vision_config=tiny_vit_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_config=tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        embed_dim=16,
        variant=variant,
    )
    return SepsModel(config).train()


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size = WORLD_SIZE * LOCAL_BATCH
    # Different caption lengths per process, so the padding to the global length is exercised.
    lengths = torch.tensor([4, 7, 5, 9, 3, 6])
    mask = (torch.arange(9)[None] < lengths[:, None]).long()
    dense_lengths = torch.tensor([12, 8, 10, 6, 11, 9])
    dense_mask = (torch.arange(12)[None] < dense_lengths[:, None]).long()
    return {
        "pixel_values": torch.randn(size, 3, 40, 40, generator=generator),
        "input_ids": torch.randint(3, 100, (size, 9), generator=generator) * mask,
        "attention_mask": mask,
        "dense_input_ids": torch.randint(3, 100, (size, 12), generator=generator) * dense_mask,
        "dense_attention_mask": dense_mask,
        "image_ids": torch.tensor([0, 1, 2, 2, 3, 4]),  # samples 2 and 3 show the same image
    }


def local_slice(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    local = {key: value[part] for key, value in batch.items()}
    for ids, mask in (("input_ids", "attention_mask"), ("dense_input_ids", "dense_attention_mask")):
        length = int(local[mask].sum(dim=1).max())  # trim to the local longest, as a collator would
        local[ids], local[mask] = local[ids][:, :length], local[mask][:, :length]
    return local


def loss_and_gradients(objective, batch) -> tuple[float, dict[str, torch.Tensor]]:
    output = objective(**batch, max_violation=True, selection_seed=123)
    output.loss.backward()
    module = objective.module if isinstance(objective, DistributedDataParallel) else objective
    gradients = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return output.loss.item(), gradients


def worker(rank: int, port: int, variant: str, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A bounded timeout turns a lost peer into an error instead of a hang.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    objective = DistributedDataParallel(SepsForRetrievalTraining(build_model(variant)))
    loss, gradients = loss_and_gradients(objective, local_slice(global_batch(), rank))
    if rank == 0:
        torch.save({"loss": loss, "gradients": gradients}, result_path)
    dist.barrier()  # both ranks are done with every collective before either leaves
    # Leave without tearing down: freeing DDP's reducer destroys the gloo group, whose destructor joins gloo's
    # worker thread while holding the GIL that thread may wait for (a hang seen once with torch 2.13 on CPU).
    os._exit(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_two_processes_match_one_process_of_the_global_batch(tmp_path, variant):
    result_path = str(tmp_path / "rank0.pt")
    mp.spawn(worker, args=(free_port(), variant, result_path), nprocs=WORLD_SIZE, join=True)
    distributed = torch.load(result_path)

    single_loss, single_gradients = loss_and_gradients(SepsForRetrievalTraining(build_model(variant)), global_batch())
    assert distributed["loss"] == pytest.approx(single_loss, rel=1e-5)
    assert distributed["gradients"].keys() == single_gradients.keys()
    assert any(name.startswith("model.vision_model.") for name in single_gradients)
    for name, gradient in single_gradients.items():
        torch.testing.assert_close(distributed["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)
