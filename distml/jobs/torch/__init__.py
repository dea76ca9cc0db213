"""Kind ``torch``: a neural network on tabular data — an MLP built from the spec, or a user
module named explicitly (``module: pkg.mod:Class``, built as ``Class(in_features,
out_features, **module_args)``).

Execution is right-sized (:mod:`distml.runtime.workers`): ``resources.num_workers: 1`` without
GPUs trains in one Ray task through the shared supervised pipeline; more workers, GPUs or data
larger than a worker's budget train with a Ray Train ``TorchTrainer`` worker group (DDP: gloo on
CPU, NCCL on GPU; :mod:`distml.jobs.torch.distributed`). ``batch_size`` is the global batch: each of
``n`` workers takes ``batch_size // n`` rows per step.

Inputs are standardised with the train rows' statistics and categorical columns one-hot encoded
(:class:`distml.jobs.torch.model.Inputs`); every epoch reports the train loss and the valid
figures (``tables/learning_curve.parquet``: iteration, split, metric, value); early stopping keeps
the best weights. The model is ``model/model.pt`` (a state_dict, loaded with
``torch.load(weights_only=True)``) plus ``model/config.json`` (architecture and input scaling).

In a search (:mod:`distml.tune`) a trial reports every epoch (``valid.logloss``,
``valid.accuracy``, ``valid.rmse``, ``valid.mae``), so ASHA or the median rule can stop it, and
checkpoints weights, optimizer and epoch; a retried trial continues from there.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from distml.errors import DataError, MissingDependency
from distml.jobs._supervised import Prepared, SupervisedJob, TuneData
from distml.spec.base import JobSpec, StrictModel

_MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_LOSS_TASKS = {
    "cross_entropy": ("classification",),
    "bce": ("binary",),
    "mse": ("regression",),
    "huber": ("regression",),
}


class EarlyStopping(StrictModel):
    """Stop when a valid figure has not improved for ``patience`` epochs; keep the best weights."""

    patience: int = Field(5, ge=1, le=10_000, description="Epochs without improvement allowed.")
    metric: Literal["loss", "logloss", "accuracy", "rmse", "mae"] = Field(
        "loss", description="Valid figure watched (loss: the training objective on valid rows)."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class LRSchedule(StrictModel):
    """Learning-rate schedule, stepped once per epoch."""

    type: Literal["cosine", "step", "exponential"] = Field(
        ...,
        description="cosine (to 0 over the epochs), step (× gamma every step_size epochs), "
        "exponential (× gamma every epoch).",
    )
    step_size: int = Field(10, ge=1, description="step: epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="step/exponential: decay factor.")


class TorchModel(StrictModel):
    """The ``model`` section of a torch job."""

    architecture: Literal["mlp"] | None = Field(
        "mlp", description="Built-in network (mlp); ignored when `module` is given."
    )
    module: str | None = Field(
        None,
        description="User network `pkg.mod:Class` (explicit opt-in to user code), built as "
        "Class(in_features, out_features, **module_args).",
        pattern=_MODULE_PATTERN,
    )
    module_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the user module."
    )
    hidden: list[int] = Field(default_factory=lambda: [64], description="mlp: hidden layer widths.")
    activation: Literal["relu", "gelu", "tanh", "silu", "leaky_relu"] = Field(
        "relu", description="mlp: activation after each hidden layer."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="mlp: dropout after each activation.")
    batch_norm: bool = Field(False, description="mlp: BatchNorm1d after each hidden linear layer.")
    task: Literal["classification", "binary", "regression"] | None = Field(
        None,
        description="classification (cross-entropy), binary (one logit, BCE) or "
        "regression; default: inferred from the target.",
    )
    loss: Literal["cross_entropy", "bce", "mse", "huber"] | None = Field(
        None, description="Loss; default: cross_entropy / bce / mse by task."
    )
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Weight decay (L2).")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum.")
    lr_schedule: LRSchedule | None = Field(None, description="Learning-rate schedule (none).")
    batch_size: int = Field(
        64, ge=1, le=1_000_000, description="Global mini-batch size (split over the workers)."
    )
    epochs: int = Field(10, ge=1, le=100_000, description="Training epochs.")
    early_stopping: EarlyStopping | None = Field(
        None, description="Early stopping on a valid figure (needs data.split.valid)."
    )
    standardize: bool = Field(True, description="Standardise numeric inputs (train rows' stats).")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of initialisation and shuffling.")

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        bad = [w for w in v if w < 1 or w > 1_000_000]
        if bad:
            raise ValueError(f"model.hidden must list widths in [1, 1000000]; got {bad[0]}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TorchModel":
        if self.loss and self.task and self.task not in _LOSS_TASKS[self.loss]:
            raise ValueError(
                f"model.loss {self.loss} and model.task {self.task} conflict: "
                f"{self.loss} is a {_LOSS_TASKS[self.loss][0]} loss; change one"
            )
        if self.module is None and self.architecture is None:
            raise ValueError("model.architecture or model.module must be given; got neither")
        if self.module_args and self.module is None:
            raise ValueError(
                "model.module_args needs model.module; got module_args without a module"
            )
        es, task = self.early_stopping, self.effective_task
        if es and task:
            regression = task == "regression"
            if regression != (es.metric in ("rmse", "mae")) and es.metric != "loss":
                raise ValueError(
                    f"model.early_stopping.metric {es.metric} is not computed for "
                    f"task {task}; use loss or "
                    f"{'rmse/mae' if regression else 'logloss/accuracy'}"
                )
        return self

    @property
    def effective_task(self) -> str | None:
        """The task fixed by ``task`` or ``loss`` (None: inferred from the target)."""
        return self.task or (_LOSS_TASKS[self.loss][0] if self.loss else None)


class Spec(JobSpec):
    """A torch job."""

    kind: Literal["torch"]
    model: TorchModel = Field(default_factory=TorchModel)

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        split = self.data.split_spec
        if self.model.early_stopping and (split is None or split.valid == 0):
            raise ValueError(
                "model.early_stopping needs a validation split; data.split has no "
                "valid fraction; set data.split.valid (e.g. 0.1) or drop "
                "early_stopping"
            )
        if self.resources.num_workers > 1 and split is not None and split.cv:
            raise ValueError(
                "data.split.cv and resources.num_workers conflict: cross-validation "
                f"folds run as parallel single-worker tasks; got cv={split.cv} and "
                f"num_workers={self.resources.num_workers}; set num_workers: 1"
            )
        if self.model.batch_size < self.resources.num_workers:
            raise ValueError(
                f"model.batch_size must be at least resources.num_workers (the "
                f"global batch is split over the workers); got "
                f"{self.model.batch_size} < {self.resources.num_workers}"
            )
        return self


def require_torch(purpose: str = "kind torch") -> None:
    """MissingDependency with the install hint when torch is not installed."""
    if importlib.util.find_spec("torch") is None:
        raise MissingDependency.for_extra("torch", "torch", purpose)


@dataclass
class TorchFitted:
    """A trained network with what it needs to score frames."""

    net: Any
    inputs: Any  # distml.jobs.torch.model.Inputs
    task: str  # classification | binary | regression
    config: dict

    def outputs(self, X: pd.DataFrame, rows: np.ndarray | None = None):
        """(predictions, class probabilities or None) of ``X``'s rows ``rows`` (all: None)."""
        import torch

        from distml.jobs.torch.model import forward_outputs

        with torch.no_grad():
            logits = self.net.eval()(torch.from_numpy(self.inputs.design(X, rows)))
        pred, proba = forward_outputs(logits, self.task)
        if self.task == "regression" and self.inputs.y_scale:
            mu, sd = self.inputs.y_scale
            pred = pred * sd + mu
        return pred, proba


