"""Errors caused by the user's input or environment: shown as one line, never as a traceback.

They derive from Hydra's CompactHydraException, which Hydra prints as its message alone.
"""

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """Something the user can fix; printed as a single line, with a non-zero exit."""


class ConfigError(UserError):
    """A config value outside what is allowed."""


class DataError(UserError):
    """The data set is missing or corrupted."""


class DivergedError(UserError):
    """The training loss stopped being finite: the job has no result (its metrics.json says diverged)."""
