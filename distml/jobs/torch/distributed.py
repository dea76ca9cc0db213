"""Multi-worker torch: a Ray Train V2 ``TorchTrainer`` worker group (DDP; gloo on CPU, NCCL on
GPU).

1. One Ray task reads and types the data once (:func:`distml.jobs._supervised.prepare`); the
   workers get it from the object store, draw the same row split as the single-task path and fit
   the same input scaling on the train rows.
2. ``prepare_model`` wraps the network in DDP; ``prepare_data_loader`` gives each worker its
   share of the train rows (a ``DistributedSampler``, reshuffled every epoch); the global batch is
   ``model.batch_size`` (``batch_size // workers`` per worker).
3. Every epoch each worker reports the (all-reduced) figures; rank 0 attaches a checkpoint
   (weights, optimizer, scheduler, epoch, early-stopping state). A restarted group
   (``resources.max_failures``) continues from the last checkpoint.
4. After the last epoch rank 0 evaluates the best weights through the shared supervised
   pipeline (metrics, tables, model files), with the data, inputs and torch it already holds,
   and hands the output to the driver in its final checkpoint (JSON, parquet and the model
   files' bytes; no pickle). A separate evaluation task cost a process, torch's import and a
   second read of the data from the object store: 7.1 s of B4's run, against 2–3 s here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from distml.errors import DataError, JobFailed, one_line
from distml.jobs.base import JobOutput, RunContext
from distml.runtime import faults, threads
from distml.runtime import workers as D
from distml.runtime.threads import fit_pools


def run_worker_group(job, ctx: RunContext, choice: D.Execution, prep_ref: Any = None) -> JobOutput:

    from distml.jobs._supervised import prepare_task

    res = job.spec.resources
    gpu = res.gpus_per_worker > 0
    # "DEFAULT": never inside a placement group of the caller's; in a Tune trial that drives this
    # worker group, the trial's group reserves no CPU for the task (distml/tune/runner.py)
    opts = dict(
        num_cpus=res.cpus_per_worker,
        max_retries=res.max_failures,
        retry_exceptions=False,
        scheduling_strategy="DEFAULT",
    )
    if prep_ref is None:
        prep_ref = threads.remote(prepare_task, **opts).remote(job, ctx.data)
    # (1.5 s of imports, torch's and Train's: after the read started)
    from ray.train.torch import TorchConfig, TorchTrainer

    backend = "nccl" if gpu else "gloo"
    ctx.log.info("torch: %d workers, DDP over %s (%s)", choice.workers, backend, choice.reason)
    from distml import progress

    config = {
        "job": job,
        "info": ctx.data,
        "prep": [prep_ref],
        "fault": faults.from_env("train.iteration"),
        "progress": progress.worker_reporter(),
    }  # None unless progress is shown
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=D.scaling_config(res, choice.workers),
        run_config=D.run_config(ctx, res.max_failures),
    )
    t0 = time.perf_counter()
    try:
        result = D.fit(trainer)
    except Exception as e:
        _raise_data_error(prep_ref)
        raise JobFailed(f"torch worker group failed: {one_line(e, 500)}") from e
    t_train = time.perf_counter() - t0
    if result.checkpoint is None:
        raise JobFailed("torch worker group finished without a final checkpoint")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "result.json"), encoding="utf-8") as fh:
            final = json.load(fh)
        if final.get("evaluate_error"):
            raise JobFailed(f"torch evaluation failed: {final['evaluate_error']}")
        out = load_output(os.path.join(d, OUTPUT))
    D.discard_checkpoints(ctx)
    figures = final["figures"]
    out.info["execution"] = choice.record(
        backend=backend,
        device="cuda" if gpu else "cpu",
        global_batch_size=job.spec.model.batch_size,
        per_worker_batch_size=job.spec.model.batch_size // choice.workers,
        attempts=figures["attempts"],
        resumed_from=figures["resumed_from"],
        timings_s={
            "train_s": round(t_train, 4),  # (rank 0's evaluation included)
            "loop_s": round(figures["loop_s"], 4),
            "evaluate_s": round(final["evaluate_s"], 4),
        },
    )
    return out


#: the folder of the final checkpoint that holds rank 0's evaluation (:func:`save_output`)
OUTPUT = "output"


def save_output(out: JobOutput, folder: str) -> None:
    """``out`` as files: ``output.json`` (metrics, info, texts, the other files' names),
    ``tables/NAME.parquet`` (as the run directory stores them: no index) and the model files'
    bytes under ``files/``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(folder, "tables"))
    for name, frame in out.tables.items():
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, os.path.join(folder, "tables", f"{name}.parquet"))
    names = {}
    for i, (rel, data) in enumerate(out.files.items()):
        names[rel] = f"{i}.bin"
        os.makedirs(os.path.join(folder, "files"), exist_ok=True)
        with open(os.path.join(folder, "files", names[rel]), "wb") as fh:
            fh.write(data)
    with open(os.path.join(folder, "output.json"), "w", encoding="utf-8") as fh:
        json.dump(
            {
                "metrics": out.metrics,
                "info": out.info,
                "texts": out.texts,
                "files": names,
                "tables": list(out.tables),
            },
            fh,
            default=_scalar,
        )


