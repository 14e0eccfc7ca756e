"""The terminal side of `relay-chat`: contacts, the input line and status, one conversation.

`protocol/chat.py` is the command (arguments, set-up commands); this package is
what it shows and reads while chatting.
"""
