"""Relay's wire protocol: typed frames, codec, signatures; Sans-I/O."""
