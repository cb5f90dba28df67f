"""How much an alert may ask for: a THRESHOLD alert's window and interval, and a check's
work (api/alerts.py refuses values beyond; analytics/alerts.py clamps alerts stored before
these limits and spends a check's work from a groupby.Budget)."""

from __future__ import annotations

from apppaccap.wire import AlertType

# A THRESHOLD check sums its whole window again. Its window is at most a week: usage
# accounting keeps per-minute rows that long by default (usage_minute_days; then hourly),
# and a sum over longer is a report (stats_group_by), not something to redo every few
# seconds. Its interval is at least 5 s: the newest seconds are not final anyway (a flow's
# bytes wait up to 10 s for their owner, usage/recorder.py PENDING_TICKS), so checking each
# second shows nothing sooner and only repeats the sum on the 2 threads alerts share. A
# check's work budget (analytics/groupby.py Budget) is half that of a stats_group_by answer
# (~625,000 usage rows, ~1.5-2.5 s) and stops within 4 s: one check never holds one of the
# 2 threads for a whole interval. A check over it is skipped, said in the log at most once
# an hour per alert. The other kinds read only what is new: every second is fine.
MAX_WINDOW = 7 * 86400  # seconds
MIN_THRESHOLD_INTERVAL = 5  # seconds
MAX_INTERVAL = 86400
CHECK_WORK, CHECK_SECONDS = 2_500_000, 4.0
SKIPPED_LOG_EVERY = 3600.0  # seconds between an alert's 'skipped' lines


def interval_of(row) -> int:
    """The alert's interval within the limits (one stored before them is clamped)."""
    low = MIN_THRESHOLD_INTERVAL if row["type"] == AlertType.THRESHOLD else 1
    return min(max(row["every"], low), MAX_INTERVAL)
