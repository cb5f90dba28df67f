"""The subscriptions of a /ws socket (stream.py): what each sends at each interval.

Every feed only reads: the capture's database through its own readers (SQLite WAL; a
reader never blocks the capture's writer thread) and the usage recorder's ring, so a
feed, however slow its consumer, cannot slow a capture down.

* flows: the CONNECTION objects (exactly as capture_list_conns returns them) that are new
  or changed since the feed's last message. Each tick reads the connections that can have
  changed: ids above the highest seen, and those whose LastTime is within FLOW_SLACK_NS of
  the newest LastTime seen (packets reach the database at most a hold buffer and a write
  batch late, far less than the slack); every FULL_SECONDS, and after a gap, every row is
  compared, which also catches a Hostname learnt later. A closed connection is therefore
  sent again with its final counters, and after the capture ends one last full comparison
  is sent before the `end` message. A consumer keeping `ConnectionId → CONNECTION` from the
  messages alone holds what capture_list_conns answers.
  With a filter, a connection is in the feed once one of its packets written since the
  subscription matched the display filter (the search language); from then on each of its
  changes is sent. A feed follows at most MAX_TRACKED connections (BUSY beyond, decided
  before reading more than that many rows).
* packets: the PACKET objects of capture_stream written after `last_id` (default: from the
  subscription on), those matching the filter when one is given.
* capture: the CAPTURE object (capture_get_details) when it changed: header counters.
* usage: usage_now (api/usage.py; `seconds` 1..60, default 1, `group`) each interval.
* alerts: the ALERTEVENT objects (exactly as alert_events returns them) stored since the
  last message, read each interval from the catalog by id (indexed): by default from the
  subscription on, or after a given `last_id`; optionally one alert's only. A tick sends
  at most EVENT_PAGES_PER_TICK pages: a long history is replayed over several, one after
  the other (not an interval apart). Events that
  cannot be queued for a slow consumer are a gap (`dropped`); alert_events with last_id
  still has them.
"""

from __future__ import annotations

import json
import time

from apppaccap.api.alerts import alert_events
from apppaccap.api.captures import capture_object
from apppaccap.api.packets import CONN_SQL
from apppaccap.api.packets import PACKET_SQL
from apppaccap.api.packets import connection_object
from apppaccap.api.packets import packet_object
from apppaccap.api.search import checked_filter
from apppaccap.api.usage import usage_now
from apppaccap.errors import Busy
from apppaccap.errors import Malformed
from apppaccap.search.compiler import compile_plan
from apppaccap.search.scan import scan
from apppaccap.search.scope import Scope
from apppaccap.search.scope import open_readonly
from apppaccap.store.alerts import last_event_id
from apppaccap.wire import CaptureState

FLOW_SLACK_NS = 10 * 1_000_000_000
FULL_SECONDS = 10.0
# connections one flows feed remembers (about 100 bytes each); never more than one more
# than this is read from the table before a larger one is refused
MAX_TRACKED = 250_000
EXAMINE = 50_000              # packets a filtered packets feed tests per page
FLOWS_PER_MESSAGE = 1000
PACKETS_PER_MESSAGE = 500
EVENTS_PER_MESSAGE = 1000
PAGES_PER_TICK = 20          # packets: at most 10000 per tick before the next tick
# alerts: at most 3000 events a tick (a page of 1000 is ~300 KB of JSON and ~12 ms to read,
# so a tick fits the socket's 1 MiB queue and its 50 ms TICK); a longer history follows at
# the next ticks, in order
EVENT_PAGES_PER_TICK = 3
MAX_FILTER = 4096
INTERVAL_MS = {"flows": (100, 60000), "packets": (100, 60000), "capture": (250, 60000),
               "usage": (1000, 60000), "alerts": (100, 60000)}
KINDS = tuple(INTERVAL_MS)


def _int(msg: dict, key: str, lo: int, hi: int, default=None) -> int:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Malformed(f"{key}: an integer from {lo} to {hi}")
    return value


