"""Counts of a pytest run from its ``--junitxml`` report: passed, failed, errors, skipped (by
reason). ``.ci/run`` prints one line per pass at its end:

    python tests/junit_summary.py NAME=REPORT.xml[:EXIT] ...

A report that is missing or unreadable (pytest stopped before writing it) is said so, with
the pass's exit status when given. Stdlib only: it runs before anything is imported.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Counts:
    """Outcomes of one run's test cases (a collection error counts as an error)."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> tests

    def line(self) -> str:
        """``N passed, N failed, N errors, N skipped`` and one ``  - N: reason`` per reason."""
        head = (
            f"{self.passed} passed, {self.failed} failed, {self.errors} errors, "
            f"{sum(self.skipped.values())} skipped"
        )
        reasons = "".join(f"\n    - {n}: {why}" for why, n in sorted(self.skipped.items()))
        return head + reasons


def read_counts(report: Path) -> Counts:
    """The outcomes in a junit XML report of pytest.

    Raises:
        OSError: the report cannot be read.
        ET.ParseError: it is not XML.
    """
    counts = Counts()
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None:
            counts.failed += 1
        elif case.find("error") is not None:
            counts.errors += 1
        elif (skip := case.find("skipped")) is not None:
            if skip.get("type") == "pytest.xfail":
                counts.passed += 1  # an expected failure, as pytest counts xfailed
            else:
                counts.skipped[skip.get("message", "").removeprefix("Skipped: ")] += 1
        else:
            counts.passed += 1
    return counts


def summary(name: str, report: Path, status: str = "") -> str:
    """One pass's line: ``NAME (exit S): counts`` or why there are none."""
    exit_status = f" (exit {status})" if status else ""
    try:
        return f"{name}{exit_status}: {read_counts(report).line()}"
    except (OSError, ET.ParseError) as exc:
        return f"{name}{exit_status}: no test report ({exc})"


def main(args: list[str]) -> int:
    """Print the summary of each ``NAME=REPORT[:EXIT]`` argument; exit status 0."""
    for arg in args:
        name, _, rest = arg.partition("=")
        path, _, status = rest.partition(":")
        print(summary(name, Path(path), status))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
