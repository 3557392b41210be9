"""Multi-process data-parallel training (torch.distributed), launched with ``torchrun``.

RecBole 1.2.1's own ``nproc`` route initialises NCCL and CUDA devices only and wraps models
with ``device_ids``, which a CPU module rejects. We take the standard launcher's environment
instead (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), use gloo on
CPU and NCCL on GPU, and then set the config keys RecBole's data loaders and trainer read
(``single_spec``, ``local_rank``, ``world_size``): RecBole then shards every loader with a
``DistributedSampler`` (the global batch ``train_batch_size`` is split over the processes) and
averages evaluation metrics over the processes.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def launched() -> bool:
    """True when started by ``torchrun`` (or any launcher setting ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(use_gpu: bool = True) -> None:
    """Join the process group described by the launcher's environment (idempotent)."""
    if not launched() or dist.is_initialized():
        return
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {key} is not set: launch with "
                               "`torchrun --nproc_per_node=N run_missrec.py ...`")
    gpu = use_gpu and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if gpu else "gloo", timeout=datetime.timedelta(minutes=30))


def configure(config) -> None:
    """Point a RecBole ``Config`` at the current process group (no-op in a single process)."""
    if not active():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    gpu = dist.get_backend() == "nccl"
    config["single_spec"] = False
    config["local_rank"] = local_rank
    config["world_size"] = dist.get_world_size()
    config["device"] = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    if dist.get_rank() != 0:  # as RecBole does for its own workers: only rank 0 logs
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False


def join(config) -> None:
    """Under torchrun: join the process group and point ``config`` at it (no-op in a single process). NCCL when the
    config's device (the ``device`` option; by default CUDA when present) is a GPU, gloo otherwise."""
    init_from_env(config["device"].type == "cuda")
    configure(config)


def wrap(model: torch.nn.Module, config) -> DistributedDataParallel:
    """DDP over the trainable parameters.

    ``forward_sync_buffers=False``: the only buffers are the frozen item features (identical on every
    rank by construction), which DDP would otherwise re-broadcast at every step.
    """
    device_ids = [config["local_rank"]] if config["device"].type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (picklable objects; tensors travel on the host and arrive there: a
    CUDA tensor pickled on rank 0 would otherwise be unpickled onto rank 0's GPU in every process)."""
    if not active():
        return obj
    holder = [to_host(obj) if dist.get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def to_host(obj):
    """``obj`` with every tensor inside dicts, lists and tuples moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {key: to_host(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(value) for value in obj)
    return obj


def main_first(action):
    """Run ``action()`` on rank 0 while the others wait, then return its result everywhere.

    For steps that write shared files (merged datasets, generated demo data)."""
    result = action() if is_main() else None
    barrier()
    return broadcast(result)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` local processes on a free loopback port
    (append the script and its arguments)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}"]