class Feed:
    """One subscription; `poll(ctx)` returns the messages that are due (dicts)."""

    kind = ""

    def __init__(self, sid: int, msg: dict):
        lo, hi = INTERVAL_MS[self.kind]
        self.sid = sid
        self.interval = _int(msg, "interval_ms", lo, hi, 1000) / 1000.0
        self.due = 0.0
        self.behind = False   # its last poll stopped at its bound: poll again at the next tick
        self.dropped = 0      # items not sent since the last message that was
        self.ended = False

    def message(self, **fields) -> dict:
        return {"type": self.kind, "subscription": self.sid, **fields}

    def lost(self, msg: dict) -> int:
        """A message could not be queued: how many items it held (the gap)."""
        return 1


class _CaptureFeed(Feed):
    def __init__(self, sid: int, msg: dict, ctx):
        super().__init__(sid, msg)
        self.capture_id = _int(msg, "capture_id", 1, 2**31 - 1)
        text = msg.get("filter") or ""
        if not isinstance(text, str) or len(text) > MAX_FILTER:
            raise Malformed(f"filter: a display filter of at most {MAX_FILTER} characters")
        self.filter = checked_filter(text)  # MALFORMED naming `filter`
        self.db = ctx.captures.db(self.capture_id)  # NOT_FOUND for an unknown capture

    def is_live(self, ctx) -> bool:
        """Is the capture still being written? Its database is opened again each tick: a
        live capture's own one closes when it stops, and its catalog row leaves ACTIVE only
        after the last write, so a final read then sees every packet."""
        active = ctx.captures.get(self.capture_id)["state"] == CaptureState.ACTIVE
        self.db = ctx.captures.db(self.capture_id)
        return active

    def max_packet(self) -> int:
        row = self.db.one("SELECT max(id) AS m FROM packets")
        return (row["m"] if row else 0) or 0

    def matching(self, after: int, upto: int) -> list[int]:
        """Ids of packets in (after, upto] that match the filter."""
        conn = open_readonly(self.db.path)
        try:
            scope = Scope(conn, self.capture_id, self.db.path)
            scope.min_id, scope.max_id = after + 1, min(upto, scope.max_id)
            plan = compile_plan(self.filter, scope)
            return [pid for _n, found in scan(scope, plan) for pid, _ts in found]
        finally:
            conn.close()


