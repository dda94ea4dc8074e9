"""One orbax CheckpointManager keeps the latest k saves and the best evaluated one."""

from __future__ import annotations

import jax.numpy as jnp

from mlpbnn.train.checkpoint import Checkpoints


def test_latest_k_and_the_best_survive_a_restart(tmp_path):
    c = Checkpoints(tmp_path, keep=2, best_metric="loss", best_mode="min")
    evals = {2: {"loss": 0.5}, 4: {"loss": 0.2}, 6: {"loss": 0.3}}
    for step in range(1, 9):
        c.save(step, {"w": jnp.full(3, float(step))}, {"step": step}, evals.get(step))
    c.wait()
    assert c.best_step() == 4
    c.close()
    again = Checkpoints(tmp_path, keep=2, best_metric="loss", best_mode="min")
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 7, 8]
    assert again.latest_step() == 8 and again.best_step() == 4
    restored = again.restore_state(4, {"w": jnp.zeros(3)})
    assert restored["w"].tolist() == [4.0, 4.0, 4.0]
    assert again.restore_meta(4) == {"step": 4}
    again.close()


def test_higher_is_better_and_no_best(tmp_path):
    c = Checkpoints(tmp_path / "a", keep=1, best_metric="top1", best_mode="max")
    for step, top1 in ((1, 0.3), (2, 0.9), (3, 0.5)):
        c.save(step, {"w": jnp.zeros(1)}, {"step": step}, {"top1": top1})
    c.wait()
    assert c.best_step() == 2
    assert sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir()) == [2, 3]
    c.close()
    n = Checkpoints(tmp_path / "b", keep=1)
    for step in (1, 2):
        n.save(step, {"w": jnp.zeros(1)}, {"step": step}, {"top1": 1.0})
    n.wait()
    assert n.best_step() is None and n.manager.all_steps() == [2]
    n.close()


def test_best_of_equal_metrics_is_the_latest(tmp_path):
    """orbax's best_step: among equally good evaluations the latest wins, in both modes."""
    for mode in ("min", "max"):
        c = Checkpoints(tmp_path / mode, keep=3, best_metric="loss", best_mode=mode)
        for step, loss in ((1, 0.4), (2, 0.4), (3, 0.4 if mode == "min" else 0.1)):
            c.save(step, {"w": jnp.zeros(1)}, {"step": step}, {"loss": loss})
        c.wait()
        assert c.best_step() == (3 if mode == "min" else 2)
        c.close()
