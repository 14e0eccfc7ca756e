"""The conformance run's report: tables per section, section 9's durations, the doc block."""

from __future__ import annotations

import pytest

from tests.conformance.run import (
    BEGIN_MARK,
    END_MARK,
    Pass,
    PassResult,
    RunError,
    not_passed,
    table,
    timings,
    write_doc,
)
from tests.conformance.verdicts import CaseResult


def result(*cases: tuple[str, str, int, str]) -> PassResult:
    return PassResult(
        Pass("defaults", (), ()),
        tuple(
            CaseResult(case_id, behavior, "OK" if behavior == "OK" else "FAILED", code, reason, 7)
            for case_id, behavior, code, reason in cases
        ),
        seconds=1.0,
    )


RESULT = result(
    ("1.1.1", "OK", 1000, ""),
    ("1.1.2", "OK", 1000, ""),
    ("9.1.1", "OK", 1000, ""),
    ("9.1.4", "FAILED", 1009, "frame with 4194304 bytes exceeds limit of 1048576 bytes"),
    ("10.1.1", "FAILED", 1011, ""),
)


def test_table_counts_each_section_and_orders_them_numerically():
    lines = table(RESULT)
    assert lines[2].startswith("| 1 framing | 2 | 2 |")
    assert lines[3].startswith("| 9 limits/performance | 2 | 1 |")
    assert lines[4].startswith("| 10 misc | 1 | 0 |") and lines[4].endswith("| 1 |")
    assert lines[-1].startswith("| **all** | **5** | **3** |")


def test_not_passed_names_the_cases_and_why():
    lines = not_passed(RESULT)
    assert any(line.startswith("- 1009 at a limit, 9.1.4: a message above") for line in lines)
    assert any(line.startswith("- failed: ours, 10.1.1: not explained") for line in lines)


def test_timings_show_section_9_durations_and_1009_for_a_limit():
    lines = timings(RESULT)
    assert lines[2].startswith("| 9.1.x | one text message") and lines[2].endswith("| 7, 1009 |")


def test_write_doc_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(f"before\n{BEGIN_MARK}\nold table\n{END_MARK}\nafter\n")
    write_doc(doc, ["new", "table"])
    assert doc.read_text() == f"before\n{BEGIN_MARK}\nnew\ntable\n{END_MARK}\nafter\n"


def test_write_doc_needs_the_markers(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("no markers\n")
    with pytest.raises(RunError):
        write_doc(doc, ["table"])
    assert doc.read_text() == "no markers\n"
