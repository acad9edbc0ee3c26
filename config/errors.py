"""The root of every error Rosetta raises on purpose, and configuration errors."""

from __future__ import annotations


class RosettaError(Exception):
    """Root of all errors raised by Rosetta code (config, storage, destinations)."""


class ConfigError(RosettaError):
    """One or more settings are invalid.

    ``problems`` lists every bad variable at once, so an operator fixes them in one go.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} invalid settings:\n  " + "\n  ".join(self.problems)
        super().__init__(text)
