"""Run by test_shard.py as one of several separate processes ("workers").

Usage:
  python shard_worker_script.py sequence FILE INDEX COUNT
      Reads two epochs of H5Sequence(FILE, shard=(INDEX, COUNT)), keeping and
      then dropping the remainder, and prints {"keep": [[rows], [rows]],
      "drop": [[rows], [rows]]}.
  python shard_worker_script.py ddp FILE RANK WORLD RENDEZVOUS
      One rank of PyTorch DistributedDataParallel (gloo, CPU) training from
      h5feed.torch with BlockBatchSampler(shard=(RANK, WORLD)); rank 0 prints
      {"epochs": [[rows of rank 0, rank 1, ...], ...], "loss": [...]}.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def sequence(path: str, index: int, count: int) -> None:
    from h5feed import H5Sequence

    result = {}
    for name, drop in (("keep", False), ("drop", True)):  # both in one process: TensorFlow loads once
        seq = H5Sequence(path, batch_size=8, seed=42, shard=(index, count), drop_remainder=drop)
        epochs = []
        for _ in range(2):
            rows = [int(r) for i in range(len(seq)) for r in seq[i][0][:, 0, 0]]
            epochs.append(rows)
            seq.on_epoch_end()
        result[name] = epochs
    print(json.dumps(result))


def ddp(path: str, rank: int, world: int, rendezvous: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from h5feed.torch import BlockBatchSampler, H5Dataset, collate

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.manual_seed(0)
    ds = H5Dataset(path)
    sampler = BlockBatchSampler(ds, 8, seed=42, shard=(rank, world), drop_last=True)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=1)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs, losses = [], []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        rows = []
        for X, Y in loader:
            rows.extend(X[:, 0, 0].long().tolist())
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), Y)
            loss.backward()
            opt.step()
        gathered = [None] * world
        dist.all_gather_object(gathered, rows)
        epochs.append(gathered)
        losses.append(float(loss))
    if rank == 0:
        print(json.dumps({"epochs": epochs, "loss": losses}))
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "sequence":
        sequence(path, int(sys.argv[3]), int(sys.argv[4]))
    else:
        ddp(path, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
