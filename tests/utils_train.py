"""Shared by the trainer tests: a tiny digits config and a train.py runner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlpbnn.train import base_config

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides):
    c = base_config()
    c.model.name = "bireal_resnet18"
    c.model.small_inputs = True
    c.model.width = 8
    c.model.stage_sizes = (1, 1, 1, 1)
    c.estimator.weights = "mlp(init='positive', hidden=16)"
    c.data.name = "digits"
    c.batch_size = 16
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.progress_bar = False
    c.optimizer.learning_rate = 2.5e-3
    c.optimizer.schedule = "linear"
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def cli(workdir: Path, *flags: str, devices: int = 1, wait: bool = True, cwd: Path = ROOT,
        config: str = "configs/digits.py"):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / config),
           "--workdir", str(workdir), "--config.progress_bar=False", *flags]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


SMALL_CLI = ("--config.model.width=8", "--config.batch_size=32", "--config.num_train_steps=40",
             "--config.log_every_steps=2", "--config.checkpoint_every_steps=2", "--config.eval_every_steps=-1")


def kill_after_checkpoint(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 600) -> None:
    """SIGKILLs a train.py process as soon as its checkpoint ``step`` exists; fails if the run ends
    first (the caller checks that it did not finish)."""
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step)).is_dir():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(config: str, workdir: Path, *flags: str, processes: int = 1, env: dict | None = None) -> str:
    """Runs train.py as ``processes`` processes with 8 // processes CPU devices each."""
    base = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {}),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / config), "--workdir", str(workdir),
           "--config.progress_bar=False", *flags]
    if processes == 1:
        out = subprocess.run(cmd, cwd=ROOT, env=base, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout + out.stderr
    port = _free_port()
    procs = [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                                     f"--process_id={i}"], cwd=ROOT, env=base, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(processes)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=900)[0])
        finally:
            p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return logs[0]
