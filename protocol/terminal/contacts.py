"""Contacts: names for user ids, kept in the device's encrypted store (never a plain file).

A name is what a person types after `chat` and what incoming messages show
instead of a UUID. Names are bounded and printable so that they cannot break
the terminal or be confused with a user id.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from protocol.client import LocalStore, StoreError

__all__ = [
    "MAX_CONTACTS",
    "MAX_NAME_CHARS",
    "Contact",
    "ContactError",
    "Contacts",
    "parse_user_id",
    "valid_name",
]

RECORD = "relay-chat/contacts"
MAX_NAME_CHARS = 32
MAX_CONTACTS = 1000
_NAME = re.compile(r"[^\W][\w.'-]*")


class ContactError(ValueError):
    """A name or user id that cannot be used, or a name that is not a contact."""


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    user: str


def parse_user_id(text: str) -> str:
    """The canonical form of a user id (a UUID), or :class:`ContactError`."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ContactError(f"not a user id: {text[:64]!r} (a user id looks like a UUID)") from None


def valid_name(name: str) -> str:
    """Letters, digits and `.'-_`, starting with a letter or digit, at most 32 characters."""
    if not 1 <= len(name) <= MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise ContactError(
            f"not a contact name: {name[:64]!r} (1 to {MAX_NAME_CHARS} letters, digits or .'-_)"
        )
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    raise ContactError(f"a contact name cannot be a user id: {name!r}")


class Contacts:
    """The contact list of one store; every change is written through at once."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._by_name: dict[str, Contact] = {}
        raw = store.read(RECORD)
        if raw is None:
            return
        try:
            for name, user in json.loads(raw).items():
                self._by_name[name.casefold()] = Contact(valid_name(name), parse_user_id(user))
        except (ValueError, AttributeError) as exc:
            raise StoreError(f"the contacts record is damaged: {exc}") from exc

    def all(self) -> list[Contact]:
        return sorted(self._by_name.values(), key=lambda c: c.name.casefold())

    def find(self, name: str) -> Contact | None:
        """The contact of that name (case does not matter)."""
        return self._by_name.get(name.casefold())

    def name_of(self, user: str) -> str | None:
        for contact in self._by_name.values():
            if contact.user == user:
                return contact.name
        return None

    def add(self, name: str, user: str) -> Contact:
        """Add or replace the contact `name`; raises :class:`ContactError` for bad input."""
        contact = Contact(valid_name(name), parse_user_id(user))
        key = contact.name.casefold()
        if key not in self._by_name and len(self._by_name) >= MAX_CONTACTS:
            raise ContactError(f"at most {MAX_CONTACTS} contacts")
        self._by_name[key] = contact
        self._save()
        return contact

    def remove(self, name: str) -> Contact:
        contact = self._by_name.pop(name.casefold(), None)
        if contact is None:
            raise ContactError(f"no contact named {name[:64]!r}")
        self._save()
        return contact

    def resolve(self, text: str) -> Contact:
        """A contact by name, or an unnamed one from a user id; :class:`ContactError` otherwise."""
        found = self.find(text)
        if found is not None:
            return found
        try:
            user = parse_user_id(text)
        except ContactError:
            raise ContactError(
                f"no contact named {text[:64]!r}, and it is not a user id "
                "(`relay-chat contacts list` shows the contacts)"
            ) from None
        return Contact(self.name_of(user) or user, user)

    def _save(self) -> None:
        data = {c.name: c.user for c in self._by_name.values()}
        self._store.write(RECORD, json.dumps(data, ensure_ascii=False).encode())
