"""The store's rules: one owner module per table, migrations that bring every catalog the
service ever made to the schema of a fresh one (store/migrations.py)."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from apppaccap.store.capturedb import CaptureDb
from apppaccap.store.capturedb import capture_path
from apppaccap.store.catalog import Catalog
from apppaccap.store.database import migrate
from apppaccap.store.migrations import CAPTURE
from apppaccap.store.migrations import CATALOG

PACKAGE = Path(__file__).resolve().parent.parent / "apppaccap"
DATA = Path(__file__).resolve().parent / "data"

# -- one owner per table --------------------------------------------------------------------

CATALOG_OWNERS = {
    "captures": "store/captures.py", "capture_processes": "store/captures.py",
    "processes": "store/processes.py", "threads": "store/processes.py",
    "ips": "store/ips.py",
    "stats_minute": "store/stats.py", "stats_key": "store/stats.py",
    "commands": "store/commands.py",
    "searches": "store/searches.py", "search_results": "store/searches.py",
    "triggers": "store/triggers.py", "actions": "store/triggers.py",
    "trigger_actions": "store/triggers.py",
    "extracted_files": "store/extracted.py",
    "users": "store/users.py", "settings": "store/settings.py",
    "usage_minute": "store/usage.py",
    "usage_hostname": "store/usage.py",
    "stats_reset": "store/stats.py", "alerts": "store/alerts.py", "alert_events": "store/alerts.py",
    "alert_known": "store/alerts.py",
    "sqlite_sequence": "store/migrations.py",  # ids never reused (migration 7)
}
CAPTURE_OWNERS = {
    "meta": "store/capturedb.py", "interfaces": "store/capturedb.py",
    "packets": "store/capturedb.py", "connections": "store/capturedb.py",
    "processes": "store/capturedb.py", "threads": "store/capturedb.py",
    "agg": "store/capturedb.py", "extract_streams": "store/capturedb.py",
    "agg_sec": "store/capturedb.py", "proc_sec": "store/capturedb.py",
    "span": "store/capturedb.py", "ip_names": "store/capturedb.py",
    "temp.packed": "store/capturedb.py",  # packed rows of the compiled scanner
    "blocks": "store/blocks.py",
    "ips": "store/ips.py",  # one set of statements for both databases
}
# Statements whose table is a placeholder ({}) and statements changing the schema.
DYNAMIC_OWNERS = {"store/migrations.py"}
SCHEMA_OWNERS = {"store/migrations.py", "store/capturedb.py"}  # capturedb: bulk-load index
# Statements sent to the fleet's ClickHouse, not to this service's SQLite: its tables are
# fleet/schema.py's alone (docs/FLEET.md)
CLICKHOUSE_OWNER = "fleet/schema.py"

WRITE = re.compile(r"\b(?:INSERT(?:\s+OR\s+[A-Z]+)?\s+INTO|REPLACE\s+INTO|DELETE\s+FROM)"
                   r"\s+((?:temp\.)?\w+|\{\}\w*)|\bUPDATE\s+(\w+|\{\}\w*)\s+SET\b")
SCHEMA = re.compile(r"\b(?:CREATE|DROP|ALTER)\s+(?:TEMP\s+|UNIQUE\s+)?(?:TABLE|INDEX)\b")


def _texts(tree):
    """Every string constant, f-strings with {} where their values go."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}"
                                       for v in node.values)


def sql_writes():
    """(module path under apppaccap/, line, table or None for a schema change)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        for line, text in _texts(ast.parse(path.read_text(), str(path))):
            for m in WRITE.finditer(text):
                yield module, line, m.group(1) or m.group(2)
            if SCHEMA.search(text):
                yield module, line, None


def test_every_table_write_is_in_its_owner_module():
    wrong = []
    for module, line, table in sql_writes():
        if module == CLICKHOUSE_OWNER:
            continue
        if table is None:
            allowed = SCHEMA_OWNERS
        elif table.startswith("{}"):
            allowed = DYNAMIC_OWNERS
        else:
            allowed = {CATALOG_OWNERS.get(table), CAPTURE_OWNERS.get(table)} - {None}
        if module not in allowed:
            wrong.append(f"apppaccap/{module}:{line} writes {table or 'the schema'} "
                         f"(owner: {', '.join(sorted(allowed)) or 'none declared'})")
    assert not wrong, "\n".join(wrong)


def test_the_scan_finds_writes():
    """The scan above is not vacuous: it sees the owners' statements."""
    found = {(module, table) for module, _line, table in sql_writes()}
    assert ("store/captures.py", "captures") in found
    assert ("store/settings.py", "settings") in found
    assert ("store/capturedb.py", "packets") in found
    assert ("store/migrations.py", None) in found


