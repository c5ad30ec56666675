"""Trace-net training under DistributedDataParallel (dfcore.distributed): two gloo processes on the CPU take the
steps and record the losses of one process at the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dfcore import distributed

T = 100  # training steps of the tiny scheduler
STEPS = 5
BATCH = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random DDPM pipeline (8x8, one channel) saved with save_pretrained."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from dfcore.integrations.pretrained_train import build_unet

    path = tmp_path_factory.mktemp("ddpm")
    unet = build_unet((1, 8, 8), (8, 16), norm_num_groups=4, seed=0)
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.1)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(path))
    return path


def _images() -> torch.Tensor:
    return torch.randint(0, 256, (12, 1, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def _train(folder, batch_size: int = BATCH) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train the positive trace net of the tiny model in float64 for STEPS steps; the losses and the weights."""
    from dfcore.integrations.pretrained import PositiveTraceModel, load_model
    from dfcore.integrations.pretrained_train import build_trace_unet, train_trace_model

    model = load_model(folder, dtype=torch.float64)
    unet = build_trace_unet((1, 8, 8), (8, 16), norm_num_groups=4, seed=1).double()
    trace = PositiveTraceModel(unet, model.denoiser, sigma_data=0.5)
    losses = train_trace_model(
        trace, _images(), steps=STEPS, t_min=1.0 / T, batch_size=batch_size, lr=1e-2, warmup_steps=1, seed=7
    )
    return losses, {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _worker(rank: int, world: int, port: int, folder, out) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    with distributed.process_group("cpu") as device:
        assert device == torch.device("cpu")
        losses, state = _train(folder)
        record = {"world_size": distributed.world_size(), "rank": distributed.rank(), "shard": distributed.shard(BATCH)}
        _write_trace(folder, out / f"trace{rank}")
        try:
            _train(folder, batch_size=BATCH - 1)
            record["refused"] = ""
        except ValueError as err:
            record["refused"] = str(err)
        torch.save({"losses": losses, "state": state, **record}, out / f"rank{rank}.pt")


def _write_trace(folder, out) -> None:
    """The trace folder of dfcore.experiments.pretrained.train_trace after two steps."""
    from dfcore.experiments.pretrained import train_trace
    from dfcore.integrations.pretrained import load_model

    section = {"steps": 2, "batch_size": 4, "warmup_steps": 0, "block_out_channels": [8, 16], "norm_num_groups": 4}
    train_trace(folder, out, section, _images(), model=load_model(folder))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_single_process_is_the_identity():
    assert not distributed.is_active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(7) == slice(0, 7)
    net = torch.nn.Linear(2, 1)
    assert distributed.wrap(net) is net
    value = torch.tensor(1.5)
    assert distributed.global_mean(value, 3) == value


def test_two_processes_equal_one(folder, tmp_path):
    """Two gloo ranks with shards of 4 of the same global batch of 8: the same per-step losses and final weights
    as one process with the batch of 8; the trace folder is written by rank 0 alone; a global batch of 7 is refused
    on both ranks."""
    one_losses, one_state = _train(folder)
    # fork: the ranks inherit the imported torch and diffusers instead of importing them again
    mp.start_processes(_worker, args=(2, _free_port(), folder, tmp_path), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert [r["shard"] for r in ranks] == [slice(0, 4), slice(4, 8)]
    # rank 0 alone writes its trace folder
    assert json.loads((tmp_path / "trace0" / "trace.json").read_text())["processes"] == 2
    assert (tmp_path / "trace0" / "loss.csv").is_file() and (tmp_path / "trace0" / "unet").is_dir()
    assert not (tmp_path / "trace1").exists()
    for r in ranks:
        assert "batch_size 7 is not divisible by the world size 2" in r["refused"]
    one = torch.tensor(one_losses, dtype=torch.float64)
    assert len(one) == STEPS and (one[1:] != one[:-1]).all()  # the losses change from step to step
    for r in ranks:
        two = torch.tensor(r["losses"], dtype=torch.float64)
        torch.testing.assert_close(two, one, rtol=1e-10, atol=0)
        for name, value in one_state.items():
            torch.testing.assert_close(r["state"][name], value, rtol=1e-10, atol=1e-12, msg=name)
    initial = _train_initial_state()
    moved = max(float((one_state[k] - initial[k]).abs().max()) for k in one_state)
    assert moved > 1e-3  # the weights were really trained


def _train_initial_state() -> dict[str, torch.Tensor]:
    from dfcore.integrations.pretrained_train import build_trace_unet

    return build_trace_unet((1, 8, 8), (8, 16), norm_num_groups=4, seed=1).double().state_dict()
