"""Config errors: every problem found in one pass, each with its dotted key path and a fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where it is, what is wrong, and what would be valid."""

    path: str
    message: str
    run_only: bool = False  # matters for a run, not for planning (e.g. a model path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """Raised once with every problem of a config, so the user fixes them all in one go."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        head = f"{len(self.issues)} problem(s) in config"
        if source:
            head += f" {source}"
        super().__init__(head + ":\n" + "\n".join(f"  - {i}" for i in self.issues))


class Issues(list):
    """A list of ConfigIssue with a small helper to add one."""

    def add(self, path: str, message: str, run_only: bool = False) -> None:
        self.append(ConfigIssue(path, message, run_only))
