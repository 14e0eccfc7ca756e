"""The kinds and details of the key-event audit trail, shared by both stores so that the
same actions leave the same rows in each (a contract test holds them to it).

A detail holds public key ids, counts and who fetched a bundle: what an operator needs to
follow a device's key-exchange lifecycle. Never key material (not even public keys), and
nothing about messages (senders, recipients, bodies, nonces).
"""

from __future__ import annotations

from typing import Final

from storage.key_rules import UploadPlan
from storage.records import OneTimeKey, Requester, SignedKey

REGISTER: Final = "register"  # create_user: device 1 and its identity key
ADD_DEVICE: Final = "add_device"  # a device linked to an existing user
REMOVE_DEVICE: Final = "remove_device"  # the device removed, its keys and messages deleted
IDENTITY_KEY_RETIRED: Final = "identity_key_retired"  # the removed device's key, for good
SIGNED_PREKEY_ROTATED: Final = "signed_prekey_rotated"  # a new signed pre-key
PREKEYS_UPLOADED: Final = "prekeys_uploaded"  # one-time / last-resort keys stored
PREKEY_CLAIMED: Final = "prekey_claimed"  # a bundle with a one-time EC key handed out
CLAIM_WITHOUT_PREKEY: Final = "claim_without_prekey"  # a bundle without one (none left)
BACKUP_PUT: Final = "backup_put"  # the user's key backup replaced (detail: version)
BACKUP_GET: Final = "backup_get"  # the backup read (detail: version, via)
BACKUP_DELETE: Final = "backup_delete"  # the backup deleted (detail: the version it had)

KINDS: Final = (
    REGISTER,
    ADD_DEVICE,
    REMOVE_DEVICE,
    IDENTITY_KEY_RETIRED,
    SIGNED_PREKEY_ROTATED,
    PREKEYS_UPLOADED,
    PREKEY_CLAIMED,
    CLAIM_WITHOUT_PREKEY,
    BACKUP_PUT,
    BACKUP_GET,
    BACKUP_DELETE,
)

# How a backup was read: by an active device (`backup.get`) or before any (`backup.recover`,
# recorded as device 0).
VIA_DEVICE: Final = "device"
VIA_RECOVERY: Final = "recovery"
RECOVERY_DEVICE: Final = 0

# Why a bundle came without a one-time EC key.
NONE_LEFT: Final = "none left"  # the device had none
WITHHELD: Final = "withheld"  # the target's one-time key budget was spent (none taken)

Detail = dict[str, object]


def upload_events(plan: UploadPlan) -> list[tuple[str, Detail]]:
    """The events of an upload about to be stored, in this order."""
    events: list[tuple[str, Detail]] = []
    if plan.signed_prekey is not None:
        events.append((SIGNED_PREKEY_ROTATED, {"key_id": plan.signed_prekey.id}))
    if plan.prekeys or plan.pq_prekeys or plan.pq_last_resort is not None:
        detail: Detail = {
            "prekeys": len(plan.prekeys),
            "pq_prekeys": len(plan.pq_prekeys),
            "prekey_ids": [k.id for k in plan.prekeys],
            "pq_prekey_ids": [k.id for k in plan.pq_prekeys],
        }
        if plan.pq_last_resort is not None:
            detail["pq_last_resort_id"] = plan.pq_last_resort.id
        events.append((PREKEYS_UPLOADED, detail))
    return events


def claim_event(
    signed: SignedKey,
    prekey: OneTimeKey | None,
    pq_prekey: SignedKey | None,
    *,
    one_time: bool,
    requester: Requester | None,
) -> tuple[str, Detail]:
    """The event of a bundle handed out. `pq_prekey` is the one-time PQ key taken, None when
    the last-resort key went instead. (The PostgreSQL claim builds the same detail in SQL.)"""
    detail: Detail = {
        "signed_prekey_id": signed.id,
        "pq_prekey_id": None if pq_prekey is None else pq_prekey.id,
        "pq_last_resort": pq_prekey is None,
        "requester_user": None if requester is None else requester.user,
        "requester_device": None if requester is None else requester.device,
    }
    if prekey is not None:
        return PREKEY_CLAIMED, {**detail, "prekey_id": prekey.id}
    return CLAIM_WITHOUT_PREKEY, {**detail, "reason": NONE_LEFT if one_time else WITHHELD}
