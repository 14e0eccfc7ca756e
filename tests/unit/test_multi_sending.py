"""`send.multi` without sockets: the frame's own checks and configured limits, and the
per-user outcome as the replay record keeps it."""

from __future__ import annotations

import pytest

from protocol.errors import FrameError, FrameTooLarge
from protocol.frames import MAX_MULTI_HEADER_BYTES, MultiDevice, MultiRecipient, SendMulti
from relay.multi_sending import decode_outcome, encode_outcome, fingerprint, multi_scope

A = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
B = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"
C = "11111111-2222-4333-8444-555555555555"


def _frame(
    to: dict[str, tuple[int, ...]],
    *,
    payload: bytes | None = None,
    body: bytes = b"h",
    online: bool = False,
) -> SendMulti:
    return SendMulti(
        rid=1,
        id=bytes(16),
        ts=0,
        nonce=bytes(24),
        payload=payload,
        online=online,
        to=tuple(
            MultiRecipient(
                user=user, devices=tuple(MultiDevice(device=d, type=3, body=body) for d in devs)
            )
            for user, devs in to.items()
        ),
    )


def _limits(frame: SendMulti, *, users: int = 100, devices: int = 1000, body: int = 64) -> None:
    frame.check_limits(max_users=users, max_devices=devices, max_body_bytes=body)


def test_frame_checks() -> None:
    with pytest.raises(FrameError, match="no user"):
        _frame({}).check()
    twice = _frame({A: (1,)})
    with pytest.raises(FrameError, match="user twice"):
        SendMulti(rid=1, id=bytes(16), ts=0, nonce=bytes(24), to=twice.to * 2).check()
    with pytest.raises(FrameError, match="device twice"):
        _frame({A: (1, 1)}).check()
    _frame({A: (1, 2), B: ()}).check()


def test_configured_limits_are_too_large() -> None:
    with pytest.raises(FrameTooLarge, match="users"):
        _limits(_frame({A: (1,), B: (1,), C: (1,)}), users=2)
    with pytest.raises(FrameTooLarge, match="device entries"):
        _limits(_frame({A: (1, 2), B: (1, 2)}), devices=3)
    with pytest.raises(FrameTooLarge, match="body limit"):
        _limits(_frame({A: (1,)}, body=b"x" * 65))
    with pytest.raises(FrameTooLarge, match="body limit"):  # header + payload
        _limits(_frame({A: (1,)}, body=b"x" * 10, payload=b"p" * 55))
    with pytest.raises(FrameTooLarge, match="header"):
        _limits(
            _frame({A: (1,)}, body=b"x" * (MAX_MULTI_HEADER_BYTES + 1), payload=b"p"),
            body=10 * MAX_MULTI_HEADER_BYTES,
        )
    _limits(_frame({A: (1,)}, body=b"x" * 10, payload=b"p" * 54))
    _limits(_frame({A: (1, 2), B: (1, 2)}), devices=4, users=2)


def test_outcome_round_trip() -> None:
    frame = _frame({A: (1, 2, 3), B: (127,), C: ()})
    outcome = encode_outcome(frame, [(A, 2), (B, 127)], [(A, 3), (A, 1)])
    users = decode_outcome(frame, outcome)
    assert users is not None
    assert [(u.user, u.delivered, u.stored) for u in users] == [
        (A, (2,), (1, 3)),
        (B, (127,), ()),
        (C, (), ()),
    ]
    assert outcome.delivered[0] == fingerprint(frame)
    assert all(isinstance(code, int) for code in (*outcome.delivered, *outcome.stored))


def test_outcome_of_another_frame_is_refused() -> None:
    frame = _frame({A: (1, 2), B: (1,)})
    outcome = encode_outcome(frame, [(A, 1), (A, 2), (B, 1)], [])
    assert decode_outcome(_frame({A: (1, 2)}), outcome) is None
    assert decode_outcome(_frame({B: (1,), A: (1, 2)}), outcome) is None
    assert decode_outcome(_frame({A: (1, 3), B: (1,)}), outcome) is None


def test_online_outcome_may_leave_devices_out() -> None:
    frame = _frame({A: (1, 2)}, online=True)
    users = decode_outcome(frame, encode_outcome(frame, [(A, 2)], []))
    assert users is not None and users[0].delivered == (2,) and users[0].stored == ()


def test_scope_is_per_sending_device_and_never_a_user() -> None:
    scope = multi_scope(A, 2)
    assert (scope.sender_user, scope.sender_device) == (A, 2)
    assert scope.recipient_user not in (A, B) and A in scope.recipient_user
    assert multi_scope(A, 3) != scope


def test_the_configured_limits_stay_under_the_wire_ceilings() -> None:
    from relay.config import ConfigError, Settings

    assert (Settings().max_multi_users, Settings().max_multi_devices) == (100, 1000)
    Settings(max_multi_users=1000, max_multi_devices=10_000)
    with pytest.raises(ConfigError, match="max_multi_users"):
        Settings(max_multi_users=1001)
    with pytest.raises(ConfigError, match="max_multi_devices"):
        Settings(max_multi_devices=10_001)
    with pytest.raises(ConfigError, match="max_multi_users"):
        Settings(max_multi_users=0)
