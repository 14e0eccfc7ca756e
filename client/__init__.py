"""The device client SDK: an asyncio client that speaks the relay protocol and encrypts end to end."""
