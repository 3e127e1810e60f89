"""The one table from errors to the `edgefleet` command's exit codes (edgefleet.common.exit_codes).

A command catches what it expects and calls ``fail_with(exc)``; the most specific class listed wins
(the table is read in method resolution order), anything else is ERROR unless the command says otherwise.
"""

from __future__ import annotations

from typing import NoReturn

from edgefleet.common.errors import ConfigError, EdgefleetError
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import fail
from edgefleet.compression.errors import CompressionError
from edgefleet.coordinator.errors import StoreUnavailable
from edgefleet.protocol.errors import BundleError

__all__ = ["EXIT_CODES", "exit_code", "fail_with"]

EXIT_CODES: dict[type[BaseException], ExitCode] = {
    ConfigError: ExitCode.CONFIG_INVALID,
    BundleError: ExitCode.BUNDLE_INVALID,  # signatures, hashes, unsafe archives included
    CompressionError: ExitCode.USAGE,  # the model, data or metric given to `edgefleet compress`
    FileNotFoundError: ExitCode.NOT_FOUND,
    StoreUnavailable: ExitCode.UNREACHABLE,  # the PostgreSQL server of `[store] url`
}


def exit_code(exc: BaseException, *, otherwise: ExitCode = ExitCode.ERROR) -> ExitCode:
    """The code of the most specific class of ``exc`` in the table; ``otherwise`` for one the table names
    only by the root (a command that knows better, e.g. a start-up failure that is its config's)."""
    for cls in type(exc).__mro__:
        if cls is EdgefleetError:
            return otherwise
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return otherwise


def fail_with(exc: BaseException, *, prefix: str = "", otherwise: ExitCode = ExitCode.ERROR) -> NoReturn:
    """Print the error's reason to stderr and exit with its code."""
    reason = exc.reason if isinstance(exc, EdgefleetError) else str(exc)
    fail(prefix + reason, exit_code(exc, otherwise=otherwise))