class FlowFeed(_CaptureFeed):
    kind = "flows"

    def __init__(self, sid: int, msg: dict, ctx):
        super().__init__(sid, msg, ctx)
        self.seen: dict[int, int] = {}   # ConnectionId → hash of the row last sent
        self.max_id = 0
        self.newest = 0
        self.full_at = 0.0               # monotonic time of the last full comparison
        self.full_every = FULL_SECONDS
        self.mark = self.max_packet()    # filter: packets up to here were examined
        self.selected: set[int] | None = set() if self.filter is not None else None

    def poll(self, ctx) -> list[dict]:
        live = self.is_live(ctx)
        if self.selected is not None:
            top = self.max_packet()
            ids = self.matching(self.mark, top)
            self.mark = top
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                rows = self.db.read("SELECT DISTINCT conn_id FROM packets WHERE id IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
                self.selected.update(r["conn_id"] for r in rows if r["conn_id"])
        full = not live or time.monotonic() - self.full_at >= self.full_every
        if full:
            self.full_at = time.monotonic()
        rows = self._rows(full)
        if full:  # a huge table: full comparisons at most ~10 % of the time
            self.full_every = max(FULL_SECONDS, 10 * (time.monotonic() - self.full_at))
        changed = []
        for r in rows:  # with a filter: only selected ones (_rows)
            h = hash(tuple(r))  # the row holds every field of its CONNECTION
            if self.seen.get(r["id"]) != h:
                self.seen[r["id"]] = h
                changed.append(connection_object(r, self.capture_id))
            self.max_id = max(self.max_id, r["id"])
            self.newest = max(self.newest, r["last_time"] or 0)
        if len(self.seen) > MAX_TRACKED:
            raise self._too_many()
        out = [self.message(CaptureId=self.capture_id, Connections=changed[i:i + FLOWS_PER_MESSAGE])
               for i in range(0, len(changed), FLOWS_PER_MESSAGE)]
        if not live:
            self.ended = True
            out.append({"type": "end", "subscription": self.sid,
                        "message": f"capture {self.capture_id} is not active"})
        return out

    def _rows(self, full: bool) -> list:
        """The connections to compare: all of them (full), or those that can have changed;
        with a filter only the selected ones. Never more than MAX_TRACKED + 1 rows: a table
        too large is refused on SQLite's count, before any row of it becomes a Python object
        (reading it whole first cost 3.2 s and 448 MB for 300k connections, at every
        subscribe)."""
        where, args = [], []
        if self.selected is not None:
            if len(self.selected) > MAX_TRACKED:
                raise self._too_many()
            where.append("c.id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(sorted(self.selected)))
        elif full:
            count = self.db.one("SELECT count(*) FROM (SELECT 1 FROM connections LIMIT ?)",
                                (MAX_TRACKED + 1,))[0]
            if count > MAX_TRACKED:
                raise self._too_many()
        if not full:
            where.append("(c.id > ? OR c.last_time >= ?)")
            args += [self.max_id, self.newest - FLOW_SLACK_NS]
        rows = self.db.read(CONN_SQL + (f"WHERE {' AND '.join(where)} " if where else "") +
                            "ORDER BY c.id LIMIT ?", (*args, MAX_TRACKED + 1))
        if len(rows) > MAX_TRACKED:  # written since the count, or many new ones at once
            raise self._too_many()
        return rows

    def _too_many(self) -> Busy:
        return Busy(f"subscribe: a flows feed follows at most {MAX_TRACKED} connections "
                    f"(capture {self.capture_id} has more); use a filter or capture_list_conns")

    def lost(self, msg: dict) -> int:
        conns = msg.get("Connections") or []
        for c in conns:  # send them again at the next (full) comparison
            self.seen.pop(c["ConnectionId"], None)
        self.full_at = 0.0
        return len(conns)


class PacketFeed(_CaptureFeed):
    kind = "packets"

    def __init__(self, sid: int, msg: dict, ctx):
        super().__init__(sid, msg, ctx)
        start = msg.get("last_id")
        self.last_id = self.max_packet() if start is None else _int(msg, "last_id", 0, 2**62)
        self.examined = 0  # filter: packets up to here were tested (a short page of matches)

    def poll(self, ctx) -> list[dict]:
        live = self.is_live(ctx)
        out = []
        for _ in range(PAGES_PER_TICK):
            rows = self._page()
            if not rows:
                break
            self.last_id = max(rows[-1]["id"], self.examined)
            reader = self.db.block_reader()
            try:
                blocks = {blk: reader.get(blk) for blk in {r["blk"] for r in rows}}
            finally:
                reader.close()
            out.append(self.message(CaptureId=self.capture_id, LastId=self.last_id,
                                    More=False, Packets=[packet_object(self.db, r,
                                                                       self.capture_id,
                                                                       False, blocks)
                                                         for r in rows]))
        if out:
            out[-1]["More"] = len(out) == PAGES_PER_TICK
            for m in out[:-1]:
                m["More"] = True
        if not live and not out and self.last_id >= self.max_packet():
            self.ended = True
            out.append({"type": "end", "subscription": self.sid,
                        "message": f"capture {self.capture_id} is not active"})
        return out

    def _page(self) -> list:
        if self.filter is None:
            return self.db.read(PACKET_SQL + "WHERE p.id > ? ORDER BY p.id LIMIT ?",
                                (self.last_id, PACKETS_PER_MESSAGE))
        top = self.max_packet()
        if self.last_id >= top:
            return []
        # one chunk of packets per page: a long backlog takes several ticks, none of
        # them long (the socket's thread also answers its client between ticks)
        hi = min(top, self.last_id + EXAMINE)
        ids = self.matching(self.last_id, hi)
        self.examined = hi if len(ids) <= PACKETS_PER_MESSAGE else 0
        ids = ids[:PACKETS_PER_MESSAGE]
        if ids:
            return self.db.read(PACKET_SQL + f"WHERE p.id IN ({','.join('?' * len(ids))}) "
                                "ORDER BY p.id", ids)
        self.last_id = hi
        return []

    def skip(self) -> int:
        """The consumer is behind: jump to the newest packet; how many were skipped."""
        top = self.max_packet()
        n = max(0, top - self.last_id)
        self.last_id = max(self.last_id, top)
        return n

    def lost(self, msg: dict) -> int:
        return len(msg.get("Packets") or [])


class CaptureFeed(_CaptureFeed):
    """The CAPTURE object (capture_get_details) each interval in which it changed: the
    counters of a capture header. After the capture ends: its last object, then `end`."""

    kind = "capture"

    def __init__(self, sid: int, msg: dict, ctx):
        if msg.get("filter"):
            raise Malformed("filter: capture subscriptions take no filter")
        super().__init__(sid, msg, ctx)
        self.last = None

    def poll(self, ctx) -> list[dict]:
        live = self.is_live(ctx)
        obj = capture_object(ctx, ctx.captures.get(self.capture_id))
        out = []
        if obj != self.last:
            self.last = obj
            out.append(self.message(Capture=obj))
        if not live:
            self.ended = True
            out.append({"type": "end", "subscription": self.sid,
                        "message": f"capture {self.capture_id} is not active"})
        return out

    def lost(self, msg: dict) -> int:
        self.last = None  # send it again next time
        return 1


class UsageFeed(Feed):
    """usage_now's answer each interval, with its `seconds` and `group` (the Network page
    asks what it would poll for)."""

    kind = "usage"

    def __init__(self, sid: int, msg: dict, ctx):
        super().__init__(sid, msg)
        self.seconds = _int(msg, "seconds", 1, 60, 1)
        self.group = msg.get("group", "path")
        if self.group not in ("path", "process"):
            raise Malformed("group: path or process")

    def poll(self, ctx) -> list[dict]:
        return [self.message(Usage=usage_now(ctx, seconds=self.seconds, group=self.group))]


class AlertFeed(Feed):
    kind = "alerts"

    def __init__(self, sid: int, msg: dict, ctx):
        super().__init__(sid, msg)
        if msg.get("filter"):
            raise Malformed("filter: alerts subscriptions take no filter (alert_id narrows)")
        self.alert_id = _int(msg, "alert_id", 0, 2**62, 0)
        if self.alert_id:
            alert_events(ctx, alert_id=self.alert_id, limit=1)  # NOT_FOUND for an unknown one
        start = msg.get("last_id")
        self.last_id = last_event_id(ctx.catalog) if start is None else \
            _int(msg, "last_id", 0, 2**62)

    def poll(self, ctx) -> list[dict]:
        out = []
        self.behind = False
        for _ in range(EVENT_PAGES_PER_TICK):  # a message per page; the rest next tick
            page = alert_events(ctx, alert_id=self.alert_id, last_id=self.last_id,
                                limit=EVENTS_PER_MESSAGE)
            if not page:
                break
            self.last_id = page[-1]["AlertEventId"]
            out.append(self.message(LastId=self.last_id, Events=page))
            if len(page) < EVENTS_PER_MESSAGE:
                break
        else:  # more wait: at the next tick (50 ms), not the next interval (up to a minute)
            self.behind = True
        return out

    def lost(self, msg: dict) -> int:
        return len(msg.get("Events") or [])


FEEDS = {"flows": FlowFeed, "packets": PacketFeed, "capture": CaptureFeed, "usage": UsageFeed,
         "alerts": AlertFeed}
