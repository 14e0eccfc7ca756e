"""The registration budget of a client address: `--max-registrations-per-address` an hour.

Every `register` that would write a device (a new user, or a device linked to one) takes a
token from the address's bucket in the store's rate limiter, shared by every node. An IPv6
client is counted by its /64, the block one subscriber is normally given, so walking the
addresses of one's own network does not multiply the budget.
"""

from __future__ import annotations

import ipaddress

from protocol.errors import ErrorCode, Refused
from relay.services import Services

PERIOD_S = 3600.0
IPV6_PREFIX = 64


def budget_key(address: str) -> str:
    """The bucket of a client address: the address itself, an IPv6 one by its /64."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return f"register:{address}"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"register:{parsed.ipv4_mapped}"
        network = ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False)
        return f"register:{network}"
    return f"register:{parsed}"


async def take_registration(svc: Services, address: str) -> None:
    """One registration from `address`, or `rate_limited` with the time until the next."""
    limit = svc.settings.max_registrations_per_address
    if limit == 0:
        return
    decision = await svc.store.rate_limiter.hit(
        budget_key(address), rate_per_s=limit / PERIOD_S, burst=limit
    )
    if not decision.allowed:
        raise Refused(
            ErrorCode.RATE_LIMITED,
            "too many registrations from this address",
            retry_after_ms=decision.retry_after_ms,
        )
