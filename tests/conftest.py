"""Suite-wide hooks: one clear line at the end of a run whose browser or VM twin tests were
skipped."""

from __future__ import annotations

from typing import Any


def _reasons(reports: list[Any]) -> str:
    reasons = set()
    for report in reports:
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.add(str(longrepr[2]).removeprefix("Skipped: "))
    return "; ".join(sorted(reasons)) or "skipped"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """`make test` on a machine without Chromium (or without root and debootstrap for the
    VM twin) still passes; say what was not run."""
    all_skipped = terminalreporter.stats.get("skipped", [])
    skipped = [r for r in all_skipped if "browser" in r.keywords]
    if skipped:
        terminalreporter.write_line(
            f"browser tests: {len(skipped)} skipped ({_reasons(skipped)}); "
            "install Debian's Chromium to run them: sudo apt-get install chromium",
            yellow=True,
            bold=True,
        )
    twin = [r for r in all_skipped if "tests/vm_twin/" in r.nodeid]
    if twin:
        terminalreporter.write_line(
            f"VM twin tests: {len(twin)} skipped ({_reasons(twin)}); they need root, "
            "debootstrap and a Debian mirror: sudo apt-get install debootstrap, then run "
            "the tests as root (docs: VM twin)",
            yellow=True,
            bold=True,
        )
