"""capture_export with a display filter: the search plan decides which packets are written.

An exact plan (everything answered by SQL) becomes export.write_capture's `where`; a plan
that tests bytes first collects the matching ids with the scanner, then exports those.
"""

from __future__ import annotations

import json

from apppaccap.ingest import export
from apppaccap.search.compiler import compile_plan
from apppaccap.search.scan import matching_ids
from apppaccap.search.scope import Scope
from apppaccap.search.scope import open_readonly


def filtered_export(db, capture_id: int, flt, target: str, progress=None) -> int:
    """Write the capture's packets that match `flt` to target; returns the packet count."""
    conn = open_readonly(db.path)
    try:
        scope = Scope(conn, capture_id, db.path)
        plan = compile_plan(flt, scope)
        if plan.exact:
            # write_capture selects with `WHERE id > ? {where}`: our columns are unqualified
            return export.write_capture(db, target, where=f"AND ({plan.where})",
                                        params=plan.params, progress=progress)
        flag = getattr(progress, "cancelled", None)  # jobs.Progress: set when cancelled
        ids = matching_ids(scope, plan, flag.is_set if flag is not None else None)
    finally:
        conn.close()
    return export.write_capture(db, target, where="AND id IN (SELECT value FROM json_each(?))",
                                params=(_json(ids),), progress=progress)


def _json(ids) -> str:
    return json.dumps(ids)
