"""Loading a finished torch run for ``distml predict``: ``model/config.json`` checked field by
field, weights through ``torch.load(weights_only=True)``, a user module only when allowed."""

from __future__ import annotations

import json
from typing import Any

from distml.errors import DataError, one_line
from distml.jobs.torch import Job, TorchFitted, TorchModel, require_torch

# ------------------------------------------------------------------ distml predict

#: bounds of the numbers a saved config.json may hold (a crafted file must not make loading
#: allocate without limit)
_MAX_FEATURES = 10_000_000
_MAX_OUTPUTS = 1_000_000
_MAX_PARAMETERS = 2_000_000_000


def _int_field(config: dict, key: str, low: int, high: int) -> int:
    v = config.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise DataError(
            f"model/config.json field {key!r} must be an integer in [{low}, {high}]; got {v!r}"
        )
    return v


def _json_arg(v: Any) -> bool:
    """JSON scalars and lists of them: what a user module's keyword arguments may be."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, list) and all(_json_arg(x) for x in v)


def _mlp_parameters(m: TorchModel, in_features: int, out_features: int) -> int:
    n, width = 0, in_features
    for h in m.hidden:
        n += width * h + h + (4 * h if m.batch_norm else 0)
        width = h
    return n + width * out_features + out_features


def load_model(run, allow_module: tuple[str, ...] = ()) -> TorchFitted:
    """The trained network of a finished torch run directory (no pickle: weights_only).

    ``model/config.json`` is data: its numbers are checked as numbers, and a user module it
    names is imported only when ``allow_module`` lists it (DataError naming the field if not).
    """
    from pathlib import Path

    from pydantic import ValidationError

    from distml.errors import SpecError
    from distml.jobs.torch.model import Inputs, build_net, load_state, user_module_class

    require_torch("distml predict of a torch run")
    model_dir = Path(run) / "model"
    config = json.loads((model_dir / "config.json").read_text())
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise DataError("model/config.json must be a JSON object with a 'model' object")
    in_features = _int_field(config, "in_features", 1, _MAX_FEATURES)
    out_features = _int_field(config, "out_features", 1, _MAX_OUTPUTS)
    if config.get("task") not in ("classification", "binary", "regression"):
        raise DataError(
            "model/config.json field 'task' must be classification, binary or "
            f"regression; got {config.get('task')!r}"
        )
    try:
        # strict: numbers must be JSON numbers, as distml writes them ("4" is no width)
        m = TorchModel.model_validate_json(json.dumps(config["model"]), strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise DataError(f"model/config.json field 'model.{where}': {err['msg']}") from None
    if m.module:
        if m.module not in allow_module:
            raise DataError(
                f"model/config.json field 'model.module' names user code "
                f"{m.module!r}; scoring a run directory does not run its code unless "
                f"you allow it: pass --allow-module {m.module} (Python: "
                f"allow_module=[{m.module!r}]) if you trust that module"
            )
        bad = [k for k, v in m.module_args.items() if not k.isidentifier() or not _json_arg(v)]
        if bad:
            raise DataError(
                f"model/config.json field 'model.module_args.{bad[0]}' must be a "
                "JSON number, string, boolean, null or list of them"
            )
    elif _mlp_parameters(m, in_features, out_features) > _MAX_PARAMETERS:
        raise DataError(
            "model/config.json fields 'in_features', 'out_features' and "
            f"'model.hidden' describe more than {_MAX_PARAMETERS} parameters"
        )
    state = load_state((model_dir / "model.pt").read_bytes())
    if not isinstance(state, dict):
        raise DataError("model/model.pt is not a state_dict")
    if not m.module:
        n_saved = sum(int(v.numel()) for v in state.values() if hasattr(v, "numel"))
        if n_saved != _mlp_parameters(m, in_features, out_features) + (
            len(m.hidden) if m.batch_norm else 0
        ):
            raise DataError(
                "model/model.pt does not hold the weights of the network that "
                "model/config.json describes"
            )
    try:
        if m.module:
            user_module_class(m.module)  # a torch.nn.Module subclass, checked before the call
        net = build_net(m, in_features, out_features)
    except SpecError as e:
        raise DataError(f"model/config.json field 'model.module': {e.message}") from None
    net.load_state_dict(state)
    return TorchFitted(net.eval(), Inputs.from_dict(config["inputs"]), config["task"], config)


def load_predictor(run, allow_module: tuple[str, ...] = ()):
    """The :class:`distml.jobs.predictors.SupervisedPredictor` of a finished torch run."""
    from pathlib import Path

    from distml.jobs.predictors import SupervisedPredictor, read_schema, run_spec

    run = Path(run)
    schema = read_schema(run)
    try:
        model = load_model(run, allow_module)
    except DataError as e:
        raise DataError(f"run dir {str(run)!r}: {e.message}") from None
    except Exception as e:  # torch/zip/JSON errors of a damaged or crafted file alike
        raise DataError(
            f"run dir {str(run)!r}: the torch model files are missing or unreadable ({one_line(e)})"
        ) from None
    manifest = json.loads((run / "manifest.json").read_text())
    spec = run_spec(run, manifest)
    return SupervisedPredictor("torch", Job(spec), model, schema)
