"""``python -m mlpbnn.data.imagenet``: see ``cli.main``."""

import sys

from mlpbnn.data.imagenet.cli import main

sys.exit(main())
