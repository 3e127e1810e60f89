"""The `edgefleet` command's entry point.

`edgefleet agent run` goes straight to the daemon (agent.run) without importing the rest of the
CLI; every other command, and `--help`, goes through the typer app in edgefleet.cli.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:  # answered without importing the CLI (numpy, gRPC, ...)
        from importlib.metadata import version

        print(f"edgefleet {version('edgefleet')}")
        return
    if argv[:2] == ["agent", "run"] and not {"-h", "--help"} & set(argv[2:]):
        from edgefleet.agent.run import main as run_agent

        sys.exit(run_agent(argv[2:]))
    from edgefleet.cli.main import main as cli_main

    cli_main()
