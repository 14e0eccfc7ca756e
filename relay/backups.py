"""`backup.put`, `backup.get`, `backup.delete` and, before the handshake, `backup.recover`:
one opaque key backup per user (docs/protocol.md, key backup). The relay never reads the
blob; it enforces compare-and-set on versions, the size limit (at decode), the per-user read
budget and the audit trail (the store records each put, read and delete)."""

from __future__ import annotations

import asyncio
from typing import Final

from protocol.errors import ErrorCode, Refused, RelayError
from protocol.frames import (
    BackupDelete,
    BackupGet,
    BackupOk,
    BackupPut,
    BackupPutOk,
    BackupRecover,
    EmptyOk,
)
from protocol.payloads import backup_recover_payload
from protocol.signatures import KeyScheme, verify_signature
from relay.device_session import DeviceSession
from relay.services import Services
from storage.audit_events import RECOVERY_DEVICE, VIA_DEVICE, VIA_RECOVERY
from storage.errors import BackupAccessKeyTaken, BackupVersionConflict, NoBackup, Unavailable
from storage.records import Backup, NewBackup

READ_PERIOD_S: Final = 86_400.0  # --rate-backup-reads counts reads a day


async def put(svc: Services, session: DeviceSession, frame: BackupPut) -> None:
    async with _counted(svc, "put"):
        await _check_active(svc, session)
        try:
            version = await svc.store.backups.put(
                session.user,
                session.device,
                NewBackup(blob=frame.blob, access_key=frame.access_key),
                expected_version=frame.version,
                now_ms=svc.clock.now_ms(),
            )
        except BackupAccessKeyTaken as exc:
            raise Refused(ErrorCode.CONFLICT, "this access key belongs to another backup") from exc
        except BackupVersionConflict as exc:
            raise _version_conflict(exc) from exc
        session.out.write(BackupPutOk(rid=frame.rid, version=version))


async def get(svc: Services, session: DeviceSession, frame: BackupGet) -> None:
    async with _counted(svc, "get"):
        await _check_active(svc, session)
        await _spend_read(svc, session.user)
        backup = await svc.store.backups.get(session.user)
        if backup is None:
            raise Refused(ErrorCode.NOT_FOUND, "this user has no backup")
        await svc.store.backups.record_read(
            session.user, session.device, backup.version, via=VIA_DEVICE, now_ms=svc.clock.now_ms()
        )
        session.out.write(_answer(frame.rid, backup))


async def delete(svc: Services, session: DeviceSession, frame: BackupDelete) -> None:
    async with _counted(svc, "delete"):
        await _check_active(svc, session)
        try:
            await svc.store.backups.delete(
                session.user,
                session.device,
                expected_version=frame.version,
                now_ms=svc.clock.now_ms(),
            )
        except NoBackup as exc:
            raise Refused(ErrorCode.NOT_FOUND, "this user has no backup") from exc
        except BackupVersionConflict as exc:
            raise _version_conflict(exc) from exc
        session.out.write(EmptyOk(rid=frame.rid))


async def recover(svc: Services, frame: BackupRecover, challenge: bytes) -> BackupOk:
    """The answer to a `backup.recover` before the handshake (its caller writes it, or the
    error, and closes with 1008 on an error)."""
    async with _counted(svc, "recover"):
        payload = backup_recover_payload(challenge, frame.access_key)
        if not verify_signature(KeyScheme.ED25519, frame.access_key, payload, frame.signature):
            raise Refused(ErrorCode.AUTH_FAILED, "the signature does not verify")
        backup = await svc.store.backups.find(frame.access_key)
        if backup is None:
            raise Refused(ErrorCode.NOT_FOUND, "no backup has this access key")
        await _spend_read(svc, backup.user)
        await svc.store.backups.record_read(
            backup.user,
            RECOVERY_DEVICE,
            backup.version,
            via=VIA_RECOVERY,
            now_ms=svc.clock.now_ms(),
        )
        return _answer(frame.rid, backup)


async def _check_active(svc: Services, session: DeviceSession) -> None:
    if await svc.store.devices.get_device(session.user, session.device) is None:
        raise Refused(ErrorCode.FORBIDDEN, "this device is not active")


async def _spend_read(svc: Services, user: str) -> None:
    limit = svc.settings.rate_backup_reads
    decision = await svc.store.rate_limiter.hit(
        f"backup-read:{user}", rate_per_s=limit / READ_PERIOD_S, burst=limit
    )
    if not decision.allowed:
        raise Refused(
            ErrorCode.RATE_LIMITED,
            f"more than {limit} backup reads a day",
            retry_after_ms=decision.retry_after_ms,
        )


def _version_conflict(exc: BackupVersionConflict) -> Refused:
    return Refused(
        ErrorCode.CONFLICT,
        f"the backup's current version is {exc.current}",
        version=exc.current,
    )


def _answer(rid: int, backup: Backup) -> BackupOk:
    return BackupOk(
        rid=rid,
        user=backup.user,
        version=backup.version,
        blob=backup.blob,
        updated=backup.updated_ms,
    )


class _counted:
    """Counts the request in `relay_backup_requests_total` by its outcome."""

    def __init__(self, svc: Services, operation: str) -> None:
        self._svc = svc
        self._operation = operation

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        if kind is None:
            outcome = "ok"
        elif isinstance(exc, RelayError):
            outcome = str(exc.code)
        elif isinstance(exc, Unavailable | TimeoutError | asyncio.CancelledError):
            outcome = str(ErrorCode.UNAVAILABLE)
        else:
            outcome = str(ErrorCode.INTERNAL)
        self._svc.metrics.backup_requests.labels(self._operation, outcome).inc()
