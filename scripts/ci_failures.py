"""Print why each failed test failed, from the tiers' JUnit reports, as the last lines of a CI run.

CI keeps only the tail of its output, and a tier's own summary scrolls off under the next tier's
logs: this puts the failing assertion (its message and the last lines of its traceback) where a
reader of that tail sees it. Usage: ``python scripts/ci_failures.py REPORT.xml ...``.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TAIL_LINES = 20  # of each failure's traceback
LINE_CHARS = 300


def failures(report: Path) -> list[tuple[str, str, list[str]]]:
    """(test id, message, the traceback's last lines) of every failed or erroring test case."""
    found = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        for outcome in ("failure", "error"):
            for element in case.findall(outcome):
                test = f"{case.get('classname', '')}::{case.get('name', '')} ({outcome})"
                text = (element.text or "").rstrip().splitlines()
                found.append((test, element.get("message", ""), text[-TAIL_LINES:]))
    return found


def main(reports: list[str]) -> int:
    found = [(Path(r).stem, f) for r in reports if Path(r).is_file() for f in failures(Path(r))]
    if not found:
        return 0
    print(f"\n===== why the {len(found)} failed tests failed =====")
    for tier, (test, message, tail) in found:
        print(f"--- [{tier}] {test}\n{message[: LINE_CHARS * 2]}")
        for line in tail:
            print("  " + line[:LINE_CHARS])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
