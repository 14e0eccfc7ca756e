"""Opens the presence and node bus of one production node on their own Redis client, so
their traffic (refreshes, publishes) never queues behind the replay guard's batches."""

from __future__ import annotations

from storage.interfaces import BackendObserver
from storage.redis_store.bus import RedisNodeBus
from storage.redis_store.client import RedisClient
from storage.redis_store.presence import RedisPresence

__all__ = ["open_redis_cluster"]


def open_redis_cluster(
    url: str,
    *,
    prefix: str,
    node_id: str,
    presence_ttl_s: float,
    timeout_s: float,
    observe: BackendObserver | None = None,
    cluster: bool = False,
) -> tuple[RedisPresence, RedisNodeBus]:
    """Connects lazily, like the store. Closing the presence closes the shared client, so
    close the bus first."""
    client = RedisClient(url, prefix=prefix, timeout_s=timeout_s, observe=observe, cluster=cluster)
    presence = RedisPresence(client, node_id=node_id, ttl_s=presence_ttl_s, owns_client=True)
    return presence, RedisNodeBus(client, url, node_id=node_id)
