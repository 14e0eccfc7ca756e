"""Keeping the device's pre-keys on the relay: the first upload, top-ups, rotation.

New private keys are written to the store before their public halves are
uploaded, so the relay never hands out a key this device cannot use. The relay
hands out one-time keys oldest upload first; when the device holds as many
private one-time keys as it may (1000 of a kind), the oldest are dropped to
make room, since those are the ones most likely handed out and used already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from protocol.client.errors import RequestRefused
from protocol.client.messages import ClientOptions
from protocol.client.peers import Peers
from protocol.client.state import ClientState
from protocol.crypto import device_keys as crypto_keys
from protocol.frames import (
    MAX_KEYS_PER_UPLOAD,
    KeysUpload,
    KeysUploadOk,
    PqPreKey,
    PreKey,
    SignedPreKey,
)
from protocol.wire import WireConnection

__all__ = ["KeyKeeper"]

log = logging.getLogger("relay.client")


def _wire_signed(key: crypto_keys.SignedPreKeyPair) -> SignedPreKey:
    return SignedPreKey(id=key.id, key=key.public, signature=key.signature)


def _wire_pq(key: crypto_keys.PQPreKey) -> PqPreKey:
    return PqPreKey(id=key.id, key=key.public, signature=key.signature)


def _wire_prekey(key: crypto_keys.OneTimePreKey) -> PreKey:
    return PreKey(id=key.id, key=key.public)


class KeyKeeper:
    def __init__(self, state: ClientState, peers: Peers, options: ClientOptions) -> None:
        self.state = state
        self.peers = peers
        self.options = options
        self._lock = asyncio.Lock()

    async def upload_all(self, conn: WireConnection) -> KeysUploadOk:
        """Right after registering: the signed pre-key, the last-resort key, every one-time key.

        Returns the relay's last answer: the counts now stored.
        """
        async with self._lock:
            keys = self.peers.keys
            prekeys = [_wire_prekey(k) for k in keys.prekeys.values()]
            pq = [_wire_pq(k) for k in keys.pq_prekeys.values()]
            first = True
            answer: KeysUploadOk | None = None
            while first or prekeys or pq:
                batch_ec, prekeys = prekeys[:MAX_KEYS_PER_UPLOAD], prekeys[MAX_KEYS_PER_UPLOAD:]
                batch_pq, pq = pq[:MAX_KEYS_PER_UPLOAD], pq[MAX_KEYS_PER_UPLOAD:]
                answer = await self._upload(
                    conn,
                    signed=_wire_signed(keys.signed_prekey) if first else None,
                    last_resort=_wire_pq(keys.pq_last_resort) if first else None,
                    prekeys=batch_ec,
                    pq=batch_pq,
                )
                first = False
            assert answer is not None
            return answer

    async def top_up(
        self, conn: WireConnection, prekeys: int, pq_prekeys: int, *, rotate: bool, at_connect: bool
    ) -> None:
        """Rotate the signed pre-key if asked; add one-time keys of a kind that runs low.

        At connect (`rotate` is then the relay's flag) a kind is topped up below
        the low-water mark; after `keys.low` anything under the batch size is.
        """
        async with self._lock:
            keys = self.peers.keys
            target = min(self.options.prekey_batch, MAX_KEYS_PER_UPLOAD)
            signed = last_resort = None
            if rotate:
                signed = _wire_signed(keys.rotate_signed_prekey(int(time.time() * 1000)))
                # Sent again with it: repairs a first upload that never completed.
                last_resort = _wire_pq(keys.pq_last_resort)
            below = self.options.prekey_low_water if at_connect else target
            new_ec = self._make_ec(target - prekeys) if prekeys < below else []
            new_pq = self._make_pq(target - pq_prekeys) if pq_prekeys < below else []
            if signed is None and not new_ec and not new_pq:
                return
            self.state.save_keys(keys.to_bytes())
            await self._upload(
                conn,
                signed=signed,
                last_resort=last_resort,
                prekeys=[_wire_prekey(k) for k in new_ec],
                pq=[_wire_pq(k) for k in new_pq],
            )

    def _make_ec(self, count: int) -> list[crypto_keys.OneTimePreKey]:
        _make_room(self.peers.keys.prekeys, count)
        return self.peers.keys.new_prekeys(count)

    def _make_pq(self, count: int) -> list[crypto_keys.PQPreKey]:
        _make_room(self.peers.keys.pq_prekeys, count)
        return self.peers.keys.new_pq_prekeys(count)

    async def _upload(
        self,
        conn: WireConnection,
        *,
        signed: SignedPreKey | None,
        last_resort: PqPreKey | None,
        prekeys: list[PreKey],
        pq: list[PqPreKey],
    ) -> KeysUploadOk:
        try:
            ok = await conn.request(
                KeysUpload(
                    rid=conn.next_rid(),
                    signed_prekey=signed,
                    prekeys=tuple(prekeys) if prekeys else None,
                    pq_prekeys=tuple(pq) if pq else None,
                    pq_last_resort=last_resort,
                ),
                KeysUploadOk,
            )
        except RequestRefused as exc:
            log.warning("the relay refused a pre-key upload: %s", exc)
            raise
        log.debug("pre-keys on the relay: %d EC, %d PQ", ok.prekeys, ok.pq_prekeys)
        return ok


def _make_room(held: dict[int, Any], count: int) -> None:
    """Drop the oldest private one-time keys beyond the limit (they were handed out first)."""
    overflow = len(held) + count - crypto_keys.MAX_ONE_TIME_PREKEYS
    for key_id in list(held)[: max(0, overflow)]:
        del held[key_id]
