"""The one entry point: python train.py --config configs/NAME.py --workdir DIR [--config.a.b=value ...]

Rerunning the same command on the same workdir resumes from its last checkpoint. Multi-host:
pass --coordinator_address, --num_processes and --process_id (or let jax.distributed detect a
TPU pod / SLURM job with --distributed).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")
flags.DEFINE_bool("verbose_logs", False, "Keep absl INFO logs (orbax, jax.distributed); off: warnings only.")
flags.mark_flags_as_required(["config", "workdir"])


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

    from mlpbnn.train import ConfigError, TrainingDiverged, run

    try:
        run(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    except TrainingDiverged as e:
        sys.exit(f"error: {e}")
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
