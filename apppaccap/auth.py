"""Users (salted scrypt), tokens (random, idle timeout) and login throttling."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections import deque

from apppaccap.errors import Busy
from apppaccap.errors import InvalidCredentials
from apppaccap.errors import Malformed
from apppaccap.errors import NotFound
from apppaccap.errors import NoToken
from apppaccap.errors import SessionTimeout
from apppaccap.store import users as user_table

SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB of memory per check
MIN_PASSWORD = 10

# Logins, with every number a bound on what unauthenticated callers can spend:
LOGIN_POOL = 4                 # scrypt checks at once (4 x 16 MiB); the next one is BUSY
FAILURES_PER_SECOND = 5        # failed logins per second on the whole server
FIRST_DELAY, MAX_DELAY = 0.25, 8.0  # wait after a failure, doubling per consecutive one
FORGET_AFTER = 900.0           # seconds after its last failure a name/address starts afresh
MAX_TRACKED = 10000            # names and addresses remembered at most

# "whoever presents the token": the owner check of Sessions.valid/check is skipped (callers
# that have no socket, such as tests of the throttle)
ANY_OWNER = object()


def _bytes(text: str) -> bytes:
    # surrogatepass: a lone surrogate from a JSON body must not turn a wrong password (or
    # token) into a crash; such a string simply never matches.
    return text.encode("utf-8", "surrogatepass")


def hash_password(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(_bytes(password), salt=salt, n=n, r=r, p=p, maxmem=64 << 20,
                          dklen=32)


class Users:
    """User records in the catalog; managed from the CLI."""

    def __init__(self, catalog):
        self.catalog = catalog

    def add(self, name: str, password: str) -> None:
        if not name or len(name) > 64 or not name.isprintable():
            raise Malformed("name: must be 1-64 printable characters")
        if len(password) < MIN_PASSWORD:
            raise Malformed(f"password: must be at least {MIN_PASSWORD} characters")
        try:
            password.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed("password: not valid Unicode text") from None
        salt = secrets.token_bytes(16)
        digest = hash_password(password, salt, **SCRYPT)
        user_table.put(self.catalog, name, salt, digest, SCRYPT["n"], SCRYPT["r"],
                       SCRYPT["p"], time.time_ns())

    def remove(self, name: str) -> None:
        if not user_table.remove(self.catalog, name):
            raise NotFound(f"name: no user {name!r}")

    def names(self) -> list[str]:
        return user_table.names(self.catalog)

    def stamp(self, name: str) -> bytes | None:
        """What changes when the user's password is set again (its salted hash; None once
        the user is removed): a stream opened with Basic credentials compares it instead
        of checking a password it does not keep."""
        row = user_table.get(self.catalog, name)
        return bytes(row["hash"]) if row is not None else None

    def check(self, name: str, password: str) -> bool:
        try:
            row = user_table.get(self.catalog, name)
        except UnicodeEncodeError:
            row = None  # a name with a lone surrogate (JSON "\ud800") names nobody
        if row is None:
            # Spend the same time as a real check so names cannot be probed by timing.
            hash_password(password, b"0" * 16, **SCRYPT)
            return False
        digest = hash_password(password, row["salt"], row["n"], row["r"], row["p"])
        return hmac.compare_digest(digest, row["hash"])


class LoginThrottle:
    """Failed logins slow down their source address AND their user name, and all failures
    together are capped per second, so neither rotating addresses (127.x.y.z) nor rotating
    names buys more guesses. A throttled attempt is refused before any password is checked.

    A local caller is its account (the kernel names it; it cannot rotate that), and an
    account with no failed login of its own is not held back by the waits of a name that
    others failed: otherwise any local account could keep a user out for good with one
    wrong password every few seconds. Callers from other hosts, and accounts that failed
    themselves, wait for the name as well.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._state: OrderedDict[tuple, list] = OrderedDict()  # key → [failures, until, last]
        self._recent: deque[float] = deque()  # times of the failures in the last second
        self._checking: set[tuple] = set()  # names and addresses with a check running
        self._in_flight = 0
        self._lock = threading.Lock()
        self.delays: list[float] = []  # delays imposed so far (observable by tests)

    def admit(self, name: str, remote: str, named: bool = False) -> None:
        """Raise Busy when this attempt must wait; otherwise count it as in flight.
        `named`: `remote` is a local account the kernel named, not an address."""
        now = self.clock()
        keys = (("user", name), ("addr", remote))
        with self._lock:
            if named and self._clean(("addr", remote), now):
                keys = keys[1:]  # its own record is clean: others' failures do not count
            wait = max(self._until(key, now) for key in keys)
            if wait > 0:
                raise Busy(f"login: too many failed logins for this user or address; "
                           f"try again in {wait:.1f} s")
            if any(key in self._checking for key in keys):
                # One check at a time per name and per address, or a burst of parallel
                # guesses would all start before the first failure is counted.
                raise Busy("login: another login for this user or address is being "
                           "checked; try again in a moment")
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) + self._in_flight >= FAILURES_PER_SECOND:
                raise Busy("login: too many failed logins on this server just now; "
                           "try again in a second")
            self._checking.update(keys)
            self._in_flight += 1

    def cancel(self, name: str, remote: str) -> None:
        """An admitted attempt that checked no password."""
        with self._lock:
            self._checking.difference_update((("user", name), ("addr", remote)))
            self._in_flight -= 1

    def done(self, name: str, remote: str, ok: bool) -> None:
        now = self.clock()
        with self._lock:
            self._checking.difference_update((("user", name), ("addr", remote)))
            self._in_flight -= 1
            if ok:
                self._state.pop(("user", name), None)
                self._state.pop(("addr", remote), None)
                return
            self._recent.append(now)
            delay = max(self._fail(("user", name), now), self._fail(("addr", remote), now))
            self.delays.append(delay)
            self._prune(now)

    def _clean(self, key, now) -> bool:
        entry = self._state.get(key)
        return entry is None or now - entry[2] > FORGET_AFTER

    def _until(self, key, now) -> float:
        entry = self._state.get(key)
        return entry[1] - now if entry else 0.0

    def _fail(self, key, now) -> float:
        entry = self._state.pop(key, None) or [0, 0.0, 0.0]
        if now - entry[2] > FORGET_AFTER:
            entry[0] = 0
        entry[0] += 1
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** min(entry[0] - 1, 16))
        entry[1], entry[2] = now + delay, now
        self._state[key] = entry  # re-inserted: the OrderedDict stays oldest-first
        return delay

    def _prune(self, now) -> None:
        while self._state and (len(self._state) > MAX_TRACKED or
                               now - next(iter(self._state.values()))[2] > FORGET_AFTER):
            self._state.popitem(last=False)


