"""Shared pytest configuration for imscore.

* ``IMSCORE_REQUIRE_ALL=1`` turns every skip into a failure, so CI cannot go
  green while a test quietly skipped because a binary, a package or the corpus
  was missing. Expected failures (xfail) are left alone.
* Hypothesis profiles: ``dev`` (default) and ``ci``, chosen with
  ``HYPOTHESIS_PROFILE``.
* ``CORPUS`` points at the shared test corpus (``../shared/corpus`` beside the
  repository, or ``IMSCORE_CORPUS``); the ``corpus`` fixture skips with a reason
  when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

# imscore's fixtures for plugin authors, used by imscore's own tests too
pytest_plugins = ["imscore.testing"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("IMSCORE_CORPUS") or REPO_ROOT.parent / "shared" / "corpus")

REQUIRE_ALL = os.environ.get("IMSCORE_REQUIRE_ALL") == "1"

settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
# opt-in long fuzzing: HYPOTHESIS_PROFILE=fuzz pytest tests/test_properties.py
settings.register_profile("fuzz", max_examples=20000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _skip_reason(longrepr: object) -> str:
    """Pull the human-readable reason out of a skipped report's longrepr."""
    # Skips are reported as a (path, lineno, "Skipped: reason") tuple.
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"IMSCORE_REQUIRE_ALL=1 forbids skipping; skip reason: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)


# Module-level skips (pytest.importorskip, pytest.skip(allow_module_level=True))
# happen at collection time and never reach pytest_runtest_makereport. Turning
# them into collection errors would interrupt the whole run, so they are
# recorded here and fail the session at the end instead.
_collection_skips: list[tuple[str, str]] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if REQUIRE_ALL and report.skipped:
        _collection_skips.append((report.nodeid, _skip_reason(report.longrepr)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _collection_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _collection_skips:
        return
    terminalreporter.section("IMSCORE_REQUIRE_ALL=1: modules skipped at collection", red=True)
    for nodeid, reason in _collection_skips:
        terminalreporter.line(f"FAILED {nodeid} - skip reason: {reason}", red=True)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared test corpus directory; skips the test when it is missing."""
    if not CORPUS.is_dir():
        pytest.skip(f"corpus missing: {CORPUS} (set IMSCORE_CORPUS to point elsewhere)")
    return CORPUS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "proxy_profile(profile): the Profile of the proxy tests' server")
