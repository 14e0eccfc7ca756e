"""Messages for readers that stopped reading, sent from a process of their own.

    python -m tests.e2e.slowload URL --seconds S --rate R (USER ... | --readers N)

Registers 4 sender devices and sends 1 KiB messages to the given users' device 1, round
robin, at R a second in all for S seconds, without waiting for each answer (an unread
delivery is answered only after the ack timeout). With `--readers N` the recipients are N
devices of its own that read and ack everything: the same load without slow readers.
Prints one JSON line: the ids the relay accepted per user, and how many sends it refused
(by error code).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import orjson

from .support import Device, new_user

BODY_BYTES = 1024
SENDERS = 4


async def load(url: str, users: list[str], readers: int, seconds: float, rate: float) -> dict:
    senders = [await new_user(url) for _ in range(SENDERS)]
    own = [await new_user(url, auto_ack=True) for _ in range(readers)]
    users = users + [str(dev.user) for dev in own]
    accepted: dict[str, list[str]] = {user: [] for user in users}
    refused: Counter[str] = Counter()

    async def send(sender: Device, user: str) -> None:
        answer = await sender.send_message(user, [1], body=b"\x07" * BODY_BYTES, timeout=60)
        if answer["t"] == "ok":
            accepted[user].append(answer["id"].hex())
        else:
            refused[answer["code"]] += 1

    tasks = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the load, not waiting for the relay
        tasks.append(asyncio.create_task(send(senders[i % SENDERS], users[i % len(users)])))
        i += 1
    await asyncio.gather(*tasks)
    for dev in senders + own:
        await dev.close()
    return {"accepted": accepted, "refused": dict(refused)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--readers", type=int, default=0)
    parser.add_argument("users", nargs="*")
    args = parser.parse_intermixed_args()
    if not args.users and not args.readers:
        parser.error("name the recipients, or --readers")
    result = asyncio.run(load(args.url, args.users, args.readers, args.seconds, args.rate))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