class Logins:
    """Live tokens, in memory: a restart logs everybody out, which is the safe default.

    A token belongs to the caller that logged in: the local account the kernel named for
    the login's socket (callers.py), or None for a caller it could not name (another
    host). Only that owner may use it. A browser sends a cookie of 127.0.0.1 to every port
    of 127.0.0.1, and a token on a command line is readable by every account in /proc:
    either way another local account could learn a token, and must not be able to use it.
    """

    def __init__(self, users: Users, timeout_seconds, clock=time.monotonic):
        self.users = users
        self.timeout_seconds = timeout_seconds  # callable → current setting
        self.clock = clock
        self.throttle = LoginThrottle(clock=lambda: self.clock())
        self._pool = threading.BoundedSemaphore(LOGIN_POOL)
        self._tokens: dict[str, list] = {}  # token → [user, last_used, owner]
        self._lock = threading.Lock()

    def login(self, name: str, password: str, remote: str, owner=None) -> str:
        """A new token for `owner` (the caller's uid, None when unknown) after a check."""
        self.verify(name, password, remote, owner)
        with self._lock:
            token = secrets.token_urlsafe(32)
            self._tokens[token] = [name, self.clock(), owner]
        return token

    def verify(self, name: str, password: str, remote: str, owner=None) -> str:
        """Check a password as `login` does (same pool, same throttle and delays) without
        making a token: HTTP Basic authentication of one request. Returns the user."""
        self.throttle.admit(name, remote, named=owner is not None)
        if not self._pool.acquire(blocking=False):
            self.throttle.cancel(name, remote)
            raise Busy(f"login: {LOGIN_POOL} logins are being checked already; "
                       "try again in a moment")
        ok = None
        try:
            ok = self.users.check(name, password)
        finally:
            self._pool.release()
            if ok is None:
                self.throttle.cancel(name, remote)  # the check failed (catalog): no guess
            else:
                self.throttle.done(name, remote, ok)
        if not ok:
            raise InvalidCredentials("username/password: invalid credentials")
        return name

    def logout(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def _find(self, token: str, owner=ANY_OWNER) -> str | None:
        # Constant-time comparison against every live token: no early exit on a prefix.
        wanted, match = _bytes(token), None
        for known in list(self._tokens):
            if hmac.compare_digest(known.encode(), wanted):
                match = known
        if match is not None and owner is not ANY_OWNER and self._tokens[match][2] != owner:
            return None  # another account's token: as good as unknown
        return match

    def valid(self, token: str | None, owner=ANY_OWNER) -> bool:
        """Is this a live token of `owner`? Touches nothing (neither its timer nor an
        expired one)."""
        if not token:
            return False
        with self._lock:
            match = self._find(token, owner)
            return match is not None and \
                self.clock() - self._tokens[match][1] <= self.timeout_seconds()

    def check(self, token: str | None, owner=ANY_OWNER) -> str:
        """Return the user of a valid token of `owner`, refreshing its idle timer."""
        if not token:
            raise NoToken("token: required (call login first)")
        now = self.clock()
        with self._lock:
            match = self._find(token, owner)
            if match is None:
                raise NoToken("token: unknown token; log in again")
            user, last, _owner = self._tokens[match]
            if now - last > self.timeout_seconds():
                del self._tokens[match]
                raise SessionTimeout("token: session timed out; log in again")
            self._tokens[match][1] = now
            return user
