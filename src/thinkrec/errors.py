"""The errors a user can cause, told apart from thinkrec's own bugs.

A :class:`UserError` is a mistake in what the user gave — a config value, a data file, a path, a name — and its
message says what to change: the CLI prints that one line and exits with code 2. Any other exception is an
internal error: the CLI prints its traceback and asks for a report (exit code 1).

Every class also derives from the builtin a caller would have caught before (``ValueError``, ``KeyError``,
``FileNotFoundError``), so ``except ValueError`` in library code keeps working. This module imports nothing from
thinkrec: the data, config and pipeline modules all import it without cycles.
"""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """A mistake in the user's input; the message alone tells what to fix (no traceback needed)."""


class ConfigError(UserError, ValueError):
    """One or more config values or keys are wrong; each message names the dotted field (and the file).

    ``errors`` holds every message, ``source`` the file (or ``<defaults>``) they come from; ``str()`` is one
    line for a single error, a header line plus one indented line per error otherwise.
    """

    def __init__(self, errors: str | Sequence[str], source: str | None = None):
        self.errors = [errors] if isinstance(errors, str) else [str(e) for e in errors]
        self.source = source
        super().__init__(format_errors(self.errors, source))


def format_errors(errors: Sequence[str], source: str | None = None) -> str:
    prefix = f"{source}: " if source else ""
    if len(errors) == 1:
        return prefix + errors[0]
    return f"{prefix}{len(errors)} config errors:\n" + "\n".join(f"  {e}" for e in errors)


class DataFormatError(UserError, ValueError):
    """Bad input data; the message names the file, and the line and field where known."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


class DataRequirementError(UserError, ValueError):
    """The dataset lacks what a requested stage needs (item text or attributes for Semantic IDs, logged
    impressions for re-rankers trained on them, …); the message names the dataset and what is missing."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (a dataset, a config, precomputed vectors, a run directory) is not there."""


class UnknownNameError(UserError, KeyError, ValueError):
    """A name the user gave is not known: a dataset, a model of a registry, a user or item id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(UserError, ValueError):
    """An argument of a call or a command-line option is out of range or contradicts another one."""


class StorageError(UserError, OSError):
    """The run directory cannot be written (disk full, read-only, no permission); what was written before is intact."""


class BusyError(UserError, RuntimeError):
    """Another process holds what this one needs (a run directory's lock)."""


__all__ = [
    "BusyError",
    "StorageError",
    "ConfigError",
    "DataFormatError",
    "DataRequirementError",
    "InvalidArgumentError",
    "MissingInputError",
    "UnknownNameError",
    "UserError",
    "format_errors",
]
