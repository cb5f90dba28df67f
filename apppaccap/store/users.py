"""The catalog's `users` rows (auth.py: Users): the only writer."""

from __future__ import annotations


def get(catalog, name: str):
    """(salt, hash, n, r, p) of a user, or None."""
    return catalog.one("SELECT salt, hash, n, r, p FROM users WHERE name = ?", (name,))


def names(catalog) -> list[str]:
    return [r[0] for r in catalog.read("SELECT name FROM users ORDER BY name")]


def put(catalog, name: str, salt: bytes, digest: bytes, n: int, r: int, p: int,
        created: int) -> None:
    """Add a user, or set a new password (the row keeps its creation time)."""
    catalog.execute(
        "INSERT INTO users(name, salt, hash, n, r, p, created) VALUES (?,?,?,?,?,?,?) "
        "ON CONFLICT(name) DO UPDATE SET salt=excluded.salt, hash=excluded.hash, "
        "n=excluded.n, r=excluded.r, p=excluded.p", (name, salt, digest, n, r, p, created))


def remove(catalog, name: str) -> bool:
    """False when there was no such user."""
    return bool(catalog.write(lambda c: c.execute("DELETE FROM users WHERE name = ?",
                                                  (name,)).rowcount))
