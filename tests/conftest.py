"""Suite-wide hooks: one clear line at the end of a run whose browser tests were skipped."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """`make test` on a machine without Chromium still passes; say what was not run."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "browser" in r.keywords]
    if not skipped:
        return
    reasons = set()
    for report in skipped:
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.add(str(longrepr[2]).removeprefix("Skipped: "))
    terminalreporter.write_line(
        f"browser tests: {len(skipped)} skipped ({'; '.join(sorted(reasons)) or 'skipped'}); "
        "install Debian's Chromium to run them: sudo apt-get install chromium",
        yellow=True,
        bold=True,
    )
