"""`keys.upload`, `keys.fetch`, `keys.count`: pre-key bundles for X3DH/PQXDH session set-up."""

from __future__ import annotations

import asyncio

from protocol.errors import ErrorCode, Refused
from protocol.frames import (
    Bundle,
    KeysCount,
    KeysCountOk,
    KeysFetch,
    KeysFetchOk,
    KeysLow,
    KeysUpload,
    KeysUploadOk,
    PqPreKey,
    PreKey,
    SignedPreKey,
)
from protocol.signatures import KeyScheme, verify_signature
from relay.device_session import DeviceSession
from relay.services import Services
from storage.errors import KeyIdConflict, TooManyPreKeys
from storage.records import DeviceRecord, KeyCounts, KeyUpload, OneTimeKey, Requester, SignedKey

FETCH_TARGET_PERIOD_S = 600.0
PREKEYS_TARGET_PERIOD_S = 3600.0


async def upload(svc: Services, session: DeviceSession, frame: KeysUpload) -> None:
    """Every signature is checked before anything is stored; the upload is all or nothing."""
    device = await svc.store.devices.get_device(session.user, session.device)
    if device is None:
        raise Refused(ErrorCode.FORBIDDEN, "this device is not active")
    scheme = KeyScheme(device.key_scheme)
    signed: list[SignedPreKey | PqPreKey] = [
        *([frame.signed_prekey] if frame.signed_prekey else []),
        *(frame.pq_prekeys or ()),
        *([frame.pq_last_resort] if frame.pq_last_resort else []),
    ]
    for key in signed:
        if not verify_signature(scheme, device.identity_key, key.key, key.signature):
            raise Refused(ErrorCode.BAD_SIGNATURE, f"the signature of key {key.id} does not verify")
    batch = KeyUpload(
        signed_prekey=_signed(frame.signed_prekey),
        prekeys=tuple(OneTimeKey(id=k.id, key=k.key) for k in frame.prekeys or ()),
        pq_prekeys=tuple(SignedKey(k.id, k.key, k.signature) for k in frame.pq_prekeys or ()),
        pq_last_resort=_signed(frame.pq_last_resort),
    )
    try:
        counts = await svc.store.keys.upload(
            session.user,
            session.device,
            batch,
            now_ms=svc.clock.now_ms(),
            max_stored=svc.settings.max_stored_prekeys,
        )
    except KeyIdConflict as exc:
        raise Refused(ErrorCode.CONFLICT, "a key id is already stored with another key") from exc
    except TooManyPreKeys as exc:
        raise Refused(
            ErrorCode.TOO_LARGE,
            f"more than {svc.settings.max_stored_prekeys} one-time pre-keys of one kind",
        ) from exc
    session.out.write(
        KeysUploadOk(rid=frame.rid, prekeys=counts.prekeys, pq_prekeys=counts.pq_prekeys)
    )


async def fetch(svc: Services, session: DeviceSession, frame: KeysFetch) -> None:
    """Hand each one-time key out at most once; rate-limited against pre-key draining."""
    await _limit_fetches(svc, f"{session.user}:{session.device}", frame.user)
    devices = await _fetched_devices(svc, frame)
    # The hits of one fetch go out together (one Redis script call for all the devices).
    budgets = await asyncio.gather(*(_one_time_budget(svc, frame.user, d) for d in devices))
    bundles: list[Bundle] = []
    for device, one_time in zip(devices, budgets, strict=True):
        bundle = await _claim_bundle(
            svc,
            frame.user,
            device,
            one_time=one_time,
            requester=Requester(session.user, session.device),
        )
        if bundle is not None:
            bundles.append(bundle)
    session.out.write(KeysFetchOk(rid=frame.rid, user=frame.user, devices=tuple(bundles)))


