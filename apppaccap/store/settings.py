"""The catalog's `settings` rows (name → text): the only writer.

apppaccap/settings.py knows what each setting means (its table of defaults); this module
only keeps the values users set.
"""

from __future__ import annotations

from apppaccap.store.database import tables


def get(catalog, key: str) -> str | None:
    row = catalog.one("SELECT value FROM settings WHERE key = ?", (key,))
    return None if row is None else row[0]


def all_values(catalog) -> dict:
    return {r[0]: r[1] for r in catalog.read("SELECT key, value FROM settings")}


def put(catalog, key: str, value: str) -> None:
    catalog.write(lambda c: tables(c)["settings"].upsert({"key": key, "value": value},
                                                         pk="key"))


def clear(catalog) -> None:
    catalog.execute("DELETE FROM settings")
