"""The one entry point: python train.py --config configs/NAME.py --workdir DIR [--config.a.b=value ...]

Rerunning the same command on the same workdir resumes from its last checkpoint. Multi-host:
pass --coordinator_address, --num_processes and --process_id (or let jax.distributed detect a
TPU pod / SLURM job with --distributed).

Exit status: 0 trained (or already finished); 1 an error, said in one line (a bad config, a
config that contradicts the workdir's checkpoints, a workdir in use by another run, diverged
training); 75 stopped on request (SIGTERM, SIGINT, config.max_runtime) after saving its step:
rerun the same command to resume; 128 + N killed by signal N (a second SIGTERM or SIGINT).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Config files inherit by importing each other (``from configs import sbpn_coco``): the repository
# root, this file's folder, must be importable, also under ``python -P`` (no script folder on the path).
_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")
flags.DEFINE_bool("verbose_logs", False, "Keep absl INFO logs (orbax, jax.distributed); off: warnings only.")
flags.DEFINE_bool("allow_config_change", False, "Resume although the config changes fields that change the "
                  "training (seed, model, optimizer, data, ...); the change is recorded in config_history.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_STOPPED = 75  # mlpbnn.train.stop.EXIT_STOPPED, without importing JAX for --help


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not FLAGS.verbose_logs:  # orbax logs every save at INFO; metrics go to the console and metrics.jsonl
        logging.set_verbosity(logging.WARNING)
    import jax

    if FLAGS.coordinator_address or FLAGS.distributed:
        # Collectives between the CPU devices of different processes (gloo); no effect on the
        # TPU/GPU backends. Set before initialize: asking for the backend here would start it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    from mlpbnn.train import Stopped, run

    try:
        run(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    except Stopped as e:
        print(e, flush=True)
        sys.exit(EXIT_STOPPED)
    except (ValueError, OSError, FloatingPointError) as e:  # ConfigError, TrainingDiverged, WorkdirBusy, paths
        if FLAGS.verbose_logs:
            raise
        sys.exit(f"error: {e}")


def usage() -> str:
    """--help: what the command does, its flags and the config files there are."""
    configs = sorted(p.removesuffix(".py") for p in os.listdir(os.path.join(_ROOT, "configs"))
                     if p.endswith(".py") and not p.startswith("_"))
    return (f"{__doc__.strip()}\n\nConfigs (configs/NAME.py): {', '.join(configs)}\n\nFlags:\n"
            f"{FLAGS.main_module_help()}\n")


def _unknown_field(argv: list[str], problem: Exception) -> str:
    """The ``--config.a.b=...`` override naming a field the config file lacks, with the valid ones."""
    import importlib.util

    config_file = next((a.split("=", 1)[1] if "=" in a else argv[i + 1] for i, a in enumerate(argv)
                        if a.split("=", 1)[0] in ("--config", "-config") and (("=" in a) or i + 1 < len(argv))), None)
    config = None
    if config_file:
        spec = importlib.util.spec_from_file_location("_config_for_errors", config_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        node, done = config, []
        for part in path.split("."):
            if not hasattr(node, "keys") or part not in node:
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a group)"
                where = "config" + "".join("." + d for d in done)
                return f"config.{path}: {where} has no field {part!r}; valid: {valid}"
            node, done = node[part], [*done, part]
    return f"bad --config override: {problem}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one-line errors for overrides of fields the config lacks."""
    if any(a in ("--help", "-h", "--helpfull", "-help") for a in argv[1:]):
        print(usage())
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:
        sys.exit(f"error: {_unknown_field(argv, e)}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
