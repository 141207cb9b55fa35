"""Typed configuration: load YAML, apply overrides, validate (no side effects)."""

from rlinf.config.errors import ConfigError, ConfigIssue
from rlinf.config.loader import find_config, load_config
from rlinf.config.root import RLinfConfig

__all__ = ["ConfigError", "ConfigIssue", "RLinfConfig", "find_config", "load_config"]
