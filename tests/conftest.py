"""Suite-wide fixtures and checks.

* An autouse fixture clears the variables that would let a test reach a real provider or change the
  gateway's configuration.
* The PostgreSQL check: a run in which a test marked ``postgres`` was skipped fails, and with
  ``--require-postgres`` (scripts/test.sh passes it for the whole suite, so CI does) a run in which no such
  test ran fails too. A green run therefore means the database tests ran on PostgreSQL as well as SQLite.
  ``TG_SKIP_POSTGRES=1`` (a developer's machine without PostgreSQL) turns the failure into a warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Variables that would let a test reach a real provider or change the gateway's configuration.
_CLEARED_PREFIXES = ("THRIFTGATE_",)
_CLEARED = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")

POSTGRES_MARKER = "postgres"
# Set to 1 on a machine without PostgreSQL: its tests are skipped, not failed (never set in CI).
SKIP_POSTGRES_ENV = "TG_SKIP_POSTGRES"


@pytest.fixture(autouse=True)
def _clear_provider_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name in _CLEARED or name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    yield


# ---- PostgreSQL tests must run ---------------------------------------------------------------------


def postgres_opted_out() -> bool:
    """Whether this run was told to skip the PostgreSQL tests (``TG_SKIP_POSTGRES=1``)."""
    return os.environ.get(SKIP_POSTGRES_ENV, "") not in ("", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-postgres",
        action="store_true",
        help="fail the run unless a test marked postgres ran (scripts/test.sh passes it for the whole suite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(
        PostgresCheck(require=config.getoption("--require-postgres"), opted_out=postgres_opted_out()),
        "thriftgate-postgres-check",
    )


class PostgresCheck:
    """A pytest plugin: tallies the tests marked ``postgres`` that ran and those that were skipped, and
    fails the session when any was skipped or, with ``require``, when none ran (a warning instead when
    ``opted_out``)."""

    def __init__(self, *, require: bool, opted_out: bool) -> None:
        self.require = require
        self.opted_out = opted_out
        self.ran: set[str] = set()
        self.skipped: dict[str, str] = {}  # node id -> reason

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if POSTGRES_MARKER not in report.keywords:
            return
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else "skipped"
            self.skipped[report.nodeid] = reason
        elif report.when == "call":
            self.ran.add(report.nodeid)

    def problems(self) -> list[str]:
        """Why this run does not count as one that tested PostgreSQL; empty when it does."""
        out: list[str] = []
        if self.skipped:
            nodeid, reason = next(iter(self.skipped.items()))
            out.append(f"{len(self.skipped)} PostgreSQL test(s) skipped, the first: {nodeid}: {reason}")
        if self.require and not self.ran:
            out.append("no PostgreSQL test ran, and --require-postgres was given")
        return out

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return  # interrupted, a usage error, nothing collected: pytest's own status says enough
        if self.problems() and not self.opted_out:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        problems = self.problems()
        if not problems:
            return
        if self.opted_out:
            terminalreporter.write_sep(
                "=", f"PostgreSQL not tested ({SKIP_POSTGRES_ENV} is set)", yellow=True
            )
        else:
            terminalreporter.write_sep("=", "FAILED: the PostgreSQL tests did not all run", red=True)
        for line in problems:
            terminalreporter.write_line(line, yellow=self.opted_out, red=not self.opted_out)
        if not self.opted_out:
            terminalreporter.write_line(
                f"Start PostgreSQL (scripts/test.sh does), or set {SKIP_POSTGRES_ENV}=1 on a machine without it."
            )
