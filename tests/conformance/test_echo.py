"""The echo the Autobahn cases talk to is the relay's server: its options, its sub-protocol
choice, its frame limit; only the handler differs."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.conformance.run import echo_server

FLAGS = ("--max-frame-bytes", "2048", "--max-body-bytes", "1024")


@pytest.fixture(scope="module")
def echo_url(tmp_path_factory):
    with echo_server(FLAGS, tmp_path_factory.mktemp("echo") / "echo.log") as url:
        yield url


async def test_echoes_text_as_text_and_binary_as_binary(echo_url):
    async with connect(echo_url) as ws:
        assert ws.subprotocol is None  # what Autobahn offers: nothing, so msgpack's default
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
        await ws.send(["frag", "ments"])
        assert await ws.recv() == "fragments"


async def test_compression_offered_is_declined(echo_url):
    async with connect(echo_url, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send("a" * 1000)
        assert await ws.recv() == "a" * 1000


async def test_the_relay_frame_limit_applies(echo_url):
    async with connect(echo_url, max_size=None) as ws:
        await ws.send(b"\x00" * 2049)
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_the_relay_subprotocol_choice_applies(echo_url):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(echo_url, subprotocols=["chat.v9"]):
            pass
    assert refused.value.response.status_code == 400
    async with connect(echo_url, subprotocols=["relay.v1+json"]) as ws:
        assert ws.subprotocol == "relay.v1+json"
