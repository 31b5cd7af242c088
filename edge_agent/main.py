"""Entry point shared by ``python -m edge_agent`` and ``edgectl agent run``.

Reads the config once, sets up logging, runs the agent until SIGTERM/SIGINT, then stops it
cleanly (an "offline" state is published, the MQTT session is closed, threads are joined).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edgectl.errors import EdgectlError


def run(config_path: Path, *, log_level: str = "INFO") -> int:
    from edge_agent.config import load_config
    from edge_agent.daemon import Agent

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(config_path)
    agent = Agent(cfg)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    agent.start()
    http = f", HTTP on {cfg.http.host}:{agent.http.port}" if agent.http is not None else ""
    logging.getLogger("edge_agent").info("agent %s running (data in %s%s)", cfg.device_id, cfg.data_dir, http)
    stop.wait()
    agent.stop()
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m edge_agent") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Run the edgectl device agent.")
    parser.add_argument("--config", "-c", type=Path, required=True, help="agent.toml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        return run(args.config, log_level=args.log_level)
    except EdgectlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