async def _limit_fetches(svc: Services, requester: str, target: str) -> None:
    settings = svc.settings
    # The narrower (requester, target) bucket goes first, so a fetch it refuses does not use
    # up the requester's overall budget.
    for key, rate, burst in (
        (
            f"fetch:{requester}:{target}",
            settings.rate_fetch_per_target / FETCH_TARGET_PERIOD_S,
            settings.rate_fetch_per_target,
        ),
        (
            f"fetch:{requester}",
            settings.rate_fetch_per_minute / 60.0,
            settings.rate_fetch_per_minute,
        ),
    ):
        decision = await svc.store.rate_limiter.hit(key, rate_per_s=rate, burst=burst)
        if not decision.allowed:
            raise Refused(
                ErrorCode.RATE_LIMITED,
                "too many key fetches",
                retry_after_ms=decision.retry_after_ms,
            )


async def _one_time_budget(svc: Services, user: str, device: DeviceRecord) -> bool:
    """Whether the target device may hand out one-time keys in this bundle: at most
    `--rate-prekeys-per-target` an hour, whoever asks, so that many requesters together
    cannot drain them. Past it the bundle comes without (not an error)."""
    limit = svc.settings.rate_prekeys_per_target
    decision = await svc.store.rate_limiter.hit(
        f"prekeys:{user}:{device.device}", rate_per_s=limit / PREKEYS_TARGET_PERIOD_S, burst=limit
    )
    if not decision.allowed:
        svc.metrics.prekeys_withheld.inc()
    return decision.allowed


async def _fetched_devices(svc: Services, frame: KeysFetch) -> list[DeviceRecord]:
    """The target's active devices, or the one device the fetch names."""
    devices = await svc.store.devices.list_devices(frame.user)
    if devices is None:
        raise Refused(ErrorCode.UNKNOWN_USER, "no such user")
    if frame.device is not None:
        devices = [d for d in devices if d.device == frame.device]
        if not devices:
            raise Refused(ErrorCode.UNKNOWN_DEVICE, "no such active device")
    return devices


async def _claim_bundle(
    svc: Services, user: str, device: DeviceRecord, *, one_time: bool, requester: Requester
) -> Bundle | None:
    """One device's bundle (its one-time keys now gone), or None without a signed pre-key."""
    claimed = await svc.store.keys.claim(
        user,
        device.device,
        low_water=svc.settings.prekey_low_water,
        one_time=one_time,
        requester=requester,
    )
    if claimed.fell_below_low_water:
        svc.metrics.prekey_low_water.inc()
        svc.cluster.keys_low(
            user,
            device.device,
            KeysLow(prekeys=claimed.counts.prekeys, pq_prekeys=claimed.counts.pq_prekeys),
        )
    if claimed.signed_prekey is None:
        return None
    return Bundle(
        device=device.device,
        registration_id=device.registration_id,
        identity_key=device.identity_key,
        key_scheme=KeyScheme(device.key_scheme),
        signed_prekey=_signed_frame(claimed.signed_prekey),
        prekey=(
            None if claimed.prekey is None else PreKey(id=claimed.prekey.id, key=claimed.prekey.key)
        ),
        pq_prekey=(
            None
            if claimed.pq_prekey is None
            else PqPreKey(
                id=claimed.pq_prekey.id,
                key=claimed.pq_prekey.key,
                signature=claimed.pq_prekey.signature,
            )
        ),
    )


async def count(svc: Services, session: DeviceSession, frame: KeysCount) -> None:
    counts = await svc.store.keys.counts(session.user, session.device)
    session.out.write(
        KeysCountOk(
            rid=frame.rid,
            prekeys=counts.prekeys,
            pq_prekeys=counts.pq_prekeys,
            signed_prekey_age_s=signed_prekey_age_s(counts, svc.clock.now_ms()),
        )
    )


def signed_prekey_age_s(counts: KeyCounts, now_ms: int) -> int | None:
    uploaded = counts.signed_prekey_uploaded_ms
    return None if uploaded is None else max(0, (now_ms - uploaded) // 1000)


def _signed(key: SignedPreKey | PqPreKey | None) -> SignedKey | None:
    return None if key is None else SignedKey(id=key.id, key=key.key, signature=key.signature)


def _signed_frame(key: SignedKey) -> SignedPreKey:
    return SignedPreKey(id=key.id, key=key.key, signature=key.signature)
