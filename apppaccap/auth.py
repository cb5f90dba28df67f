"""Users (salted scrypt), tokens (random, idle timeout) and login throttling."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from apppaccap.api.envelope import InvalidCredentials
from apppaccap.api.envelope import Malformed
from apppaccap.api.envelope import NotFound
from apppaccap.api.envelope import NoToken
from apppaccap.api.envelope import SessionTimeout

SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 << 20, dklen=32)


class Users:
    """User records in the catalog; managed from the CLI."""

    def __init__(self, catalog):
        self.catalog = catalog

    def add(self, name: str, password: str) -> None:
        if not name or len(name) > 64 or not name.isprintable():
            raise Malformed("name: must be 1-64 printable characters")
        if len(password) < 4:
            raise Malformed("password: must be at least 4 characters")
        salt = secrets.token_bytes(16)
        digest = hash_password(password, salt, **SCRYPT)
        self.catalog.execute(
            "INSERT INTO users(name, salt, hash, n, r, p, created) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET salt=excluded.salt, hash=excluded.hash, "
            "n=excluded.n, r=excluded.r, p=excluded.p",
            (name, salt, digest, SCRYPT["n"], SCRYPT["r"], SCRYPT["p"], time.time_ns()))

    def remove(self, name: str) -> None:
        if not self.catalog.write(lambda c: c.execute("DELETE FROM users WHERE name = ?",
                                                      (name,)).rowcount):
            raise NotFound(f"name: no user {name!r}")

    def names(self) -> list[str]:
        return [r[0] for r in self.catalog.read("SELECT name FROM users ORDER BY name")]

    def check(self, name: str, password: str) -> bool:
        row = self.catalog.one("SELECT salt, hash, n, r, p FROM users WHERE name = ?", (name,))
        if row is None:
            # Spend the same time as a real check so names cannot be probed by timing.
            hash_password(password, b"0" * 16, **SCRYPT)
            return False
        digest = hash_password(password, row["salt"], row["n"], row["r"], row["p"])
        return hmac.compare_digest(digest, row["hash"])


class Sessions:
    """Live tokens, in memory: a restart logs everybody out, which is the safe default."""

    def __init__(self, users: Users, timeout_seconds, clock=time.monotonic, sleep=time.sleep):
        self.users = users
        self.timeout_seconds = timeout_seconds  # callable → current setting
        self.clock = clock
        self.sleep = sleep
        self.slept: list[float] = []  # delays imposed so far (observable by tests and logs)
        self._tokens: dict[str, list] = {}  # token → [user, last_used]
        self._failures: dict[str, int] = {}  # remote address → consecutive failures
        self._lock = threading.Lock()

    def login(self, name: str, password: str, remote: str) -> str:
        if not self.users.check(name, password):
            with self._lock:
                n = self._failures[remote] = self._failures.get(remote, 0) + 1
            # Growing delay: 0.25 s, 0.5 s, 1 s … capped at 8 s per attempt.
            delay = min(8.0, 0.25 * 2 ** (n - 1))
            self.slept.append(delay)
            self.sleep(delay)
            raise InvalidCredentials("username/password: invalid credentials")
        with self._lock:
            self._failures.pop(remote, None)
            token = secrets.token_urlsafe(32)
            self._tokens[token] = [name, self.clock()]
        return token

    def logout(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def check(self, token: str | None) -> str:
        """Return the user of a valid token, refreshing its idle timer."""
        if not token:
            raise NoToken("token: required (authentication is on; call login first)")
        now = self.clock()
        with self._lock:
            # Constant-time comparison against every live token: no early exit on a prefix.
            match = None
            for known in list(self._tokens):
                if hmac.compare_digest(known.encode(), token.encode()):
                    match = known
            if match is None:
                raise NoToken("token: unknown token; log in again")
            user, last = self._tokens[match]
            if now - last > self.timeout_seconds():
                del self._tokens[match]
                raise SessionTimeout("token: session timed out; log in again")
            self._tokens[match][1] = now
            return user
