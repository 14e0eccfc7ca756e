"""The classification of Autobahn results: only an understood result is excused."""

from __future__ import annotations

import pytest

from tests.conformance.verdicts import CaseResult, Outcome, classify, explanation


def case(
    case_id: str,
    behavior: str = "OK",
    close: str = "OK",
    code: int | None = 1000,
    reason: str = "",
) -> CaseResult:
    return CaseResult(
        case_id=case_id,
        behavior=behavior,
        behavior_close=close,
        remote_close_code=code,
        remote_close_reason=reason,
        duration_ms=1,
    )


FRAME_LIMIT = "frame with 4194304 bytes exceeds limit of 1048576 bytes"
FRAME_LIMIT_AFTER = (
    "frame with 16384 bytes after reading 1048576 bytes exceeds limit of 1048576 bytes"
)


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (case("1.1.1"), Outcome.PASSED),
        (case("3.2", "NON-STRICT", code=1002), Outcome.NON_STRICT),
        (case("7.13.1", "INFORMATIONAL", "INFORMATIONAL", 1002), Outcome.INFORMATIONAL),
        (case("7.1.5", "FAILED", "WRONG CODE", 1002), Outcome.LIBRARY),
        (case("12.1.1", "UNIMPLEMENTED"), Outcome.DECLINED),
        (case("13.7.18", "UNIMPLEMENTED"), Outcome.DECLINED),
        (case("9.1.4", "FAILED", "FAILED", 1009, FRAME_LIMIT), Outcome.LIMIT),
        (case("9.3.5", "FAILED", "FAILED", 1009, FRAME_LIMIT_AFTER), Outcome.LIMIT),
        (case("9.3.1", "FAILED", "FAILED", 1009, "too many fragments"), Outcome.LIMIT),
    ],
)
def test_understood_results(result, outcome):
    assert classify(result) is outcome
    if outcome is not Outcome.PASSED:
        assert "not explained" not in explanation(result, outcome)


@pytest.mark.parametrize(
    "result",
    [
        case("1.1.1", "FAILED"),
        case("2.1", "OK", "UNCLEAN"),
        case("6.3.1", "OK", "WRONG CODE", 1002),
        # The library's 7.1.5 failure is excused only as it is known: 1002, nothing else.
        case("7.1.5", "FAILED", "WRONG CODE", 1011),
        case("7.1.5", "FAILED", "UNCLEAN", None),
        # Declining compression is a decision; a compression case that fails is not.
        case("12.1.1", "FAILED"),
        case("12.1.1", "UNIMPLEMENTED", "WRONG CODE", 1011),
        # 1009 is the limit at work only in section 9, and only for the limits' reasons.
        case("9.1.4", "FAILED", "FAILED", 1009, "something else"),
        case("9.1.4", "FAILED", "FAILED", 1011, FRAME_LIMIT),
        case("1.1.6", "FAILED", "FAILED", 1009, FRAME_LIMIT),
        case("14.1.1", "UNIMPLEMENTED"),
    ],
)
def test_anything_else_is_ours(result):
    assert classify(result) is Outcome.OURS
    assert explanation(result, Outcome.OURS) == "not explained: a defect to fix"
