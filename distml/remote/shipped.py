"""Frames that travel with a submission: ``distml.submit(spec, data=df)``.

A pandas DataFrame (``data=``, ``test_data=``) is written as parquet into the job's working
dir, which Ray uploads with the job (``runtime_env.working_dir``), exactly as ``distml.run``
stages it in a run directory (:mod:`distml.runtime.frames`); the shipped spec names it by its
place there (``data.source: staging/data``), relative to the job's working dir, where the
cluster's ``distml run`` starts. Everything is checked here, before the cluster is contacted:
the frame's type, its size, the columns the spec names and then every check of a file source
on the written files (messages name the frame, not the temporary folder).

Only a pandas frame travels: it is in this process's memory already. A Dask, Ray or Spark
frame is computed where it lives and may be larger than any upload; it belongs in storage the
cluster reads (``s3://``, a shared mount), named in ``data.source``. So does a pandas frame
whose parquet exceeds :data:`SHIP_LIMIT_MIB` (the upload goes through the cluster's dashboard;
Ray refuses packages of 512 MiB and warns at half that).
"""

from __future__ import annotations

import json
import os
from typing import Any

from distml.errors import DataError
from distml.runtime import frames as fr

#: the most parquet (MiB) a submission carries with it
SHIP_LIMIT_MIB = 100

#: how to write each family where a cluster can read it, for the message that refuses it
_WRITE = {
    "dask": "ddf.to_parquet('s3://bucket/train/')",
    "ray": "ds.write_parquet('s3://bucket/train/')",
    "spark": "df.write.parquet('s3://bucket/train/')",
}


def check_shippable(frames: dict[str, fr.Frame]) -> None:
    """DataError unless every frame is a pandas DataFrame (before anything is written)."""
    for frame in frames.values():
        if frame.family != "pandas":
            raise DataError(
                f"{frame.label()} cannot travel with a submission: only a pandas DataFrame "
                f"does (as parquet, up to {SHIP_LIMIT_MIB} MiB); write it where the cluster "
                f"reads it ({_WRITE[frame.family]}, or a shared mount) and name that in "
                f"{frame.field}"
            )


def ship(
    frames: dict[str, fr.Frame], spec: Any, overrides: dict, working_dir: str | os.PathLike
) -> dict[str, str]:
    """Write ``frames`` into ``working_dir`` and check them there as the cluster will read
    them; returns the spec fields that name them, relative to the working dir
    (``{"data.source": "staging/data"}``). ``spec`` is the validated spec that stands for
    them (``data.source: data=``). Raises DataError/SpecError naming the frame."""
    from distml.api import check_source
    from distml.spec import load_spec

    check_shippable(frames)
    fr.check_spec_columns(frames, spec)
    try:
        fr.stage_all(frames, working_dir)
        for keyword, frame in frames.items():
            folder = fr.staging_folder(working_dir, keyword)
            size = sum(p.stat().st_size for p in folder.iterdir())
            if size > SHIP_LIMIT_MIB * 2**20:
                raise DataError(
                    f"{frame.label()} is {size / 2**20:.1f} MiB as parquet; a submission "
                    f"carries at most {SHIP_LIMIT_MIB} MiB with it: write it where the "
                    "cluster reads it (df.to_parquet('s3://bucket/train.parquet'), or a "
                    f"shared mount) and name that in {frame.field}"
                )
        check_source(load_spec(spec, fr.spec_fields(frames, overrides, working_dir)))
    except BaseException as e:
        fr.relabel(e, frames, working_dir)
        raise
    return {
        frame.field: fr.staging_folder(".", keyword).as_posix() for keyword, frame in frames.items()
    }


def set_fields(spec: dict, fields: dict[str, str]) -> dict:
    """``spec`` (a dumped spec) with the dotted ``fields`` set."""
    for path, value in fields.items():
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return spec


def metadata(frames: dict[str, fr.Frame]) -> dict[str, str]:
    """The submission's metadata entry for its frames (the Jobs API keeps strings only)."""
    if not frames:
        return {}
    return {"distml_frames": json.dumps([f.fingerprint() for f in frames.values()])}
