"""The edge agent: the daemon on each device (see README.md in this folder for its pipeline)."""

__version__ = "0.1.0"
