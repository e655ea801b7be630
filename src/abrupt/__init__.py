"""abrupt: abrupt learning in a BERT trained on masked low-rank matrix completion."""

__version__ = "0.1.0"

# Tasks and interventions declare their configuration sections in their own modules: importing
# them here registers those sections before any configuration is read.
from . import interventions, tasks  # noqa: E402,F401
