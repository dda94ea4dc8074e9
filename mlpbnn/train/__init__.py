"""The training system: ``run(config, workdir)`` (see ``mlpbnn.train.loop``)."""

from mlpbnn.train.config import ConfigError, base_config
from mlpbnn.train.loop import TrainingDiverged, run
from mlpbnn.train.stop import EXIT_STOPPED, Stopped
from mlpbnn.train.workdir import ConfigDrift, WorkdirBusy

__all__ = ["EXIT_STOPPED", "ConfigDrift", "ConfigError", "Stopped", "TrainingDiverged", "WorkdirBusy", "base_config",
           "run"]