def test_every_table_has_an_owner(tmp_path):
    catalog = Catalog(str(tmp_path))
    capture = CaptureDb(str(tmp_path), 1)
    try:
        catalog_tables = {r[0] for r in catalog.read(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        capture_tables = {r[0] for r in capture.read(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        catalog.close()
        capture.close()
    assert catalog_tables == set(CATALOG_OWNERS)
    assert capture_tables | {"temp.packed"} == set(CAPTURE_OWNERS) | {"sqlite_sequence"}


# -- migrations -----------------------------------------------------------------------------

def structure(path) -> dict:
    """What a schema means, not how its CREATE statements were worded: per table its
    columns, keys, indexes, AUTOINCREMENT and rowid-ness."""
    db = sqlite_utils.Database(path)
    try:
        out = {"user_version": db.execute("PRAGMA user_version").fetchone()[0]}
        for name in db.table_names():
            if name.startswith("sqlite_"):
                continue
            table = db[name]
            indexes = db.execute(f"PRAGMA index_list('{name}')").fetchall()
            out[name] = {
                "columns": [(c.name, c.type, c.notnull, c.default_value, c.is_pk)
                            for c in table.columns],
                "indexes": sorted(
                    (origin, name_ if origin == "c" else "", bool(unique),
                     tuple(r[2] for r in db.execute(f"PRAGMA index_info('{name_}')")))
                    for _seq, name_, unique, origin, _partial in indexes),
                "autoincrement": "AUTOINCREMENT" in table.schema.upper(),
                "rowid": table.use_rowid,
            }
        return out
    finally:
        db.close()


def _load(path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.close()


def _fresh_catalog(tmp_path) -> dict:
    Catalog(str(tmp_path / "fresh")).close()
    return structure(tmp_path / "fresh" / "catalog.db")


PLACEHOLDERS = ["CREATE TABLE IF NOT EXISTS _slot4 (x)", "CREATE TABLE IF NOT EXISTS _slot5 (x)",
                "CREATE TABLE IF NOT EXISTS _slot6 (x)"]


def _old_catalog(data, era: str) -> None:
    """A catalog as an earlier version of the service left it."""
    path = data / "catalog.db"
    if era == "placeholders-v6":  # steps 4-6 as the placeholders they were at 76a2dea
        conn = sqlite3.connect(path, isolation_level=None)
        migrate(conn, CATALOG[:3] + PLACEHOLDERS)
        conn.close()
    else:
        _load(path, (DATA / f"catalog-{era}.sql").read_text())


@pytest.mark.parametrize("era", ["v7", "v7-placeholders", "placeholders-v6"])
def test_an_old_catalog_migrates_to_the_schema_of_a_fresh_one(tmp_path, era):
    data = tmp_path / "old"
    data.mkdir()
    _old_catalog(data, era)
    conn = sqlite3.connect(data / "catalog.db", isolation_level=None)
    conn.execute("INSERT INTO settings VALUES ('colour', 'blue')")
    conn.execute("INSERT INTO captures(id, type, state, start_time) VALUES (3, 1, 2, 0)")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "searches" in tables:
        conn.execute("INSERT INTO searches(id, filter, state, created) VALUES (5, '', 3, 0)")
    conn.close()

    catalog = Catalog(str(data))
    try:
        assert catalog.one("SELECT value FROM settings WHERE key = 'colour'")[0] == "blue"
        assert catalog.one("SELECT count(*) FROM captures")[0] == 1
        # ids are never reused, in the tables the service created at run time too
        high = 5 if "searches" in tables else 0
        first = catalog.execute("INSERT INTO searches(filter, state, created) VALUES ('', 1, 0)")
        assert first > high
        catalog.execute("DELETE FROM searches WHERE id = ?", (first,))
        assert catalog.execute("INSERT INTO searches(filter, state, created) "
                               "VALUES ('', 1, 0)") == first + 1
    finally:
        catalog.close()
    assert structure(data / "catalog.db") == _fresh_catalog(tmp_path)


def test_migrating_twice_changes_nothing(tmp_path):
    """The reconciling step is idempotent: run again on a migrated catalog, it is a no-op."""
    Catalog(str(tmp_path)).close()
    before = structure(tmp_path / "catalog.db")
    conn = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {len(CATALOG) - 1}")
    conn.close()
    Catalog(str(tmp_path)).close()
    assert structure(tmp_path / "catalog.db") == before


def test_an_old_capture_database_gains_the_columns_of_a_fresh_one(tmp_path):
    (tmp_path / "captures").mkdir()
    _load(capture_path(str(tmp_path), 1), (DATA / "capture-v1-d3702cd.sql").read_text())
    CaptureDb(str(tmp_path), 1).close()
    CaptureDb(str(tmp_path), 2).close()
    old = structure(capture_path(str(tmp_path), 1))
    fresh = structure(capture_path(str(tmp_path), 2))
    assert old["user_version"] == fresh["user_version"] == len(CAPTURE)
    assert old.keys() == fresh.keys()
    for table in fresh:
        if table in ("user_version", "packets"):
            continue
        assert {c[0] for c in old[table]["columns"]} == {c[0] for c in fresh[table]["columns"]}
    # the columns step 1 once had and lost stay (readers use a stored summary)
    assert {c[0] for c in old["packets"]["columns"]} - {c[0] for c in fresh["packets"][
        "columns"]} == {"eth_src", "eth_dst", "summary"}
    assert {c[0] for c in fresh["packets"]["columns"]} <= {c[0] for c in old["packets"][
        "columns"]}