class Job(SupervisedJob):
    """A torch network: one Ray task, or a TorchTrainer worker group."""

    spec: Spec
    #: what a worker group trained, evaluated by its rank 0 (distributed._evaluate): weights,
    #: history, figures and the fitted inputs
    _pretrained: dict | None = None
    trains_in_worker_group = True

    @classmethod
    def load_predictor(cls, run_dir, manifest: dict, allow_module: tuple[str, ...] = ()):
        from distml.jobs.torch.saved import load_predictor

        return load_predictor(run_dir, allow_module)

    def check_spec(self) -> None:
        require_torch()
        m = self.spec.model
        if m.module:
            top = m.module.split(":", 1)[0].split(".", 1)[0]
            if importlib.util.find_spec(top) is None:
                raise DataError(
                    f"model.module {m.module!r}: package {top!r} is not importable "
                    "here; install it or fix the path"
                )

    def check_data(self):
        self.check_spec()
        return super().check_data()

    def task(self) -> str | None:
        t = self.spec.model.effective_task
        return "classification" if t == "binary" else t

    def torch_task(self, prep: Prepared) -> str:
        t = self.spec.model.effective_task
        if t == "binary":
            if prep.n_classes != 2:
                raise DataError(
                    f"model.task binary needs a target with 2 classes; data.target "
                    f"{self.spec.data.target!r} has {prep.n_classes}"
                )
            return "binary"
        return prep.task

    # ------------------------------------------------------------------ data → tensors

    def tensors(self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None):
        """(task, inputs, X_train, y_train, X_valid, y_valid) as torch tensors."""
        import torch

        task, inputs = self.fit_inputs(prep, train)

        def pair(rows):
            return (
                torch.from_numpy(inputs.design(prep.X, rows)),
                torch.from_numpy(inputs.target(prep.y[rows], task)),
            )

        Xt, yt = pair(train)
        Xv, yv = pair(valid) if valid is not None and len(valid) else (None, None)
        return task, inputs, Xt, yt, Xv, yv

    def fit_inputs(self, prep: Prepared, train: np.ndarray):
        """(task, :class:`~distml.jobs.torch.model.Inputs` fitted on the train rows)."""
        from distml.jobs.torch.model import Inputs

        task = self.torch_task(prep)
        inputs = Inputs.fit(
            prep.X,
            prep.categories,
            prep.y[train],
            self.spec.model.standardize,
            regression=task == "regression",
            rows=train,
        )
        return task, inputs

    def model_config(self, inputs, task: str, prep: Prepared) -> dict:
        from distml.jobs._supervised import py_scalar
        from distml.jobs.torch.model import n_outputs

        return {
            "format": "distml-torch/1",
            "model": self.spec.model.model_dump(mode="json"),
            "in_features": inputs.width,
            "out_features": n_outputs(task, prep.n_classes),
            "task": task,
            "classes": [py_scalar(c) for c in prep.classes] if prep.classes is not None else None,
            "inputs": inputs.to_dict(),
        }

    def train_local(
        self, prep: Prepared, train, valid, *, restored: dict | None = None, on_epoch=None
    ):
        """The single-process loop (one Ray task or one Tune trial)."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        from distml.jobs.torch.model import LoopData, build_net, fit_loop, n_outputs

        torch.set_num_threads(max(1, int(self.spec.resources.cpus_per_worker)))
        m = self.spec.model
        task, inputs, Xt, yt, Xv, yv = self.tensors(prep, train, valid)
        net = build_net(m, inputs.width, n_outputs(task, prep.n_classes))
        gen = torch.Generator().manual_seed(m.seed)
        loader = DataLoader(
            TensorDataset(Xt, yt), batch_size=m.batch_size, shuffle=True, generator=gen
        )
        res = fit_loop(
            m,
            task,
            net,
            loader,
            LoopData(Xt, yt, Xv, yv),
            y_scale=inputs.y_scale,
            restored=restored,
            on_epoch=on_epoch,
            generator=gen,
        )
        fitted = TorchFitted(res.net, inputs, task, self.model_config(inputs, task, prep))
        return fitted, res

    # ------------------------------------------------------------------ SupervisedJob hooks

    def fit(self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None):
        from distml.jobs.torch.model import build_net, load_state

        if self._pretrained is not None:  # trained by a worker group: rebuild, do not train
            task, inputs = self.torch_task(prep), self._pretrained["inputs"]  # rank 0's own
            config = self.model_config(inputs, task, prep)
            net = build_net(self.spec.model, config["in_features"], config["out_features"])
            net.load_state_dict(load_state(self._pretrained["weights"]))
            fitted = TorchFitted(net.eval(), inputs, task, config)
            history, figures = self._pretrained["history"], self._pretrained["figures"]
        else:
            from distml.progress import epoch_callback

            restored, save = self._epoch_checkpoints()
            fitted, res = self.train_local(
                prep,
                train,
                valid,
                restored=restored,
                on_epoch=epoch_callback(
                    getattr(self, "_progress", None), self.spec.model.epochs, then=save
                ),
            )
            history, figures = res.history, res.figures
            if restored is not None:
                self._ckpt.resumed_from = {
                    "epoch": int(figures["resumed_from"]),
                    "of": self.spec.model.epochs,
                }
        curve = pd.DataFrame(history, columns=["iteration", "split", "metric", "value"])
        figures = {
            k: v for k, v in figures.items() if k not in ("attempts", "resumed_from", "loop_s")
        }
        return fitted, figures, {"learning_curve": curve}

    def checkpointable(self) -> bool:
        return self._pretrained is None

    def _epoch_checkpoints(self):
        """(restored state or None, ``on_epoch`` hook or None) of the single-task fit: the
        Train path's checkpoint (:func:`save_state` of the loop's state: weights, optimizer,
        scheduler, epoch, RNG states, early stopping) saved at the checkpoint cadence and after
        the last epoch (:mod:`distml.jobs._resume`)."""
        from distml.jobs.torch.model import load_state, save_state
        from distml.runtime import faults
        from distml.runtime import workers as D

        ckpt, fault, total = self._ckpt, self._fault, self.spec.model.epochs
        if ckpt is None:
            return None, None
        found = ckpt.load()
        restored = load_state(found[1]["checkpoint.pt"]) if found is not None else None

        def save(epoch, figures, state, stopped):
            if ckpt.due(final=bool(stopped) or epoch >= total):
                ckpt.save({"epoch": epoch}, {"checkpoint.pt": save_state(state())})
            faults.crash(fault, "train.iteration", epoch, delay_s=D.crash_delay_s())

        return restored, save

    def predict(self, model: TorchFitted, prep: Prepared, X: pd.DataFrame):
        return model.outputs(X)

    def predict_rows(self, model: TorchFitted, prep: Prepared, rows: np.ndarray):
        return model.outputs(prep.X, rows)  # gathered column by column, no frame copy

    def model_files(self, model: TorchFitted) -> dict[str, bytes]:
        from distml.jobs.torch.model import save_state

        state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
        return {
            "model/model.pt": save_state(state),
            "model/config.json": json.dumps(model.config, indent=2).encode(),
        }

    def run(self, ctx, prep_ref: Any = None):
        from distml.runtime import workers

        require_torch()
        split = self.spec.data.split_spec
        choice = workers.choose(self.spec, ctx.data, ctx.cluster.resources)
        if choice.worker_group and not (split is not None and split.cv):
            from distml.jobs.torch.distributed import run_worker_group

            return run_worker_group(self, ctx, choice, prep_ref)
        out = super().run(ctx, prep_ref)
        ex = out.info.get("execution", {})
        if ex.get("path") == "single_task":
            out.info["execution"] = {
                **choice.record(),
                **{k: v for k, v in ex.items() if k not in ("path", "reason")},
            }
        return out

    # ------------------------------------------------------------------ search hooks

    def tune_iterations(self) -> int:
        return self.spec.model.epochs

    def tune_iteration_metrics(self) -> set[str]:
        task = self.task()
        if task == "regression":
            return {"rmse", "mae"}
        if task == "classification":
            return {"logloss", "accuracy"}
        return {"logloss", "accuracy", "rmse", "mae"}

    def tune_final_overrides(self, result: dict) -> dict[str, Any]:
        """A trial stopped early by the scheduler is refitted with the epochs it reached."""
        epochs = int(result.get("iteration") or 0)
        if not result.get("final") and 0 < epochs < self.spec.model.epochs:
            return {"model.epochs": epochs}
        return {}

    def tune_trial(self, data: TuneData, session) -> None:
        """Train epoch by epoch, reporting every epoch with checkpoints; resume from one."""
        from distml.jobs.torch.model import load_state, save_state

        split = session.split
        prep, parts = data.prep, data.parts
        if split not in ("train", "valid") or split not in parts:
            return super().tune_trial(data, session)
        restored = None
        if session.restored is not None and "checkpoint.pt" in session.restored.files:
            restored = load_state(session.restored.files["checkpoint.pt"])
        total = self.spec.model.epochs

        def on_epoch(epoch, figures, state, stopped):
            session.report(
                epoch,
                figures,
                files=lambda: {"checkpoint.pt": save_state(state())},
                send=epoch < total and not stopped,
            )

        fitted, res = self.train_local(
            prep, parts["train"], parts.get("valid"), restored=restored, on_epoch=on_epoch
        )
        rows = parts[split]
        metrics, _ = self.evaluate(fitted, prep, prep.X.iloc[rows], prep.y[rows])
        figures = {k: v for k, v in res.figures.items() if isinstance(v, (int, float))}
        report = {**{f"{split}.{k}": v for k, v in metrics.items()}, **figures}

        def build():  # what fit() returns for the same loop
            curve = pd.DataFrame(res.history, columns=["iteration", "split", "metric", "value"])
            kept = {
                k: v
                for k, v in res.figures.items()
                if k not in ("attempts", "resumed_from", "loop_s")
            }
            return self.tune_output(data, fitted, kept, {"learning_curve": curve})

        session.keep(report, build)
        session.report(res.figures["epochs_trained"], report, final=True)
