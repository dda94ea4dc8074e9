"""Model-variables checkpoints: a directory with an orbax PyTree of the Flax variables
(``params``, ``batch_stats``, ``estimator``) and ``model.json`` saying which model they belong to.

Written by ``python -m mlpbnn.convert`` and read by the trainer (``config.init_checkpoint``,
``config.teacher.checkpoint``). Trainer checkpoints hold more (optimizer state, step, input
position) and are handled by ``mlpbnn.train.checkpoint``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "model.json"
TREE = "variables"


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def save_variables(directory: str | Path, variables: Any, model: str, model_kwargs: dict[str, Any]) -> Path:
    """Writes ``variables`` and the model description; refuses to overwrite an existing checkpoint.

    Atomic: everything is written into ``DIR.partial`` and renamed to ``DIR`` at the end, so a
    crash leaves either a complete checkpoint or none (a stale ``.partial`` is replaced next time).
    """
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} already holds a variables checkpoint; choose a new directory")
    partial = directory.with_name(directory.name + ".partial")
    if jax.process_index() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _sync("mlpbnn_save_variables_start")
    # Host arrays stay as they are; global jax.Arrays of a multi-process run go to orbax as they
    # are (every process calls this, orbax writes each shard once).
    tree = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), variables)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(partial / TREE, tree)
    _sync("mlpbnn_save_variables_written")
    if jax.process_index() == 0:
        (partial / META).write_text(json.dumps({"model": model, "model_kwargs": model_kwargs}, indent=2) + "\n")
        if directory.exists():  # an empty directory made by the caller
            directory.rmdir()
        partial.rename(directory)
    _sync("mlpbnn_save_variables_done")
    return directory


def load_variables(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (variables as numpy arrays, {'model': ..., 'model_kwargs': ...})."""
    directory = Path(directory).absolute()
    if not (directory / META).is_file() or not (directory / TREE).exists():
        raise FileNotFoundError(f"{directory} is not a variables checkpoint (expected {META} and {TREE}/); "
                                f"create one with: python -m mlpbnn.convert in.pth {directory} --model NAME")
    meta = json.loads((directory / META).read_text())
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(directory / TREE)
    return jax.tree.map(np.asarray, tree), meta
