"""Preemption and shared workdirs (issue 22): a graceful stop on SIGTERM / SIGINT that resumes to
the uninterrupted run's numbers, on one process with grain workers and on two processes; the
workdir lock; the config record a resume cannot contradict; the command line's help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlpbnn.train import EXIT_STOPPED, ConfigDrift, Stopped, WorkdirBusy, run
from mlpbnn.train.metrics import read_metrics
from mlpbnn.train.stop import StopRequests, pack_pending, unpack_pending
from mlpbnn.train.workdir import HISTORY, Lock
from tests.utils_train import ROOT, _free_port, cli, tiny

STRIP = ("steps_per_sec", "examples_per_sec")
POSE = ("--config.data.workers=2", "--config.num_train_steps=12", "--config.log_every_steps=4",
        "--config.checkpoint_every_steps=12", "--config.data.num_val=16", "--config.data.num_train=200")
DIGITS = ("--config.model.width=8", "--config.batch_size=32", "--config.num_train_steps=48",
          "--config.log_every_steps=4", "--config.checkpoint_every_steps=48", "--config.eval_every_steps=-1")


def records(workdir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in STRIP} for r in read_metrics(workdir)]


def _final(workdir: Path) -> dict:
    return json.loads((workdir / "final_metrics.json").read_text())


def _wait_for_step(proc: subprocess.Popen, workdir: Path, step: int) -> None:
    """Until the run has logged ``step`` (it is training, between its checkpoints)."""
    log, deadline = workdir / "metrics.jsonl", time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and any(json.loads(line)["step"] >= step for line in log.read_text().splitlines() if line):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} logged; the run ended with {proc.poll()}")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in os.listdir(f"/proc/{p}/task"):
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except FileNotFoundError:
                continue
            out += kids
            todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits for a reaper


def _stop_line(output: str) -> int:
    line = next(x for x in output.splitlines() if x.startswith("stopped at step "))
    return int(line.split()[3])


@pytest.mark.slow
def test_sigterm_between_checkpoints_saves_stops_and_resumes_exactly(tmp_path):
    """SIGTERM to a pose run with two grain worker processes, between its periodic checkpoints:
    a checkpoint of the stop step, exit status 75, no process left behind; the rerun ends with the
    uninterrupted run's metrics.jsonl and final metrics (the steps run between the last log and the
    stop are carried in the checkpoint and logged in the same window)."""
    clean = cli(tmp_path / "clean", *POSE, config="configs/pose_synthetic.py")
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    victim = tmp_path / "victim"
    proc = cli(victim, *POSE, config="configs/pose_synthetic.py", wait=False)
    _wait_for_step(proc, victim, 4)
    children = _descendants(proc.pid)
    assert len(children) >= 2, children  # the grain workers (and their resource tracker)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_STOPPED, output[-3000:]
    step = _stop_line(output)
    assert f"stopped at step {step} by SIGTERM; rerun the same command to resume" in output
    assert 4 < step < 12 and (victim / "checkpoints" / str(step)).is_dir()
    assert "Traceback" not in output
    time.sleep(0.5)
    assert not [c for c in children if _alive(c)], "worker processes left running"
    again = cli(victim, *POSE, config="configs/pose_synthetic.py")
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"resuming from {victim / 'checkpoints'} at step {step}" in again.stdout
    assert records(victim) == records(tmp_path / "clean")
    a, b = _final(victim), _final(tmp_path / "clean")
    assert a["eval"] == b["eval"] and a["step"] == b["step"] == 12
    # A finished run rerun says so and changes nothing.
    before = (victim / "metrics.jsonl").read_text()
    third = cli(victim, *POSE, config="configs/pose_synthetic.py")
    assert third.returncode == 0 and "is finished (step 12" in third.stdout, third.stdout[-2000:]
    assert (victim / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_sigint_on_one_of_two_processes_stops_both_at_one_step(tmp_path):
    """Two processes x 4 devices; SIGINT to process 1 only: both stop after the same step (the flag
    is reduced inside the train step), both exit 75 without a traceback, at a saved checkpoint.
    (Resuming after a stop to an uninterrupted run's numbers: the SIGTERM test above; two processes
    resuming their own checkpoint: tests/test_multihost.py.)"""
    victim = tmp_path / "victim"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}

    def start() -> list[subprocess.Popen]:
        port = _free_port()
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/digits.py"), "--workdir",
               str(victim), "--config.progress_bar=False", *DIGITS, f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2"]
        return [subprocess.Popen([*cmd, f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for i in range(2)]

    procs = start()
    try:
        _wait_for_step(procs[0], victim, 4)
        procs[1].send_signal(signal.SIGINT)
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == EXIT_STOPPED, out[-3000:]
        assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    steps = {_stop_line(out) for out in outputs}
    assert len(steps) == 1, steps
    step = steps.pop()
    assert "by SIGINT" in outputs[1] and "by a stop request of another process" in outputs[0]
    assert 4 < step < 48 and (victim / "checkpoints" / str(step)).is_dir()


def test_stop_requests_flag_signal_and_runtime(tmp_path):
    """The first signal sets the flag and restores the default action (a second one kills at
    once); the wall-time budget sets it too; unlogged metrics survive JSON with their dtype."""
    import numpy as np

    lines: list[str] = []
    before = signal.getsignal(signal.SIGINT)
    with StopRequests(0.0, lines.append) as stop:
        assert not stop.requested() and stop.flag(3).tolist() == [0, 0, 0]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested() and stop.cause == "SIGTERM" and stop.flag(2).tolist() == [1, 1]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second one: the default action
        assert signal.getsignal(signal.SIGINT) == stop._handle
    assert signal.getsignal(signal.SIGINT) == before and "SIGTERM received" in lines[0]
    budget = StopRequests(1e-3, lines.append)
    time.sleep(0.01)
    assert budget.requested() and budget.cause == "max_runtime"
    values = [{"loss": np.float32(0.1), "n": np.int32(3)}, {"loss": np.float32(0.7), "n": np.int32(4)}]
    back = unpack_pending(json.loads(json.dumps(pack_pending(values))))
    assert [{k: (v.dtype, v.item()) for k, v in d.items()} for d in back] == \
        [{k: (v.dtype, v.item()) for k, v in d.items()} for d in values]


def test_max_runtime_stops_with_a_checkpoint_profile_and_console_eval(tmp_path, capsys):
    """config.max_runtime, as a scheduler's wall-time limit: stops after a step with a checkpoint
    and raises Stopped (resuming is checked to the end in the SIGTERM test). On the way: the
    profile of step 2 (config.profile_steps) and the evaluation of step 2 on the console."""
    with pytest.raises(Stopped, match=r"stopped at step 2 by max_runtime; rerun the same command") as e:
        run(tiny(num_train_steps=6, max_runtime=1e-3, profile_steps=1, eval_every_steps=2), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / str(e.value.step)).is_dir()
    assert list((tmp_path / "run" / "profile").rglob("*.xplane.pb")), "no trace written"
    out = capsys.readouterr().out
    assert "step 2: eval top-1 " in out and "(best top1 so far: step 2)" in out, out


def test_a_live_runs_lock_refuses_a_second_run_and_a_crashed_one_does_not(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = Lock(workdir)
    holder.acquire()  # this process is "the other run"
    with pytest.raises(WorkdirBusy, match=rf"workdir {workdir} is in use by another run \(host .*, PID "
                                          rf"{os.getpid()}, started .*\); wait for it to end or use another"):
        run(tiny(num_train_steps=2), workdir)
    assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()
    holder.release()
    # A run killed while holding the lock: the kernel drops it with the process.
    code = (f"import os; from mlpbnn.train.workdir import Lock; Lock({str(workdir)!r}).acquire(); "
            "os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == -9
    assert str(os.getpid()) not in (workdir / ".lock").read_text()  # the dead run's record is still there
    again = Lock(workdir)
    again.acquire()
    again.release()


@pytest.mark.slow
def test_config_drift_is_refused_by_name_accepted_with_the_flag_and_recorded(tmp_path, capsys):
    workdir = tmp_path / "run"
    run(tiny(num_train_steps=2, checkpoint_every_steps=2), workdir)
    record = (workdir / "config.json").read_text()
    with pytest.raises(ConfigDrift, match=r"config.optimizer.learning_rate: 0.0025 in the checkpoints, 0.001 now; "
                                          r"config.seed: 0 in the checkpoints, 1 now\. Rerun with the recorded"):
        run(tiny(num_train_steps=4, seed=1, **{"optimizer.learning_rate": 1e-3}), workdir)
    assert (workdir / "config.json").read_text() == record and not (workdir / HISTORY).exists()
    # Cadence (logging, checkpoints, progress bar) may change; recorded, config.json kept.
    run(tiny(num_train_steps=2, checkpoint_every_steps=2, log_every_steps=1, keep_checkpoints=5), workdir)
    assert "is finished (step 2" in capsys.readouterr().out
    history = [json.loads(x) for x in (workdir / HISTORY).read_text().splitlines()]
    assert history[-1]["changes"] == {"keep_checkpoints": [3, 5], "log_every_steps": [2, 1]}
    # A changed trajectory with the flag: trains on, recorded.
    run(tiny(num_train_steps=4, checkpoint_every_steps=2, seed=1), workdir, allow_config_change=True)
    history = [json.loads(x) for x in (workdir / HISTORY).read_text().splitlines()]
    assert history[-1]["changes"]["seed"] == [0, 1] and history[-1]["changes"]["num_train_steps"] == [2, 4]
    assert history[-1]["step"] == 2 and (workdir / "config.json").read_text() == record
    assert [r["step"] for r in read_metrics(workdir, "train")] == [2, 4]
    # The next resume compares with the accepted config, not the first one.
    with pytest.raises(ConfigDrift, match=r"config.seed: 1 in the checkpoints, 0 now"):
        run(tiny(num_train_steps=6, checkpoint_every_steps=2, seed=0), workdir)


def test_help_lists_the_configs_and_a_file_workdir_is_named(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "digits," in out.stdout and "sbpn_coco," in out.stdout
    assert "allow_config_change:" in out.stdout
    assert "75 stopped on request" in out.stdout
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"workdir .*file is a file, not a directory"):
        run(tiny(), tmp_path / "file")
