"""B4 baseline: the same DDP training loop under ``torchrun --nproc_per_node=2`` (gloo on CPU,
NCCL with ``--cuda``), no Ray.

What a user writes by hand: read the parquet, the same stratified split as distml (valid 0.1,
seed 42), standardise with the train rows' mean/std, an MLP (784 → hidden… → classes, ReLU),
``DistributedSampler`` shards (reshuffled every epoch), DDP, Adam, cross-entropy, per-worker batch
``batch_size // world``, and after every epoch the valid loss/accuracy all-reduced over the
ranks. ``loop_s`` times the epochs only (rank 0); the JSON line is printed by rank 0.
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cuda", action="store_true")
    args = ap.parse_args()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if args.cuda else "cpu")
    if args.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_start = time.perf_counter() - T0
    frame = pq.read_table(sorted(glob.glob(os.path.join(args.data, "*.parquet")))).to_pandas()
    y = frame.pop("target").to_numpy(np.int64)
    X = frame.to_numpy(np.float64)
    from sklearn.model_selection import train_test_split

    train, valid = train_test_split(np.arange(len(y)), test_size=0.1, random_state=42, stratify=y)
    train, valid = np.sort(train), np.sort(valid)
    mu, sd = X[train].mean(axis=0), X[train].std(axis=0)
    sd[sd == 0] = 1.0
    Z = ((X - mu) / sd).astype(np.float32)
    Xt, yt = torch.from_numpy(Z[train]), torch.from_numpy(y[train])
    Xv, yv = torch.from_numpy(Z[valid][rank::world]), torch.from_numpy(y[valid][rank::world])
    torch.manual_seed(0)
    layers, width = [], X.shape[1]
    for h in (int(v) for v in args.hidden.split(",")):
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1)).to(device)
    model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if args.cuda else None)
    sampler = DistributedSampler(TensorDataset(Xt, yt), shuffle=True)
    loader = DataLoader(TensorDataset(Xt, yt), batch_size=args.batch_size // world, sampler=sampler)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    lossf = nn.CrossEntropyLoss()
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(2, dtype=torch.float64)
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = lossf(model(xb), yb)
            loss.backward()
            opt.step()
            total[0] += float(loss.detach()) * len(yb)
            total[1] += len(yb)
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        with torch.no_grad():
            for lo in range(0, len(Xv), 8192):
                xb, yb = Xv[lo : lo + 8192].to(device), yv[lo : lo + 8192].to(device)
                out = model(xb)
                sums[0] += float(lossf(out, yb)) * len(yb)
                sums[1] += len(yb)
                sums[2] += float((out.argmax(dim=1) == yb).sum())
        both = torch.cat([total, sums]).to(device)
        dist.all_reduce(both)
        both = both.cpu()
    loop_s = time.perf_counter() - t0
    if rank == 0:
        print(
            json.dumps(
                {
                    "loop_s": loop_s,
                    "startup_s": t_start,
                    "valid_accuracy": float(both[4] / both[3]),
                    "valid_loss": float(both[2] / both[3]),
                    "world": world,
                }
            ),
            flush=True,
        )
    # torch 2.13's gloo group sometimes aborts in its teardown ("terminate called without an
    # active exception", about one run in four here) after the work is done and printed: end
    # the rank at once (what is timed ends here either way; the baseline only gains the teardown)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
