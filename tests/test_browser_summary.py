"""The end-of-run line when browser tests were skipped (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
HOOK = Path(__file__).with_name("conftest.py")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    browser: chromium\n"


def test_a_run_with_skipped_browser_tests_ends_with_one_clear_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(HOOK.read_text(encoding="utf-8"))
    pytester.makeini(INI)
    pytester.makepyfile(
        test_page="""
        import pytest

        @pytest.mark.browser
        @pytest.mark.skipif(True, reason="Debian chromium is not at /usr/bin/chromium")
        def test_page():
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, skipped=1)
    lines = [line for line in result.outlines if line.startswith("browser tests:")]
    assert lines == [
        "browser tests: 1 skipped (Debian chromium is not at /usr/bin/chromium); install "
        "Debian's Chromium to run them: sudo apt-get install chromium"
    ]


def test_no_line_when_nothing_was_skipped(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOK.read_text(encoding="utf-8"))
    pytester.makeini(INI)
    pytester.makepyfile(test_page="def test_other():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if line.startswith("browser tests:")]


def test_a_run_with_skipped_vm_twin_tests_ends_with_one_clear_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(HOOK.read_text(encoding="utf-8"))
    pytester.makeini(INI)
    twin = pytester.mkdir("tests").joinpath("vm_twin")
    twin.mkdir()
    twin.joinpath("test_boot.py").write_text(
        "import pytest\n\ndef test_boot():\n    pytest.skip('missing debootstrap')\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(skipped=1)
    lines = [line for line in result.outlines if line.startswith("VM twin tests:")]
    assert len(lines) == 1
    assert lines[0].startswith("VM twin tests: 1 skipped (missing debootstrap); they need root")
