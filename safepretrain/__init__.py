"""safepretrain: safety pretraining with intervention curricula."""

__version__ = "0.1.0"
