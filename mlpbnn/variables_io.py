"""Model-variables checkpoints: a directory with an orbax PyTree of the Flax variables
(``params``, ``batch_stats``, ``estimator``) and ``model.json`` saying which model they belong to.

Written by ``python -m mlpbnn.convert`` and read by the trainer (``config.init_checkpoint``,
``config.teacher.checkpoint``). Trainer checkpoints hold more (optimizer state, step, input
position) and are handled by ``mlpbnn.train.checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "model.json"
TREE = "variables"


def save_variables(directory: str | Path, variables: Any, model: str, model_kwargs: dict[str, Any]) -> Path:
    """Writes ``variables`` and the model description; refuses to overwrite an existing checkpoint."""
    directory = Path(directory).absolute()
    if (directory / TREE).exists() or (directory / META).exists():
        raise FileExistsError(f"{directory} already holds a variables checkpoint; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    # Host arrays stay as they are; global jax.Arrays of a multi-process run go to orbax as they
    # are (every process calls this, orbax writes each shard once).
    tree = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), variables)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / TREE, tree)
    if jax.process_index() == 0:
        (directory / META).write_text(json.dumps({"model": model, "model_kwargs": model_kwargs}, indent=2) + "\n")
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
