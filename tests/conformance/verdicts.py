"""What each Autobahn result means for the relay: passed, explained, or a defect of ours.

Autobahn grades a case twice, the messages (`behavior`) and the closing handshake
(`behaviorClose`). A case passes when both are acceptable. Every other result must be
explained here, as the library's (websockets), as a decision of the relay, or as the
relay's frame limit at work; anything left is ours to fix and fails the run.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass

SECTIONS: dict[str, str] = {
    "1": "framing",
    "2": "ping/pong",
    "3": "reserved bits",
    "4": "opcodes",
    "5": "fragmentation",
    "6": "UTF-8",
    "7": "close",
    "9": "limits/performance",
    "10": "misc",
    "12": "compression",
    "13": "compression parameters",
}

PASSING_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}
FRAME_TOO_BIG = 1009


class Outcome(enum.Enum):
    PASSED = "passed"
    NON_STRICT = "non-strict"
    INFORMATIONAL = "informational"
    DECLINED = "declined (decision)"
    LIMIT = "1009 at a limit"
    LIBRARY = "failed: library"
    OURS = "failed: ours"


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case as the Autobahn report (`index.json`) records it."""

    case_id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    remote_close_reason: str
    duration_ms: int

    @property
    def section(self) -> str:
        return self.case_id.split(".")[0]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Cases (ids or globs) whose result is understood, and only that result: the verdict on
    the messages and the close code the server sent."""

    cases: tuple[str, ...]
    behavior: str
    remote_close_code: int
    outcome: Outcome
    why: str

    def covers(self, case: CaseResult) -> bool:
        return (
            any(fnmatch.fnmatchcase(case.case_id, pattern) for pattern in self.cases)
            and case.behavior == self.behavior
            and case.remote_close_code == self.remote_close_code
        )


EXPLAINED = (
    Explanation(
        ("7.1.5",),
        "FAILED",
        1002,
        Outcome.LIBRARY,
        "a close frame between the fragments of a message: websockets fails the connection "
        "with 1002 (incomplete fragmented message) where the suite expects its 1000 echoed. "
        "RFC 6455 5.5.1 says an endpoint 'typically echos' the code, not that it must; "
        "websockets' own conformance notes list this case as a known, deliberate failure",
    ),
    Explanation(
        ("12.*", "13.*"),
        "UNIMPLEMENTED",
        1000,
        Outcome.DECLINED,
        "the relay does not negotiate permessage-deflate (serve(compression=None)): bodies are "
        "ciphertext, which does not compress, and an accepted extension would need a bound on "
        "the decompressed size. The suite offers the extension, the server declines it in the "
        "handshake, the messages go uncompressed, and the suite grades that UNIMPLEMENTED",
    ),
)

NON_STRICT_WHY = (
    "websockets notices the protocol error (reserved bit, unknown opcode, a continuation with "
    "nothing to continue, invalid UTF-8) and fails the connection before the echo of the "
    "message before it is written, or notices invalid UTF-8 in a fragment when the fragment "
    "has arrived rather than at its first bad byte; the close code is right, the suite grades "
    "the timing (websockets' conformance notes list the same cases)"
)

INFORMATIONAL_WHY = (
    "not graded: the RFC leaves the outcome open (7.1.6: a close right behind a 256 KiB "
    "message may overtake its echo; 7.13.x: close codes 5000 and 65535, refused with 1002)"
)

FRAME_LIMIT_WHY = (
    "a message above --max-frame-bytes (1 MiB by default) is refused with 1009, as the "
    "protocol requires; the second run raises the limit to the suite's largest message"
)

FRAGMENT_LIMIT_WHY = (
    "a message in more than 4096 fragments (4 MiB in fragments of 64 or 256 bytes) is refused "
    "with 1009 'too many fragments': websockets' cap on fragments per message "
    "(WEBSOCKETS_MAX_FRAGMENTS), which bounds the memory a message of tiny frames takes"
)
FRAGMENT_LIMIT_REASON = "too many fragments"
FRAME_LIMIT_REASON = re.compile(r"frame with \d+ bytes (after reading \d+ bytes )?exceeds limit")


def classify(case: CaseResult) -> Outcome:
    if case.behavior in PASSING_BEHAVIOR and case.behavior_close in PASSING_CLOSE:
        return {
            "OK": Outcome.PASSED,
            "NON-STRICT": Outcome.NON_STRICT,
            "INFORMATIONAL": Outcome.INFORMATIONAL,
        }[case.behavior]
    explained = next((e for e in EXPLAINED if e.covers(case)), None)
    if explained is not None:
        return explained.outcome
    if case.section == "9" and case.remote_close_code == FRAME_TOO_BIG and _at_a_limit(case):
        return Outcome.LIMIT
    return Outcome.OURS


def _at_a_limit(case: CaseResult) -> bool:
    reason = case.remote_close_reason
    return reason == FRAGMENT_LIMIT_REASON or FRAME_LIMIT_REASON.match(reason) is not None


def explanation(case: CaseResult, outcome: Outcome) -> str:
    if outcome is Outcome.NON_STRICT:
        return NON_STRICT_WHY
    if outcome is Outcome.INFORMATIONAL:
        return INFORMATIONAL_WHY
    if outcome is Outcome.LIMIT:
        if case.remote_close_reason == FRAGMENT_LIMIT_REASON:
            return FRAGMENT_LIMIT_WHY
        return FRAME_LIMIT_WHY
    for explained in EXPLAINED:
        if explained.covers(case):
            return explained.why
    return "not explained: a defect to fix"
