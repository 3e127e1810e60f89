"""Numbered exit codes of the `edgefleet` command, each with the line `--help` shows for it."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["HELP", "ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    CONFIG_INVALID = 3
    BUNDLE_INVALID = 4
    NOT_FOUND = 5
    UNREACHABLE = 6
    UNAUTHORIZED = 7


HELP = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "an unexpected error (see the log)",
    ExitCode.USAGE: "wrong command-line usage",
    ExitCode.CONFIG_INVALID: "a config file is unreadable or invalid",
    ExitCode.BUNDLE_INVALID: "a bundle failed verification (signature, hashes, layout)",
    ExitCode.NOT_FOUND: "a named file, bundle or device does not exist",
    ExitCode.UNREACHABLE: "the coordinator or broker could not be reached",
    ExitCode.UNAUTHORIZED: "the API token is missing, unknown, revoked or lacks the role",
}
