"""Error types shared across the harness.

Every error a user can cause (bad config, bad data, bad checkpoint) is a ``HarnessError``;
the CLI prints its message without a traceback and exits non-zero.
"""


class HarnessError(Exception):
    """Base class of user-facing errors: the message names the file, line, field or key."""


class ConfigError(HarnessError, ValueError):
    """A run/grid configuration is invalid (unknown key, wrong type, impossible mesh...)."""


class DataError(HarnessError, ValueError):
    """An input data file is malformed; the message names the file and the line or row."""


class CheckpointError(HarnessError, ValueError):
    """A checkpoint or weights file is missing tensors, has wrong shapes, or is another architecture."""


class EvalError(HarnessError, ValueError):
    """An evaluation input (benchmark file, model outputs, annotations) is malformed."""
