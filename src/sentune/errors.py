"""User-facing errors: one exception family that the CLI prints as a single line.

Bugs raise ordinary exceptions (and keep their traceback); mistakes a user can fix (a bad file,
a bad flag, no network) raise a `SentuneError` whose message names the file, row or field and
says what to do.
"""

from __future__ import annotations


class SentuneError(Exception):
    """A mistake the user can fix; the CLI prints `error: <message>` and exits with code 2."""

    exit_code = 2


class ConfigError(SentuneError):
    """A bad flag, preset or config-file value."""


class DataError(SentuneError):
    """Unreadable or invalid data: names the file and the row or column."""


class ModelError(SentuneError):
    """A model that cannot be loaded or does not fit the request (e.g. too few layers to freeze)."""


class OfflineError(SentuneError):
    """Something had to be downloaded and the network (or the Hub) is unreachable."""


class WriteError(SentuneError):
    """A file or folder could not be written (disk full, permissions); the previous copy is left intact."""


class OutOfMemory(SentuneError):
    """The device ran out of memory; the message says which flags to change."""


class GateError(SentuneError):
    """A distilled student kept less of its teacher's validation score than `--min-retained` asks for. Its own
    exit status (3), so a script tells a refused student from a mistake (2); the run directory is complete."""

    exit_code = 3

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result  # the DistillResult: table, retention, run directory
