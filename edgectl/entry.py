"""The ``edgectl`` console script. ``edgectl agent run`` goes straight to the agent daemon without
loading typer, rich and pydantic (≈13 MB of RSS that an idle device agent would otherwise carry
for its whole life); everything else is the typer app in ``edgectl.cli``."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["agent", "run"] and not {"--help", "-h"} & set(argv):
        from edge_agent.main import main as agent_main

        sys.exit(agent_main(argv[2:], prog="edgectl agent run"))
    from edgectl.cli import main as cli_main

    cli_main()
