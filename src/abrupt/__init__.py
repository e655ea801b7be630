"""abrupt: abrupt learning in a BERT trained on masked low-rank matrix completion."""

__version__ = "0.1.0"
