"""bench/report.py renders each result's provenance, wherever the script put it."""

from __future__ import annotations

import json

import pytest

# the repository root is on sys.path (python -m pytest)
report = pytest.importorskip("bench.report")


@pytest.mark.parametrize("nested", [True, False])
def test_provenance_lines_read_nested_and_top_level(nested):
    p = {"commit": "abc123", "dirty": True, "date": "2026-12-07", "cpu": "Some CPU",
         "threads": 2, "command": "python -m bench.x"}
    r = {"provenance": p, "rows": []} if nested else {**p, "rows": []}
    line = report.provenance_lines(r, "x.json")[0]
    assert "commit abc123 with uncommitted changes" in line
    assert "CPU Some CPU" in line and "threads 2" in line and "`python -m bench.x`" in line


def test_every_result_that_records_its_cpu_shows_it():
    for f in sorted(report.RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        if not isinstance(r, dict):
            continue
        cpu = (r.get("provenance") or {}).get("cpu") or r.get("cpu")
        if cpu:
            assert f"CPU {cpu}" in report.provenance_lines(r, f.name)[0], f.name
