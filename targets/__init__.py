"""Target specs as data: one ``<name>.toml`` per device class (read by edgectl.targets)."""
