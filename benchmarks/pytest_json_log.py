"""pytest plugin: one JSON line per test outcome, appended as each test finishes (so a run killed by a
timeout keeps what it finished). Path from NUWA_PYTEST_JSON.

    NUWA_PYTEST_JSON=out/pytest.jsonl python -m pytest -p pytest_json_log tests   # benchmarks/ on PYTHONPATH
"""
from __future__ import annotations

import json
import os


def pytest_runtest_logreport(report):
    path = os.environ.get("NUWA_PYTEST_JSON")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return                                    # setup/teardown lines only when they fail or skip
    row = dict(test=report.nodeid, when=report.when, outcome=report.outcome, seconds=round(report.duration, 3))
    if report.outcome != "passed":
        row["detail"] = str(report.longrepr)[-1500:]
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
