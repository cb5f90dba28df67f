"""Who is calling: the local account behind a TCP connection, and whether it must log in.

The service runs as root and can execute programs, so "authentication off on loopback"
cannot mean "anyone on this host". For a connection from this host the kernel knows which
account owns the client's socket: NETLINK_SOCK_DIAG answers the exact 4-tuple with the
socket's uid (attribution/sockdiag.py, the same client the attribution uses). Root, the
server's own account and members of the group named by the setting `local_group` may call
without a token; every other account, and every caller whose account cannot be told, logs
in as if authentication were on.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket

from apppaccap.attribution.diagwire import TCP_LISTEN
from apppaccap.attribution.diagwire import TCP_TIME_WAIT
from apppaccap.attribution.sockdiag import SockDiag

log = logging.getLogger(__name__)

# The WSGI environ key the server's request handler fills (server.py); an int uid, or
# None when the kernel could not name the owner. Headers can never produce this key (they
# become HTTP_*), so a client cannot forge it.
PEER_UID = "apppaccap.peer_uid"

# Where a token travels besides an /ajax body: this header, this cookie (set at login).
# Never the URL: URLs end up in logs, history and Referer headers.
TOKEN_HEADER = "X-AppPacCap-Token"
TOKEN_COOKIE = "apppaccap_token"


class PeerLookup:
    """uid of the process owning the far end of an accepted TCP connection, or None."""

    def __init__(self):
        try:
            # Exact 4-tuples only: a listener or a wildcard socket that merely shares the
            # client's port must never be taken for the caller (is_local says "not ours").
            self._diag = SockDiag(is_local=lambda ip: False)
        except OSError as exc:
            log.warning("sock_diag unavailable (%s): every caller will have to log in", exc)
            self._diag = None

    def uid(self, conn: socket.socket) -> int | None:
        if self._diag is None:
            return None
        try:
            peer, local = conn.getpeername(), conn.getsockname()
        except (OSError, AttributeError):
            return None
        entry = self._diag.find(socket.IPPROTO_TCP, peer[0], peer[1], local[0], local[1])
        if entry is None or entry.local_port != peer[1] or entry.remote_port != local[1]:
            return None
        # inode 0 is a socket its process has already closed (orphaned, TIME_WAIT): the
        # kernel then reports uid 0 whoever created it, so it names nobody.
        if not entry.inode or entry.state in (TCP_LISTEN, TCP_TIME_WAIT):
            return None
        return entry.uid

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()


def in_group(uid: int, group: str) -> bool:
    """Is the account `uid` a member (primary or supplementary) of `group`?

    The account database is asked (getgrouplist, so NSS groups count too); the groups a
    process happens to hold are not visible through its socket.
    """
    if not group:
        return False
    try:
        gid = grp.getgrnam(group).gr_gid
        account = pwd.getpwuid(uid)
    except (KeyError, OverflowError):
        return False
    try:
        return gid in os.getgrouplist(account.pw_name, account.pw_gid)
    except OSError:
        return False


def login_required(config, local_group: str, uid: int | None) -> bool:
    """Must this caller present a token before it may run a non-public action?"""
    if config.auth:
        return True
    if getattr(config, "open_door", False):
        return False  # `--auth off` on a network address with --i-know-this-is-open
    if uid is None:
        return True
    if uid == 0 or uid == os.geteuid():
        return False  # root, or the account the server runs as: nothing to gain
    return not in_group(uid, local_group)


def describe(uid: int | None) -> str:
    """'uid 65534 (nobody)' for log lines and messages."""
    if uid is None:
        return "an unidentified caller"
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, OverflowError):
        return f"uid {uid}"
