"""What is wrong with a configuration: every problem, each with its key path and line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        key = f"{self.path}: " if self.path else ""
        return f"{where}: {key}{self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(p.format(source) for p in problems))
