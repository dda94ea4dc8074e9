"""What a workdir promises: one live run at a time, and a record of the config its checkpoints
were made with that a resume cannot silently contradict.

The lock is an OS file lock (``flock``) on ``workdir/.lock``, held for the run's lifetime: the
kernel releases it when the process ends however it ends, so a crashed run never blocks the next
and no PID is guessed at. Its file says who holds it, for the refusal's message.

``config.json`` is written once, when the run starts from nothing. On resume the new config is
compared with it (and with the changes accepted since, ``config_history.jsonl``): a field that
changes the training trajectory is refused by name with both values unless the change is accepted
explicitly, and then appended to the history; fields that only change cadence, evaluation or the
machine are accepted and recorded too.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from mlpbnn.train.config import ConfigError

LOCK = ".lock"
CONFIG = "config.json"
HISTORY = "config_history.jsonl"

# Fields (and groups) a resumed run may change freely: when and how it logs, evaluates and saves,
# where it runs, where the data lies. Everything else decides what is trained.
FREE = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints", "progress_bar",
        "eval_batch_size", "num_devices", "evals", "best_metric", "eval", "init_checkpoint", "init_strict",
        "max_runtime", "compilation_cache_dir", "profile_steps", "data.workers", "data.prefetch", "data.dir",
        "data.data_dir", "data.verify_images")


class WorkdirBusy(OSError):
    """Another live run holds the workdir."""


class ConfigDrift(ConfigError):
    """A resume with a config that changes what the checkpoints were trained with."""


class Lock:
    """An exclusive, non-blocking lock on ``workdir/.lock`` until ``release`` (or process exit)."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            try:
                who = json.loads(holder)
                who = f"host {who['host']}, PID {who['pid']}, started {who['started']}"
            except (ValueError, KeyError, TypeError):
                who = "holder unknown"
            raise WorkdirBusy(f"workdir {self.path.parent} is in use by another run ({who}); wait for it to end "
                              "or use another workdir") from None
        os.ftruncate(fd, 0)
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": now}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b': leaf}; an empty dict stays a leaf (a group with nothing in it)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _free(field: str) -> bool:
    return any(field == f or field.startswith(f + ".") for f in FREE)


def recorded_config(workdir: Path) -> dict[str, Any] | None:
    """The config the workdir's checkpoints were made with: config.json, updated by the accepted
    changes of config_history.jsonl (its last line holds the whole config)."""
    history, first = Path(workdir) / HISTORY, Path(workdir) / CONFIG
    if history.exists():
        lines = [line for line in history.read_text().splitlines() if line.strip()]
        if lines:
            return json.loads(lines[-1])["config"]
    return json.loads(first.read_text()) if first.exists() else None


MISSING = "<absent>"


def changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (old, new)} of every leaf that differs; a field one side lacks reads ``MISSING``."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, MISSING), b.get(k, MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, MISSING) != b.get(k, MISSING)}


def check_config(workdir: Path, config_json: str, step: int, accept: bool, write: bool) -> dict[str, tuple]:
    """Compares ``config_json`` with the workdir's record when it holds checkpoints (``step``, the
    latest); refuses trajectory changes unless ``accept``; records what changed (``write``: this
    is the process that writes). Returns the changes."""
    new = json.loads(config_json)
    old = recorded_config(workdir)
    if old is None:  # checkpoints from before the record existed: start the record now
        if write:
            (Path(workdir) / CONFIG).write_text(json.dumps(new, indent=2) + "\n")
        return {}
    diff = changes(old, new)
    # A field only one side has comes from another version of the code (a new option at its
    # default): accepted and recorded; a changed value of a field both have is the user's change.
    refused = {k: v for k, v in diff.items() if not _free(k) and MISSING not in v}
    if refused and not accept:
        named = "; ".join(f"config.{k}: {o!r} in the checkpoints, {n!r} now" for k, (o, n) in refused.items())
        raise ConfigDrift(f"resuming {workdir} (step {step}) with a config that changes what it trains: {named}. "
                          "Rerun with the recorded config, or pass --allow_config_change to continue with the "
                          f"change (recorded in {HISTORY})")
    if diff and write:
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        entry = {"time": now, "step": step, "changes": {k: list(v) for k, v in diff.items()}, "config": new}
        with open(Path(workdir) / HISTORY, "a") as f:
            f.write(json.dumps(entry) + "\n")
    return diff


def start_record(workdir: Path, config_json: str) -> None:
    """A run starting from nothing: its config.json (an earlier record without checkpoints, of a
    run that never saved one, is replaced; its history too)."""
    (Path(workdir) / HISTORY).unlink(missing_ok=True)
    (Path(workdir) / CONFIG).write_text(json.dumps(json.loads(config_json), indent=2) + "\n")
