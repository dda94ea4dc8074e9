"""The training system: ``run(config, workdir)`` (see ``mlpbnn.train.loop``)."""

from mlpbnn.train.config import ConfigError, base_config
from mlpbnn.train.loop import TrainingDiverged, run

__all__ = ["ConfigError", "TrainingDiverged", "base_config", "run"]