def _scalar(value: Any) -> Any:
    """A numpy scalar in the output as its Python value (json.dump's fallback)."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def load_output(folder: str) -> JobOutput:
    """The :class:`JobOutput` :func:`save_output` wrote to ``folder``."""
    import pyarrow.parquet as pq

    with open(os.path.join(folder, "output.json"), encoding="utf-8") as fh:
        saved = json.load(fh)
    files = {}
    for rel, name in saved["files"].items():
        with open(os.path.join(folder, "files", name), "rb") as fh:
            files[rel] = fh.read()
    tables = {
        name: pq.read_table(os.path.join(folder, "tables", f"{name}.parquet")).to_pandas()
        for name in saved["tables"]
    }
    return JobOutput(
        metrics=saved["metrics"],
        tables=tables,
        files=files,
        texts=saved["texts"],
        info=saved["info"],
    )


def _raise_data_error(prep_ref) -> None:
    import ray

    try:
        ray.get(prep_ref, timeout=0)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DataError):
            raise e.cause from None
    except Exception:
        return


def _evaluate(job, config: dict, prep, trained: dict, folder: str) -> dict:
    """Rank 0: the run's output of the weights the group trained (:func:`save_output` to
    ``folder``); a failure is recorded for the driver, not raised (a raise would restart the
    group and train again)."""
    t0 = time.perf_counter()
    try:
        job._pretrained = trained
        save_output(job.fit_and_evaluate(config["info"], prep), os.path.join(folder, OUTPUT))
        error = None
    except Exception as e:  # noqa: BLE001 - the driver reports it as a failed evaluation
        error = f"{type(e).__name__}: {one_line(e, 500)}"
    finally:
        job._pretrained = None
    return {"evaluate_s": time.perf_counter() - t0, "evaluate_error": error}


def _train_loop(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch as rtt
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint
    from torch.utils.data import DataLoader, TensorDataset

    from distml.jobs._supervised import as_prepared
    from distml.jobs.torch.model import (
        LoopData,
        build_net,
        fit_loop,
        load_state,
        n_outputs,
        save_state,
    )
    from distml.runtime.data import split_indices

    job = config["job"]
    m, res = job.spec.model, job.spec.resources
    torch.set_num_threads(max(1, int(res.cpus_per_worker)))
    fit_pools(res.cpus_per_worker)
    prep = as_prepared(ray.get(config["prep"][0]))  # (a search's shared TuneData too)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rtt.get_device()
    parts = split_indices(
        prep.y, job.spec.data.split_spec, classification=prep.task == "classification"
    )
    valid = parts.get("valid")
    task, inputs, Xt, yt, Xv, yv = job.tensors(prep, parts["train"], valid)
    if Xv is not None:  # each worker evaluates every world-th valid row; the sums are reduced
        Xv, yv = Xv[rank::world], yv[rank::world]
    net = rtt.prepare_model(build_net(m, inputs.width, n_outputs(task, prep.n_classes)))
    gen = torch.Generator().manual_seed(m.seed)
    loader = rtt.prepare_data_loader(
        DataLoader(
            TensorDataset(Xt, yt),
            batch_size=max(1, m.batch_size // world),
            shuffle=True,
            generator=gen,
        )
    )

    def set_epoch(epoch: int) -> None:
        if world > 1 and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)

    def reduce(t):
        if world == 1:
            return t
        moved = t.to(device)
        dist.all_reduce(moved)
        return moved.cpu()

    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            path = os.path.join(d, "checkpoint.pt")
            if os.path.exists(path):  # (not the final report's checkpoint)
                with open(path, "rb") as fh:
                    restored = load_state(fh.read())

    def agree(flag: bool) -> bool:
        return bool(reduce(torch.tensor([float(flag and rank == 0)], dtype=torch.float64))[0])

    cadence = D.Cadence(agree)

    from distml.progress import epoch_callback

    show = epoch_callback(config.get("progress") if rank == 0 else None, m.epochs)

    def on_epoch(epoch, figures, state, stopped):
        if show is not None:
            show(epoch, figures, state, stopped)
        faults.crash(
            config["fault"],
            "train.iteration",
            epoch,
            rank=rank,
            world=world,
            delay_s=D.crash_delay_s(),
        )
        if epoch == m.epochs or stopped or not cadence.due():
            return  # (the final report carries the best weights)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                with open(os.path.join(d, "checkpoint.pt"), "wb") as fh:
                    fh.write(save_state(state()))
                ckpt = Checkpoint(d)
            ray.train.report({"epoch": epoch, **figures}, checkpoint=ckpt)

    result = fit_loop(
        m,
        task,
        net,
        loader,
        LoopData(Xt, yt, Xv, yv),
        device=device,
        y_scale=inputs.y_scale,
        restored=restored,
        on_epoch=on_epoch,
        reduce=reduce,
        set_epoch=set_epoch,
        generator=gen if world == 1 else None,
    )
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if rank == 0:
            weights = save_state({k: v.detach().cpu() for k, v in result.net.state_dict().items()})
            trained = {
                "weights": weights,
                "history": result.history,
                "figures": result.figures,
                "inputs": inputs,  # as fitted on the train rows above
            }
            evaluated = _evaluate(job, config, prep, trained, d)
            with open(os.path.join(d, "result.json"), "w", encoding="utf-8") as fh:
                json.dump({"figures": result.figures, **evaluated}, fh)
            ckpt = Checkpoint(d)
        ray.train.report({"epoch": result.figures["epochs_trained"], "final": 1}, checkpoint=ckpt)
