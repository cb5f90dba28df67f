/* Packed packet rows (capturedb.PLAIN_FORMAT, from the compiled ingest scanner) into a
 * capture database through SQLite's C API: the bulk writer process's packet hot path.
 *
 * Through Python's sqlite3 module the rows went through a temp table and an INSERT ...
 * SELECT joining their connection (binding 14 ints a row from Python, then the join):
 * ~2.5 s of the writer's ~4 s CPU for 1M packets of short flows. Here each row is bound
 * and stepped in C, its addresses taken from the batch's connection rows.
 *
 * The statements are capturedb.py's (it owns the packets table): `insert` with NPARAMS
 * positional parameters in the order of P_* below (id ts len caplen iface l3 proto src dst
 * sport dport tcp_flags ttl direction conn_id off blk), `lookup` (conn id -> local_ip,
 * remote_ip) for a connection the batch does not carry (as the LEFT JOIN did: none -> NULL
 * addresses).
 *
 * This is a second connection to the database of the writer process: the caller runs
 * it after committing the batch's own transaction (one writer at a time, never nested).
 * Errors come out as sqlite3.OperationalError with sqlite_errorcode set, as the sqlite3
 * module raises them (store/faults.py reads "disk full" from it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sqlite3.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#ifndef _WIN32
#include <dlfcn.h>
#include <errno.h>
#include <unistd.h>
#endif

#define ROW_SIZE 51  /* "<qqIIHBHHHBBqII" */

enum { P_ID, P_TS, P_LEN, P_CAPLEN, P_IFACE, P_L3, P_PROTO, P_SRC, P_DST, P_SPORT, P_DPORT,
       P_FLAGS, P_TTL, P_DIR, P_CONN, P_OFF, P_BLK, NPARAMS };

/* Statements run once per MANY_ROWS rows where there are that many (many_stmt): SQLite's
 * cost per run is paid once for all of them, ~15-20 % less CPU a row (docs/DECISIONS.md). */
#define MANY_ROWS 64
#define N_RUNS 6

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *ins, *look;
    sqlite3_stmt *many;   /* `ins` MANY_ROWS rows a run (kept in `runs`), or NULL */
    Py_ssize_t local_at, remote_at;  /* where a connection row holds its addresses */
    struct { char *sql; sqlite3_stmt *st; } runs[N_RUNS];   /* many_stmt's, by statement */
} RowWriter;

static PyObject *operational_error;  /* sqlite3.OperationalError */

static inline uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    int i;
    for (i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* `cls`(message) with sqlite_errorcode set as the sqlite3 module sets it (the extended
 * code: store/faults.py reads it) and sqlite_errorname SQLite's words for it */
static void raise_db_as(PyObject *cls, sqlite3 *db, int rc) {
    int code = db != NULL ? sqlite3_extended_errcode(db) : rc;
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    PyObject *exc = PyObject_CallFunction(cls, "s", msg), *v;
    if (exc == NULL) return;
    v = PyLong_FromLong(code);
    if (v != NULL) {
        PyObject_SetAttrString(exc, "sqlite_errorcode", v);
        Py_DECREF(v);
    }
    v = PyUnicode_FromString(sqlite3_errstr(code));
    if (v != NULL) {
        PyObject_SetAttrString(exc, "sqlite_errorname", v);
        Py_DECREF(v);
    }
    PyErr_Clear();
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
}

/* sqlite3.OperationalError(message) with sqlite_errorcode / sqlite_errorname set */
static void raise_db(sqlite3 *db, int rc) { raise_db_as(operational_error, db, rc); }

static void rw_close_db(RowWriter *w) {
    sqlite3_finalize(w->ins);
    sqlite3_finalize(w->look);
    w->ins = w->look = w->many = NULL;
    for (int i = 0; i < N_RUNS; i++) {
        sqlite3_finalize(w->runs[i].st);
        PyMem_Free(w->runs[i].sql);
        w->runs[i].st = NULL;
        w->runs[i].sql = NULL;
    }
    if (w->db != NULL) sqlite3_close(w->db);
    w->db = NULL;
}

static sqlite3_stmt *many_stmt(RowWriter *w, const char *sql);

static int rw_init(RowWriter *w, PyObject *args, PyObject *kw) {
    static char *names[] = {"path", "insert", "lookup", "local_at", "remote_at",
                            "max_variables", NULL};
    const char *path, *ins, *look;
    int rc, max_variables = 0;
    Py_ssize_t local_at, remote_at;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sssnn|i", names, &path, &ins, &look, &local_at,
                                     &remote_at, &max_variables))
        return -1;
    rw_close_db(w);
    w->local_at = local_at;
    w->remote_at = remote_at;
    Py_BEGIN_ALLOW_THREADS
    /* NOMUTEX: one thread uses it at a time (the writer process's); with the connection's
     * mutex each of a row's ~20 bind/step/reset calls locked and unlocked it (~17 % of
     * the time) */
    rc = sqlite3_open_v2(path, &w->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    Py_END_ALLOW_THREADS
    if (rc != SQLITE_OK) goto fail;
    sqlite3_busy_timeout(w->db, 30000);
    /* the tests' stand-in for an older SQLite (before 3.32: at most 999 parameters a
     * statement), which cannot take MANY_ROWS rows a statement: they go one by one */
    if (max_variables > 0) sqlite3_limit(w->db, SQLITE_LIMIT_VARIABLE_NUMBER, max_variables);
    /* as the writer process's own connection: a crash mid-ingest fails the ingest */
    rc = sqlite3_exec(w->db, "PRAGMA synchronous=OFF", NULL, NULL, NULL);
    /* A statement of many rows (or an upsert) keeps a statement journal, to undo that
     * statement alone: in a temp file past 64 KiB - ~0.9 GB written per 1M packets of
     * short flows, ~0.2 s of the writer's kernel time - unless temp files are in memory.
     * Each statement's journal is dropped when it ends: a few pages at most. */
    if (rc == SQLITE_OK) rc = sqlite3_exec(w->db, "PRAGMA temp_store=MEMORY", NULL, NULL, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(w->db, ins, -1, &w->ins, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(w->db, look, -1, &w->look, NULL);
    if (rc != SQLITE_OK) goto fail;
    if (sqlite3_bind_parameter_count(w->ins) != NPARAMS) {
        PyErr_Format(PyExc_ValueError, "RowWriter: the insert must take %d parameters", NPARAMS);
        rw_close_db(w);
        return -1;
    }
    w->many = many_stmt(w, ins);
    return 0;
fail:
    raise_db(w->db, rc);
    rw_close_db(w);
    return -1;
}

static void rw_dealloc(RowWriter *w) {
    rw_close_db(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* Bind a connection row's address (a str or None) as text, or NULL. */
static int bind_addr(sqlite3_stmt *st, int at, PyObject *v) {
    const char *s;
    Py_ssize_t n;
    if (v == NULL || v == Py_None) return sqlite3_bind_null(st, at);
    if (!PyUnicode_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "RowWriter: a connection address is not a str");
        return -1;
    }
    s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) return -1;
    return sqlite3_bind_text(st, at, s, (int)n, SQLITE_STATIC);  /* conns outlives the step */
}

/* The committed connection row's addresses, for a packet whose connection the batch does
 * not carry: binds them (NULL when there is no such row). */
static int bind_looked_up(RowWriter *w, sqlite3_stmt *st, long long cid, int src_at,
                          int dst_at, int out) {
    int rc;
    sqlite3_bind_int64(w->look, 1, cid);
    rc = sqlite3_step(w->look);
    if (rc == SQLITE_ROW) {
        int l = out ? 0 : 1, r = out ? 1 : 0;
        /* text copied by the bind (TRANSIENT): the lookup is reset below */
        if (sqlite3_column_type(w->look, l) == SQLITE_NULL)
            sqlite3_bind_null(st, src_at);
        else
            sqlite3_bind_text(st, src_at, (const char *)sqlite3_column_text(w->look, l),
                              sqlite3_column_bytes(w->look, l), SQLITE_TRANSIENT);
        if (sqlite3_column_type(w->look, r) == SQLITE_NULL)
            sqlite3_bind_null(st, dst_at);
        else
            sqlite3_bind_text(st, dst_at, (const char *)sqlite3_column_text(w->look, r),
                              sqlite3_column_bytes(w->look, r), SQLITE_TRANSIENT);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        sqlite3_bind_null(st, src_at);
        sqlite3_bind_null(st, dst_at);
        rc = SQLITE_OK;
    }
    sqlite3_reset(w->look);
    return rc;
}

/* Bind one Python value (int, float, str, bytes or None, as the sqlite3 module binds
 * them) as parameter `at`: 0, -1 (an exception set, or SQLite's error left on the
 * connection) */
static int bind_value(sqlite3_stmt *st, int at, PyObject *v) {
    if (v == Py_None) return sqlite3_bind_null(st, at) == SQLITE_OK ? 0 : -1;
    if (PyLong_Check(v)) {
        long long x = PyLong_AsLongLong(v);
        if (x == -1 && PyErr_Occurred()) return -1;   /* as sqlite3: OverflowError */
        return sqlite3_bind_int64(st, at, x) == SQLITE_OK ? 0 : -1;
    }
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) return -1;
        return sqlite3_bind_text(st, at, s, (int)n, SQLITE_STATIC) == SQLITE_OK ? 0 : -1;
    }
    if (PyFloat_Check(v))
        return sqlite3_bind_double(st, at, PyFloat_AS_DOUBLE(v)) == SQLITE_OK ? 0 : -1;
    if (PyBytes_Check(v))
        return sqlite3_bind_blob(st, at, PyBytes_AS_STRING(v), (int)PyBytes_GET_SIZE(v),
                                 SQLITE_STATIC) == SQLITE_OK ? 0 : -1;
    PyErr_SetString(PyExc_TypeError, "a row value must be int, float, str, bytes or None");
    return -1;
}

/* `sql`, an "INSERT ... VALUES (?,...,?) ..." whose VALUES group holds anonymous
 * parameters and number literals only (so the k-th "?" of row r is parameter r * group's
 * count + k), with that group repeated MANY_ROWS times, prepared (and kept: the same
 * statements come back every batch). NULL when `sql` has no such group, SQLite cannot
 * take the longer statement, or the cache is full: the caller runs `sql` row by row. */
/* the "?" between `open` and `close` (a VALUES group of many_stmt's: no "?NNN") */
static int group_params(const char *open, const char *close) {
    int n = 0;
    for (; open < close; open++) n += *open == '?';
    return n;
}

static sqlite3_stmt *many_stmt(RowWriter *w, const char *sql) {
    const char *open = strstr(sql, " VALUES ("), *close, *c;
    size_t pre, group, n, at;
    char *text;
    int i, slot = -1, r;
    for (i = 0; i < N_RUNS; i++) {
        if (w->runs[i].sql != NULL && strcmp(w->runs[i].sql, sql) == 0) return w->runs[i].st;
        if (w->runs[i].sql == NULL && slot < 0) slot = i;
    }
    if (open == NULL || slot < 0) return NULL;
    open += 8;   /* at "(" */
    for (c = open + 1; *c == ',' || *c == ' ' || (*c >= '0' && *c <= '9') ||
                       (*c == '?' && !(c[1] >= '0' && c[1] <= '9')); c++) {}
    if (*c != ')') return NULL;   /* not a plain group */
    close = c + 1;
    pre = (size_t)(open - sql);
    group = (size_t)(close - open);
    n = pre + (group + 1) * MANY_ROWS + strlen(close) + 1;
    if ((text = PyMem_Malloc(n)) == NULL) return NULL;
    memcpy(text, sql, pre);
    at = pre;
    for (r = 0; r < MANY_ROWS; r++) {
        if (r) text[at++] = ',';
        memcpy(text + at, open, group);
        at += group;
    }
    strcpy(text + at, close);
    /* one SQLite cannot take (too many parameters: see rw_init) is remembered as NULL,
     * and `sql` runs row by row; so is one with parameters outside its VALUES group (row
     * r's would not start at r * the group's count: the rows would be bound wrong) */
    if (sqlite3_prepare_v2(w->db, text, -1, &w->runs[slot].st, NULL) != SQLITE_OK ||
        sqlite3_bind_parameter_count(w->runs[slot].st) != MANY_ROWS * group_params(open, close)) {
        sqlite3_finalize(w->runs[slot].st);
        w->runs[slot].st = NULL;
    }
    PyMem_Free(text);
    if ((w->runs[slot].sql = PyMem_Malloc(strlen(sql) + 1)) == NULL) {
        sqlite3_finalize(w->runs[slot].st);
        w->runs[slot].st = NULL;
        return NULL;
    }
    strcpy(w->runs[slot].sql, sql);
    return w->runs[slot].st;
}

/* Run `sql` once per value of `rows` (a sequence each: its items the parameters), many
 * rows a statement where there are enough (many_stmt). */
static int insert_values(RowWriter *w, const char *sql, PyObject *rows, int *rc) {
    PyObject *k, *v;
    Py_ssize_t pos = 0, left = PyDict_GET_SIZE(rows);
    sqlite3_stmt *one = NULL, *many = NULL, *st;
    int n, r = 0, ret = -1;
    if ((*rc = sqlite3_prepare_v2(w->db, sql, -1, &one, NULL)) != SQLITE_OK) return -1;
    n = sqlite3_bind_parameter_count(one);
    if (left >= MANY_ROWS) many = many_stmt(w, sql);
    while (PyDict_Next(rows, &pos, &k, &v)) {
        Py_ssize_t i;
        /* whole runs of MANY_ROWS through `many`, the last rows one by one */
        st = many != NULL && (r > 0 || left >= MANY_ROWS) ? many : one;
        if (!(PyList_Check(v) || PyTuple_Check(v)) || PySequence_Fast_GET_SIZE(v) != n) {
            PyErr_SetString(PyExc_ValueError, "RowWriter: a row does not fit the statement");
            goto done;
        }
        for (i = 0; i < n; i++)
            if (bind_value(st, (st == many ? r * n : 0) + (int)i + 1,
                           PySequence_Fast_GET_ITEM(v, i)) < 0) {
                if (!PyErr_Occurred()) *rc = sqlite3_errcode(w->db);
                goto done;
            }
        if (st == many && ++r < MANY_ROWS) continue;   /* the run is not full yet */
        left -= st == many ? MANY_ROWS : 1;
        r = 0;
        *rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (*rc != SQLITE_DONE) goto done;
        *rc = SQLITE_OK;
    }
    ret = 0;
done:
    if (many != NULL) {
        sqlite3_reset(many);
        sqlite3_clear_bindings(many);   /* no pointer into `rows` kept past the call */
    }
    sqlite3_finalize(one);
    return ret;
}

/* Bind packed row `p` and block `blk` to `st` as the row whose first parameter is
 * `base` + 1, its addresses from its connection's row in `conns`, else the committed
 * row: 0, -1 with a Python exception set, or an SQLite error code. */
static int bind_row(RowWriter *w, sqlite3_stmt *st, int base, const unsigned char *p,
                    long long blk, PyObject *conns) {
    const int at = base + 1;   /* SQLite counts parameters from 1 */
    long long cid = (long long)le(p + 35, 8);
    int out = p[34] == 1;
    PyObject *key, *row;
    sqlite3_bind_int64(st, at + P_ID, (long long)le(p, 8));
    sqlite3_bind_int64(st, at + P_TS, (long long)le(p + 8, 8));
    sqlite3_bind_int64(st, at + P_LEN, (long long)le(p + 16, 4));
    sqlite3_bind_int64(st, at + P_CAPLEN, (long long)le(p + 20, 4));
    sqlite3_bind_int64(st, at + P_L3, (long long)le(p + 24, 2));
    sqlite3_bind_int64(st, at + P_PROTO, p[26]);
    sqlite3_bind_int64(st, at + P_SPORT, (long long)le(p + 27, 2));
    sqlite3_bind_int64(st, at + P_DPORT, (long long)le(p + 29, 2));
    sqlite3_bind_int64(st, at + P_FLAGS, (long long)le(p + 31, 2));
    sqlite3_bind_int64(st, at + P_TTL, p[33]);
    sqlite3_bind_int64(st, at + P_DIR, p[34]);
    sqlite3_bind_int64(st, at + P_CONN, cid);
    sqlite3_bind_int64(st, at + P_OFF, (long long)le(p + 43, 4));
    sqlite3_bind_int64(st, at + P_IFACE, (long long)le(p + 47, 4));
    sqlite3_bind_int64(st, at + P_BLK, blk);
    key = PyLong_FromLongLong(cid);
    if (key == NULL) return -1;
    row = PyDict_GetItemWithError(conns, key);
    Py_DECREF(key);
    if (row == NULL) {
        if (PyErr_Occurred()) return -1;
        return bind_looked_up(w, st, cid, at + P_SRC, at + P_DST, out);
    }
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) <= w->local_at ||
        PyTuple_GET_SIZE(row) <= w->remote_at) {
        PyErr_SetString(PyExc_TypeError, "RowWriter: conns values must be row tuples");
        return -1;
    }
    /* SQLITE_STATIC: the row's strings live in `conns` until the statement has run */
    if (bind_addr(st, at + P_SRC, out ? PyTuple_GET_ITEM(row, w->local_at)
                                     : PyTuple_GET_ITEM(row, w->remote_at)) < 0 ||
        bind_addr(st, at + P_DST, out ? PyTuple_GET_ITEM(row, w->remote_at)
                                     : PyTuple_GET_ITEM(row, w->local_at)) < 0)
        return -1;
    return 0;
}

PyDoc_STRVAR(rw_write_doc,
"write(plain, blk, conns[, conn_sql]) -> rows\n\n"
"Insert the packed rows of `plain` (capturedb.PLAIN_FORMAT) with block `blk` in one\n"
"transaction of this connection; `conns` maps a connection id to its row (the batch's\n"
"connections, addresses at local_at / remote_at), a packet's src/dst taken from it by\n"
"direction (1: out, local to remote). With `conn_sql` the connection rows are written\n"
"first in the same transaction (each row's items its parameters).");

static PyObject *rw_write(RowWriter *w, PyObject *args) {
    Py_buffer view;
    long long blk;
    PyObject *conns;
    Py_ssize_t n, i;
    const unsigned char *p;
    int rc = SQLITE_OK;
    sqlite3_stmt *st = w->ins;

    const char *conn_sql = NULL;
    if (!PyArg_ParseTuple(args, "y*LO!|z", &view, &blk, &PyDict_Type, &conns, &conn_sql))
        return NULL;
    if (w->db == NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "RowWriter: closed");
        return NULL;
    }
    if (view.len % ROW_SIZE) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "RowWriter: not a whole number of packed rows");
        return NULL;
    }
    n = view.len / ROW_SIZE;
    p = (const unsigned char *)view.buf;
    rc = sqlite3_exec(w->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto db_error;
    if (conn_sql != NULL) {   /* the batch's connections first: lookups see them */
        if (insert_values(w, conn_sql, conns, &rc) < 0) {
            if (PyErr_Occurred()) goto py_error;
            goto db_error;
        }
    }
    /* whole runs of MANY_ROWS rows a statement, the rest one by one */
    for (i = 0; w->many != NULL && i + MANY_ROWS <= n; i += MANY_ROWS) {
        int r;
        for (r = 0; r < MANY_ROWS; r++, p += ROW_SIZE)
            if ((rc = bind_row(w, w->many, r * NPARAMS, p, blk, conns)) != 0) goto bind_error;
        rc = sqlite3_step(w->many);
        sqlite3_reset(w->many);
        if (rc != SQLITE_DONE) goto db_error;
    }
    for (; i < n; i++, p += ROW_SIZE) {
        if ((rc = bind_row(w, st, 0, p, blk, conns)) != 0) goto bind_error;
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) goto db_error;
    }
    rc = sqlite3_exec(w->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto db_error;
    sqlite3_clear_bindings(st);
    if (w->many != NULL) sqlite3_clear_bindings(w->many);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);

bind_error:
    if (rc < 0) goto py_error;
db_error:
    raise_db(w->db, rc);
py_error:
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (w->many != NULL) {
        sqlite3_reset(w->many);
        sqlite3_clear_bindings(w->many);
    }
    if (!sqlite3_get_autocommit(w->db)) sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(rw_upsert_doc,
"upsert(sql, rows) -> count\n\n"
"Run `sql` once per item of the dict `rows` in one transaction of this connection, its\n"
"parameters the key tuple's items then the value's (a list or tuple): executemany(sql,\n"
"((*k, *v) for k, v in rows.items())) of the sqlite3 module, bound in C.");

static PyObject *rw_upsert(RowWriter *w, PyObject *args) {
    const char *sql;
    PyObject *rows, *k, *v;
    Py_ssize_t pos = 0, count = 0;
    sqlite3_stmt *st = NULL;
    int rc;
    if (!PyArg_ParseTuple(args, "sO!", &sql, &PyDict_Type, &rows)) return NULL;
    if (w->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "RowWriter: closed");
        return NULL;
    }
    rc = sqlite3_prepare_v2(w->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_exec(w->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto db_error;
    while (PyDict_Next(rows, &pos, &k, &v)) {
        Py_ssize_t i, nk, nv, at = 1;
        PyObject *seq;
        if (!PyTuple_Check(k) || !(PyList_Check(v) || PyTuple_Check(v))) {
            PyErr_SetString(PyExc_TypeError, "RowWriter.upsert: tuple keys, list values");
            goto py_error;
        }
        nk = PyTuple_GET_SIZE(k);
        seq = v;
        nv = PySequence_Fast_GET_SIZE(seq);
        if (nk + nv != sqlite3_bind_parameter_count(st)) {
            PyErr_SetString(PyExc_ValueError, "RowWriter.upsert: wrong number of values");
            goto py_error;
        }
        for (i = 0; i < nk; i++, at++)
            if (bind_value(st, (int)at, PyTuple_GET_ITEM(k, i)) < 0) goto bind_error;
        for (i = 0; i < nv; i++, at++)
            if (bind_value(st, (int)at, PySequence_Fast_GET_ITEM(seq, i)) < 0) goto bind_error;
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) goto db_error;
        count++;
    }
    rc = sqlite3_exec(w->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto db_error;
    sqlite3_finalize(st);
    return PyLong_FromSsize_t(count);

bind_error:
    if (!PyErr_Occurred()) {
        rc = sqlite3_errcode(w->db);
        goto db_error;
    }
    goto py_error;
db_error:
    raise_db(w->db, rc);
py_error:
    sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(w->db)) sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
    return NULL;
}

static PyObject *rw_close(RowWriter *w, PyObject *unused) {
    (void)unused;
    rw_close_db(w);
    Py_RETURN_NONE;
}

static PyMethodDef rw_methods[] = {
    {"write", (PyCFunction)rw_write, METH_VARARGS, rw_write_doc},
    {"upsert", (PyCFunction)rw_upsert, METH_VARARGS, rw_upsert_doc},
    {"close", (PyCFunction)rw_close, METH_NOARGS, "Close the connection."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RowWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apppaccap.store._packedrows.RowWriter",
    .tp_basicsize = sizeof(RowWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RowWriter(path, insert, lookup, local_at, remote_at): packed packet rows "
              "into a capture database, through its own SQLite connection.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rw_init,
    .tp_dealloc = (destructor)rw_dealloc,
    .tp_methods = rw_methods,
};

/* FlowTotals: a bulk load's statistics from flow counters, summed in C (store/flowagg.py
 * Totals.add_flows / take_settled / take is the Python twin, tests/test_packedrows.py holds
 * them equal). Summing them in Python dicts cost the writer process ~0.7 s per 1M
 * packets of short flows. A batch's packed flows (flowagg.pack_flows) with its connection
 * rows give per-IP totals and (kind, key, proto) rows by second; seconds the file is done
 * with are rolled into minutes and written (write_settled), the rest at the end
 * (write_all). Rows are written sorted by their table's key (kind, key, time, proto):
 * B-tree appends, ~3x cheaper than the dict's order. The statements are capturedb.py's. */

typedef struct {
    int64_t t;          /* second or minute */
    uint32_t kid;       /* kind << 30 | key id (an IP's index, a port); EMPTY: a free slot */
    int32_t proto;
    int64_t p, b;
} Row;
#define EMPTY 0xFFFFFFFFu
#define KID(kind, id) ((uint32_t)(kind) << 30 | (uint32_t)(id))
#define K_ALL 0
#define K_IP 1
#define K_PORT 2

typedef struct {
    Row *slot;
    size_t cap, len;   /* cap: a power of two, len <= cap / 2 */
} Table;

typedef struct {
    int64_t p, b, first, last;
} IpTotal;

typedef struct {
    PyObject_HEAD
    Table secs, mins;
    PyObject *ip_index;   /* str -> its index */
    PyObject *ip_names;   /* index -> str (keeps the UTF-8 below alive) */
    const char **ip_utf8;
    Py_ssize_t *ip_len;
    IpTotal *ip_tot;      /* by index: indexes are given in first-seen order */
    size_t ip_cap;
    int have_newest;
    int64_t newest;
} FlowTotals;

static inline size_t row_hash(int64_t t, uint32_t kid, int32_t proto) {
    uint64_t h = (uint64_t)t * 0x9E3779B97F4A7C15ull ^ ((uint64_t)kid << 8 | (uint8_t)proto);
    h ^= (uint64_t)(uint32_t)proto << 40;
    h *= 0xBF58476D1CE4E5B9ull;
    return (size_t)(h ^ h >> 31);
}

static int tab_init(Table *tab, size_t cap) {
    size_t i;
    tab->slot = PyMem_Malloc(cap * sizeof(Row));
    if (tab->slot == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < cap; i++) tab->slot[i].kid = EMPTY;
    tab->cap = cap;
    tab->len = 0;
    return 0;
}

static void tab_free(Table *tab) {
    PyMem_Free(tab->slot);
    tab->slot = NULL;
    tab->cap = tab->len = 0;
}

static Row *tab_find(Table *tab, int64_t t, uint32_t kid, int32_t proto) {
    size_t mask = tab->cap - 1, i = row_hash(t, kid, proto) & mask;
    for (;; i = (i + 1) & mask) {
        Row *r = &tab->slot[i];
        if (r->kid == EMPTY || (r->t == t && r->kid == kid && r->proto == proto)) return r;
    }
}

static int tab_add(Table *tab, int64_t t, uint32_t kid, int32_t proto, int64_t p, int64_t b) {
    Row *r;
    if (tab->slot == NULL && tab_init(tab, 1024) < 0) return -1;
    r = tab_find(tab, t, kid, proto);
    if (r->kid != EMPTY) {
        r->p += p;
        r->b += b;
        return 0;
    }
    r->t = t;
    r->kid = kid;
    r->proto = proto;
    r->p = p;
    r->b = b;
    if (++tab->len * 2 > tab->cap) {   /* grow: rehash into twice the slots */
        Table big;
        size_t i;
        if (tab_init(&big, tab->cap * 2) < 0) return -1;
        for (i = 0; i < tab->cap; i++)
            if (tab->slot[i].kid != EMPTY) {
                *tab_find(&big, tab->slot[i].t, tab->slot[i].kid, tab->slot[i].proto) =
                    tab->slot[i];
            }
        big.len = tab->len;
        PyMem_Free(tab->slot);
        *tab = big;
    }
    return 0;
}

/* Move the rows with t < cut (all when `all`) out of `tab` into `out` (grown as needed);
 * the rest stay. Returns 0 or -1 (no memory). */
static int tab_take(Table *tab, int64_t cut, int all, Row **out, size_t *n, size_t *cap) {
    size_t i, keep = 0;
    Row *old = tab->slot;
    size_t oldcap = tab->cap;
    if (old == NULL) return 0;
    for (i = 0; i < oldcap; i++) {
        if (old[i].kid == EMPTY) continue;
        if (all || old[i].t < cut) {
            if (*n == *cap) {
                size_t c = *cap ? *cap * 2 : 4096;
                Row *grown = PyMem_Realloc(*out, c * sizeof(Row));
                if (grown == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
                *out = grown;
                *cap = c;
            }
            (*out)[(*n)++] = old[i];
            old[i].kid = EMPTY;
        } else {
            keep++;
        }
    }
    if (keep == 0) {
        tab_free(tab);
        return 0;
    }
    if (keep == tab->len) return 0;
    /* rehash what stays: open addressing has no simple delete */
    if (tab_init(tab, oldcap) < 0) {
        tab->slot = old;
        return -1;
    }
    for (i = 0; i < oldcap; i++)
        if (old[i].kid != EMPTY) *tab_find(tab, old[i].t, old[i].kid, old[i].proto) = old[i];
    tab->len = keep;
    PyMem_Free(old);
    return 0;
}

static void ft_clear(FlowTotals *f) {
    tab_free(&f->secs);
    tab_free(&f->mins);
    Py_CLEAR(f->ip_index);
    Py_CLEAR(f->ip_names);
    PyMem_Free(f->ip_utf8);
    PyMem_Free(f->ip_len);
    PyMem_Free(f->ip_tot);
    f->ip_utf8 = NULL;
    f->ip_len = NULL;
    f->ip_tot = NULL;
    f->ip_cap = 0;
    f->have_newest = 0;
}

static int ft_reset(FlowTotals *f) {
    ft_clear(f);
    f->ip_index = PyDict_New();
    f->ip_names = PyList_New(0);
    return f->ip_index != NULL && f->ip_names != NULL ? 0 : -1;
}

static int ft_init(FlowTotals *f, PyObject *args, PyObject *kw) {
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "", names)) return -1;
    return ft_reset(f);
}

static void ft_dealloc(FlowTotals *f) {
    ft_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* An address's index (new ones get the next: first seen first), -1 with an exception;
 * -2: no address (None or ""). */
static Py_ssize_t ip_of(FlowTotals *f, PyObject *ip) {
    PyObject *v;
    Py_ssize_t n, len;
    const char *s;
    if (ip == Py_None) return -2;
    if (!PyUnicode_Check(ip)) {
        PyErr_SetString(PyExc_TypeError, "FlowTotals: an address is not a str");
        return -1;
    }
    if (PyUnicode_GET_LENGTH(ip) == 0) return -2;
    v = PyDict_GetItemWithError(f->ip_index, ip);
    if (v != NULL) return PyLong_AsSsize_t(v);
    if (PyErr_Occurred()) return -1;
    n = PyList_GET_SIZE(f->ip_names);
    if (n >= (1 << 30)) {
        PyErr_SetString(PyExc_OverflowError, "FlowTotals: too many addresses");
        return -1;
    }
    s = PyUnicode_AsUTF8AndSize(ip, &len);
    if (s == NULL) return -1;
    if ((size_t)n == f->ip_cap) {
        size_t c = f->ip_cap ? f->ip_cap * 2 : 1024;
        const char **u = PyMem_Realloc(f->ip_utf8, c * sizeof(*u));
        Py_ssize_t *l;
        IpTotal *t;
        if (u == NULL) goto nomem;
        f->ip_utf8 = u;
        l = PyMem_Realloc(f->ip_len, c * sizeof(*l));
        if (l == NULL) goto nomem;
        f->ip_len = l;
        t = PyMem_Realloc(f->ip_tot, c * sizeof(*t));
        if (t == NULL) goto nomem;
        f->ip_tot = t;
        f->ip_cap = c;
    }
    v = PyLong_FromSsize_t(n);
    if (v == NULL) return -1;
    if (PyDict_SetItem(f->ip_index, ip, v) < 0 || PyList_Append(f->ip_names, ip) < 0) {
        Py_DECREF(v);
        return -1;
    }
    Py_DECREF(v);
    f->ip_utf8[n] = s;   /* the str is held by ip_names */
    f->ip_len[n] = len;
    f->ip_tot[n].p = -1;  /* no traffic yet: set by the caller */
    return n;
nomem:
    PyErr_NoMemory();
    return -1;
}

static int small_int(PyObject *v, long lo, long hi, long *out, const char *what) {
    long x;
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "FlowTotals: %s is not an int", what);
        return -1;
    }
    x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "FlowTotals: %s out of range", what);
        return -1;
    }
    *out = x;
    return 0;
}

static int add_ip_total(FlowTotals *f, Py_ssize_t i, const long long *v) {
    IpTotal *t = &f->ip_tot[i];
    if (t->p < 0) {
        t->p = v[2];
        t->b = v[3];
        t->first = v[4];
        t->last = v[5];
    } else {
        t->p += v[2];
        t->b += v[3];
        if (v[4] < t->first) t->first = v[4];
        if (v[5] > t->last) t->last = v[5];
    }
    return 0;
}

PyDoc_STRVAR(ft_add_doc,
"add(packed, extras, conns) -> (first, last) or None\n\n"
"Add a batch's packed flow counters (flowagg.pack_flows: conn id, second, packets,\n"
"bytes, first, last as native int64), a connection's proto, addresses and ports read\n"
"from `conns` (id -> row: row[1:6] proto, local ip, local port, remote ip, remote port),\n"
"a tuple flow's from `extras`; returns the batch's packet time span.");

static PyObject *ft_add(FlowTotals *f, PyObject *args) {
    Py_buffer view;
    PyObject *extras, *conns;
    const long long *v;
    Py_ssize_t n, i;
    int have = 0;
    long long lo = 0, hi = 0;
    if (!PyArg_ParseTuple(args, "y*O!O!", &view, &PyList_Type, &extras, &PyDict_Type, &conns))
        return NULL;
    if (f->ip_index == NULL && ft_reset(f) < 0) goto fail;
    if (view.len % (6 * 8)) {
        PyErr_SetString(PyExc_ValueError, "FlowTotals.add: not whole packed flows");
        goto fail;
    }
    n = view.len / (6 * 8);
    v = (const long long *)view.buf;
    for (i = 0; i < n; i++, v += 6) {
        PyObject *row, *a_ip, *b_ip;
        long proto, a_port, b_port;
        Py_ssize_t a, b;
        int64_t sec = v[1];
        if (v[0] >= 0) {
            PyObject *key = PyLong_FromLongLong(v[0]);
            if (key == NULL) goto fail;
            row = PyDict_GetItemWithError(conns, key);
            if (row == NULL) {
                if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
                Py_DECREF(key);
                goto fail;
            }
            Py_DECREF(key);
            if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 6) {
                PyErr_SetString(PyExc_TypeError, "FlowTotals.add: conns values are row tuples");
                goto fail;
            }
            if (small_int(PyTuple_GET_ITEM(row, 1), 0, 0x7FFFFFFF, &proto, "proto") < 0 ||
                small_int(PyTuple_GET_ITEM(row, 3), 0, 65535, &a_port, "a port") < 0 ||
                small_int(PyTuple_GET_ITEM(row, 5), 0, 65535, &b_port, "b port") < 0)
                goto fail;
            a_ip = PyTuple_GET_ITEM(row, 2);
            b_ip = PyTuple_GET_ITEM(row, 4);
        } else {
            long long at = -1 - v[0];
            if (at >= PyList_GET_SIZE(extras)) {
                PyErr_SetString(PyExc_IndexError, "FlowTotals.add: no such extra flow");
                goto fail;
            }
            row = PyList_GET_ITEM(extras, at);
            if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 5) {
                PyErr_SetString(PyExc_TypeError,
                                "FlowTotals.add: extras are (proto, src, dst, sport, dport)");
                goto fail;
            }
            if (small_int(PyTuple_GET_ITEM(row, 0), 0, 0x7FFFFFFF, &proto, "proto") < 0 ||
                small_int(PyTuple_GET_ITEM(row, 3), 0, 65535, &a_port, "a port") < 0 ||
                small_int(PyTuple_GET_ITEM(row, 4), 0, 65535, &b_port, "b port") < 0)
                goto fail;
            a_ip = PyTuple_GET_ITEM(row, 1);
            b_ip = PyTuple_GET_ITEM(row, 2);
        }
        if (!have || v[4] < lo) lo = v[4];
        if (!have || v[5] > hi) hi = v[5];
        have = 1;
        if (!f->have_newest || sec > f->newest) f->newest = sec;
        f->have_newest = 1;
        if ((a = ip_of(f, a_ip)) == -1 || (b = ip_of(f, b_ip)) == -1) goto fail;
        if (tab_add(&f->secs, sec, KID(K_ALL, 0), (int32_t)proto, v[2], v[3]) < 0) goto fail;
        if (a >= 0) {
            add_ip_total(f, a, v);
            if (tab_add(&f->secs, sec, KID(K_IP, a), (int32_t)proto, v[2], v[3]) < 0)
                goto fail;
        }
        if (b >= 0 && b != a) {
            add_ip_total(f, b, v);
            if (tab_add(&f->secs, sec, KID(K_IP, b), (int32_t)proto, v[2], v[3]) < 0)
                goto fail;
        }
        if (a_port && tab_add(&f->secs, sec, KID(K_PORT, a_port), (int32_t)proto, v[2],
                              v[3]) < 0)
            goto fail;
        if (b_port && b_port != a_port &&
            tab_add(&f->secs, sec, KID(K_PORT, b_port), (int32_t)proto, v[2], v[3]) < 0)
            goto fail;
    }
    PyBuffer_Release(&view);
    if (!have) Py_RETURN_NONE;
    return Py_BuildValue("(LL)", lo, hi);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

static Py_ssize_t ft_len(FlowTotals *f) {
    Py_ssize_t ips = 0, i, n = f->ip_names ? PyList_GET_SIZE(f->ip_names) : 0;
    for (i = 0; i < n; i++) ips += f->ip_tot[i].p >= 0;
    return ips + (Py_ssize_t)(f->secs.len + f->mins.len);
}

/* A key's text as SQL sees it: "" (all traffic), the address, the port in decimal. */
static char port_text[65536][6];
static uint16_t port_rank[65536];   /* the order of port_text under memcmp */

static int cmp_port_text(const void *a, const void *b) {
    return strcmp(port_text[*(const uint16_t *)a], port_text[*(const uint16_t *)b]);
}

static void make_port_text(void) {
    static uint16_t order[65536];
    int i;
    if (port_text[1][0]) return;
    for (i = 0; i < 65536; i++) {
        snprintf(port_text[i], sizeof port_text[i], "%d", i);
        order[i] = (uint16_t)i;
    }
    qsort(order, 65536, sizeof order[0], cmp_port_text);
    for (i = 0; i < 65536; i++) port_rank[order[i]] = (uint16_t)i;
}

static FlowTotals *sorting;   /* qsort's context (the GIL is held) */

static int cmp_text(const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb) {
    int c = memcmp(a, b, (size_t)(na < nb ? na : nb));
    return c ? c : (na > nb) - (na < nb);
}

/* The tables' key order: (kind, key, time, proto) with key compared as SQLite's BINARY */
static int cmp_rows(const void *pa, const void *pb) {
    const Row *a = pa, *b = pb;
    uint32_t ka = a->kid >> 30, kb = b->kid >> 30;
    if (ka != kb) return ka < kb ? -1 : 1;
    if (a->kid != b->kid) {
        uint32_t ia = a->kid & 0x3FFFFFFF, ib = b->kid & 0x3FFFFFFF;
        if (ka == K_IP) {
            int c = cmp_text(sorting->ip_utf8[ia], sorting->ip_len[ia], sorting->ip_utf8[ib],
                             sorting->ip_len[ib]);
            if (c) return c;
        } else if (ka == K_PORT) {
            return port_rank[ia] < port_rank[ib] ? -1 : 1;
        }
    }
    if (a->t != b->t) return a->t < b->t ? -1 : 1;
    return (a->proto > b->proto) - (a->proto < b->proto);
}

static void bind_stat(FlowTotals *f, sqlite3_stmt *st, int at, const Row *row) {
    uint32_t kind = row->kid >> 30, id = row->kid & 0x3FFFFFFF;
    sqlite3_bind_int64(st, at + 1, kind);
    if (kind == K_IP)
        sqlite3_bind_text(st, at + 2, f->ip_utf8[id], (int)f->ip_len[id], SQLITE_STATIC);
    else
        sqlite3_bind_text(st, at + 2, kind == K_PORT ? port_text[id] : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, at + 3, row->t);
    sqlite3_bind_int64(st, at + 4, row->proto);
    sqlite3_bind_int64(st, at + 5, row->p);
    sqlite3_bind_int64(st, at + 6, row->b);
}

/* Upsert `rows` sorted through `sql` (kind, key, time, proto, packets, bytes), many rows
 * a statement where there are enough (many_stmt): SQLite rc */
static int write_rows(FlowTotals *f, RowWriter *w, const char *sql, Row *rows, size_t n) {
    sqlite3_stmt *st = NULL, *many = NULL;
    size_t i = 0;
    int rc = SQLITE_OK, r;
    if (n == 0) return SQLITE_OK;
    sorting = f;
    qsort(rows, n, sizeof(Row), cmp_rows);
    if (n >= MANY_ROWS) many = many_stmt(w, sql);
    for (; many != NULL && rc == SQLITE_OK && i + MANY_ROWS <= n; i += MANY_ROWS) {
        for (r = 0; r < MANY_ROWS; r++) bind_stat(f, many, 6 * r, &rows[i + r]);
        rc = sqlite3_step(many);
        sqlite3_reset(many);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(w->db, sql, -1, &st, NULL);
    for (; rc == SQLITE_OK && i < n; i++) {
        bind_stat(f, st, 0, &rows[i]);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Roll second rows into their minutes (mins) */
static int roll(FlowTotals *f, Row *secs, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        int64_t t = secs[i].t, m = t >= 0 ? t / 60 : -((-t + 59) / 60);   /* floor, as // */
        if (tab_add(&f->mins, m, secs[i].kid, secs[i].proto, secs[i].p, secs[i].b) < 0)
            return -1;
    }
    return 0;
}

static RowWriter *open_writer(PyObject *w) {
    if (!PyObject_TypeCheck(w, &RowWriterType)) {
        PyErr_SetString(PyExc_TypeError, "FlowTotals: writes through a RowWriter");
        return NULL;
    }
    if (((RowWriter *)w)->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "RowWriter: closed");
        return NULL;
    }
    return (RowWriter *)w;
}

/* Settled seconds (t < sec_cut; all when `all`) and the minutes before min_cut (all when
 * `all`) written in one transaction of `w`, with the addresses' totals when `ips_sql`. */
static PyObject *ft_write(FlowTotals *f, RowWriter *w, int all, int64_t sec_cut,
                          int64_t min_cut, const char *ips_sql, const char *agg_sql,
                          const char *sec_sql) {
    Row *secs = NULL, *mins = NULL;
    size_t ns = 0, cs = 0, nm = 0, cm = 0;
    int rc = SQLITE_OK;
    make_port_text();
    if (tab_take(&f->secs, sec_cut, all, &secs, &ns, &cs) < 0) goto py_error;
    if (ns == 0 && !all) return PyLong_FromLong(0);   /* as take_settled: nothing settled */
    if (roll(f, secs, ns) < 0 || tab_take(&f->mins, min_cut, all, &mins, &nm, &cm) < 0)
        goto py_error;
    if (ns + nm == 0 && PyList_GET_SIZE(f->ip_names) == 0) return PyLong_FromLong(0);
    rc = sqlite3_exec(w->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc == SQLITE_OK && ips_sql != NULL) {   /* first seen first: ips.id */
        sqlite3_stmt *st = NULL;
        Py_ssize_t i, n = PyList_GET_SIZE(f->ip_names);
        rc = sqlite3_prepare_v2(w->db, ips_sql, -1, &st, NULL);
        for (i = 0; rc == SQLITE_OK && i < n; i++) {
            IpTotal *t = &f->ip_tot[i];
            if (t->p < 0) continue;
            sqlite3_bind_text(st, 1, f->ip_utf8[i], (int)f->ip_len[i], SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, t->p);
            sqlite3_bind_int64(st, 3, t->b);
            sqlite3_bind_int64(st, 4, t->first);
            sqlite3_bind_int64(st, 5, t->last);
            rc = sqlite3_step(st);
            sqlite3_reset(st);
            if (rc == SQLITE_DONE) rc = SQLITE_OK;
        }
        sqlite3_finalize(st);
    }
    if (rc == SQLITE_OK) rc = write_rows(f, w, agg_sql, mins, nm);
    if (rc == SQLITE_OK) rc = write_rows(f, w, sec_sql, secs, ns);
    if (rc == SQLITE_OK) rc = sqlite3_exec(w->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto db_error;
    PyMem_Free(secs);
    PyMem_Free(mins);
    if (all && ft_reset(f) < 0) return NULL;
    return PyLong_FromSize_t(ns + nm);
db_error:
    raise_db(w->db, rc);
    if (!sqlite3_get_autocommit(w->db)) sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
py_error:
    PyMem_Free(secs);
    PyMem_Free(mins);
    return NULL;
}

PyDoc_STRVAR(ft_write_settled_doc,
"write_settled(rows, agg_sql, agg_sec_sql, margin=2) -> rows written\n\n"
"Totals.take_settled, written: the seconds older than the newest by `margin` (rolled\n"
"into their minutes) and the minutes they close, upserted through the RowWriter `rows`\n"
"in one transaction (agg_sql, agg_sec_sql: kind, key, time, proto, packets, bytes).");

static PyObject *ft_write_settled(FlowTotals *f, PyObject *args) {
    PyObject *wo;
    const char *agg_sql, *sec_sql;
    long long margin = 2, cut;
    RowWriter *w;
    if (!PyArg_ParseTuple(args, "Oss|L", &wo, &agg_sql, &sec_sql, &margin)) return NULL;
    if ((w = open_writer(wo)) == NULL) return NULL;
    if (!f->have_newest) return PyLong_FromLong(0);
    cut = f->newest - margin;
    /* minutes before cut's hold only seconds before cut (cut // 60, floored) */
    return ft_write(f, w, 0, cut, cut >= 0 ? cut / 60 : -((-cut + 59) / 60), NULL, agg_sql,
                    sec_sql);
}

PyDoc_STRVAR(ft_write_all_doc,
"write_all(rows, ips_sql, agg_sql, agg_sec_sql) -> rows written\n\n"
"Totals.take, written: every address's totals (first seen first), every row by minute\n"
"and by second, in one transaction of the RowWriter `rows`; empties the totals.");

static PyObject *ft_write_all(FlowTotals *f, PyObject *args) {
    PyObject *wo;
    const char *ips_sql, *agg_sql, *sec_sql;
    RowWriter *w;
    if (!PyArg_ParseTuple(args, "Osss", &wo, &ips_sql, &agg_sql, &sec_sql)) return NULL;
    if ((w = open_writer(wo)) == NULL) return NULL;
    if (f->ip_index == NULL && ft_reset(f) < 0) return NULL;
    return ft_write(f, w, 1, 0, 0, ips_sql, agg_sql, sec_sql);
}

static PyMethodDef ft_methods[] = {
    {"add", (PyCFunction)ft_add, METH_VARARGS, ft_add_doc},
    {"write_settled", (PyCFunction)ft_write_settled, METH_VARARGS, ft_write_settled_doc},
    {"write_all", (PyCFunction)ft_write_all, METH_VARARGS, ft_write_all_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods ft_as_sequence = {.sq_length = (lenfunc)ft_len};

static PyTypeObject FlowTotalsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apppaccap.store._packedrows.FlowTotals",
    .tp_basicsize = sizeof(FlowTotals),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FlowTotals(): a bulk load's statistics from packed flow counters, summed in "
              "C and written through a RowWriter (store/flowagg.py Totals in Python).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ft_init,
    .tp_dealloc = (destructor)ft_dealloc,
    .tp_methods = ft_methods,
    .tp_as_sequence = &ft_as_sequence,
};

/* pack_flows(flowsec) -> (bytes, extras): a batch's (flow, second) -> [packets, bytes,
 * first, last] counters (capture/recorder.py Batch.flowsec) as native int64 sextuples
 * (conn id, second, packets, bytes, first, last), in the dict's order, for the bulk writer
 * (store/flowagg.py pack_flows, whose Python twin this is). A flow that is a connection
 * gives its id (the writer reads its addresses from the batch's connection rows); a flow
 * that is a (proto, src, dst, sport, dport) tuple goes to `extras` and gives -1 - its
 * index there. Pickling the flat tuples with their address strings, and making them, cost
 * the parsing process ~0.3 s per 1M packets of short flows. */
static PyObject *id_name;

static PyObject *pack_flows(PyObject *self, PyObject *flowsec) {
    PyObject *out, *extras, *k, *v;
    Py_ssize_t pos = 0;
    long long *p;
    (void)self;
    if (!PyDict_Check(flowsec)) {
        PyErr_SetString(PyExc_TypeError, "pack_flows takes a dict");
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, PyDict_GET_SIZE(flowsec) * 6 * 8);
    extras = PyList_New(0);
    if (out == NULL || extras == NULL) goto fail;
    p = (long long *)PyBytes_AS_STRING(out);
    while (PyDict_Next(flowsec, &pos, &k, &v)) {
        PyObject *flow;
        int i;
        if (!PyTuple_Check(k) || PyTuple_GET_SIZE(k) != 2 || !PyList_Check(v) ||
            PyList_GET_SIZE(v) != 4) {
            PyErr_SetString(PyExc_TypeError,
                            "flowsec: (flow, second) -> [packets, bytes, first, last]");
            goto fail;
        }
        flow = PyTuple_GET_ITEM(k, 0);
        if (PyTuple_Check(flow)) {
            p[0] = -1 - (long long)PyList_GET_SIZE(extras);
            if (PyList_Append(extras, flow) < 0) goto fail;
        } else {
            PyObject *cid = PyObject_GetAttr(flow, id_name);
            if (cid == NULL) goto fail;
            p[0] = PyLong_AsLongLong(cid);
            Py_DECREF(cid);
        }
        p[1] = PyLong_AsLongLong(PyTuple_GET_ITEM(k, 1));
        for (i = 0; i < 4; i++) p[2 + i] = PyLong_AsLongLong(PyList_GET_ITEM(v, i));
        if (PyErr_Occurred()) goto fail;
        p += 6;
    }
    return Py_BuildValue("(NN)", out, extras);
fail:
    Py_XDECREF(out);
    Py_XDECREF(extras);
    return NULL;
}

#ifndef _WIN32
/* The bulk writer's side file is written from a thread of the parsing process, in slices
 * (store/sidefile.py). With os.write each slice took the GIL back from the
 * parser, which holds it while it scans: a block of 8 MB took 13-20 ms to write instead
 * of ~1.5, and reached the writer process that much later. Here the GIL is let go once,
 * for the copy into a staging buffer too (a direct write needs page-aligned memory: the
 * copy of 390 MB per 1M short-flow packets held the GIL ~50 ms when made from Python). */
static PyObject *write_slices(PyObject *self, PyObject *args) {
    int fd, err = 0;
    Py_buffer view, stage = {0};
    Py_ssize_t slice, left, size = -1;
    PyObject *stage_obj = Py_None;
    const char *p;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*n|On", &fd, &view, &slice, &stage_obj, &size)) return NULL;
    if (slice <= 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "write_slices: the slice must be positive");
        return NULL;
    }
    p = (const char *)view.buf;
    left = view.len;
    if (stage_obj != Py_None) {
        if (PyObject_GetBuffer(stage_obj, &stage, PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (size < view.len || size > stage.len) {
            PyBuffer_Release(&stage);
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError,
                            "write_slices: the size must hold the data and fit the stage");
            return NULL;
        }
        left = size;
    }
    Py_BEGIN_ALLOW_THREADS
    if (stage.buf != NULL) {   /* the data, padded with zeros to `size`, from the stage */
        memcpy(stage.buf, view.buf, (size_t)view.len);
        memset((char *)stage.buf + view.len, 0, (size_t)(size - view.len));
        p = (const char *)stage.buf;
    }
    while (left > 0) {
        ssize_t n = write(fd, p, (size_t)(left < slice ? left : slice));
        if (n < 0) {
            if (errno == EINTR) continue;  /* a thread: the main thread runs the handlers */
            err = errno;
            break;
        }
        if (n == 0) { err = EIO; break; }
        p += n;
        left -= n;
    }
    Py_END_ALLOW_THREADS
    if (stage.buf != NULL) PyBuffer_Release(&stage);
    PyBuffer_Release(&view);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}
#endif


/* -- Packet tuples on the sqlite3 module's own connection (capturedb._insert_rows) ----
 *
 * A live capture's writer thread binds ~20,000 packet tuples of 23 values a batch. Through
 * the sqlite3 module that binding held the interpreter lock ~1.5 us a row, a quarter of
 * what the service held it for at 150k packets/s, taken from the capture's own pipeline
 * thread. Here the same statements are bound in C (~0.3 us a row) and the lock is let go
 * around each step, as the sqlite3 module does - on the module's own connection, inside
 * the transaction its caller opened, so a batch stays one transaction.
 *
 * The sqlite3 module's Connection object begins, after its object header, with its
 * sqlite3 handle (Modules/_sqlite/connection.h, the same from CPython 3.8 to 3.14). The
 * handle is used only when that module and this one call the same SQLite library: the
 * same address for sqlite3_libversion in both (same_library, at import). Otherwise - or on
 * another Python - insert_tuples is absent and capturedb binds the rows from Python. */
#if PY_VERSION_HEX >= 0x03080000 && PY_VERSION_HEX < 0x030F0000 && !defined(_WIN32) && \
    !defined(PYPY_VERSION)
#define HAVE_INSERT_TUPLES 1
typedef struct { PyObject_HEAD sqlite3 *db; } ModuleConnection;
static PyTypeObject *connection_type;   /* sqlite3.Connection */
static PyObject *integrity_error, *database_error, *data_error, *programming_error;

/* the sqlite3 module's class for an SQLite error code (its _pysqlite_seterror's choice) */
static PyObject *error_class(int rc) {
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT: case SQLITE_MISMATCH: return integrity_error;
    case SQLITE_TOOBIG: return data_error;
    case SQLITE_CORRUPT: case SQLITE_NOTADB: return database_error;
    default: return operational_error;
    }
}

/* Whether _sqlite3 (the sqlite3 module's extension) resolves SQLite to this module's
 * library: then a handle it opened is one this module may use. */
static int same_library(void) {
    PyObject *mod = PyImport_ImportModule("_sqlite3"), *file;
    const char *path;
    void *handle, *sym = NULL;
    if (mod == NULL) return 0;
    file = PyObject_GetAttrString(mod, "__file__");
    Py_DECREF(mod);
    if (file == NULL || !PyUnicode_Check(file) || (path = PyUnicode_AsUTF8(file)) == NULL) {
        Py_XDECREF(file);
        PyErr_Clear();
        return 0;
    }
    handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    Py_DECREF(file);
    if (handle == NULL) return 0;
    sym = dlsym(handle, "sqlite3_libversion");
    dlclose(handle);
    return sym != NULL && sym == (void *)&sqlite3_libversion;
}

/* A row value read from Python (with the interpreter lock), bound without it. Text and
 * blobs point into the row's own objects, kept alive by insert_tuples' snapshot. */
typedef struct { const void *p; long long i; double d; int n; char kind; } Value;
enum { V_NULL, V_INT, V_FLOAT, V_TEXT, V_BLOB };
/* rows read per letting go of the lock: whole runs of up to 64 rows, ~0.5 MB of Values */
#define CHUNK_RUNS 16

/* `o` as the sqlite3 module would bind it: 0, or -1 with an exception set */
static int read_value(Value *v, PyObject *o) {
    Py_ssize_t n;
    if (o == Py_None) {
        v->kind = V_NULL;
    } else if (PyLong_Check(o)) {
        v->i = PyLong_AsLongLong(o);
        if (v->i == -1 && PyErr_Occurred()) return -1;   /* as sqlite3: OverflowError */
        v->kind = V_INT;
    } else if (PyUnicode_Check(o)) {
        if ((v->p = PyUnicode_AsUTF8AndSize(o, &n)) == NULL) return -1;
        if (n > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "string longer than INT_MAX bytes");
            return -1;
        }
        v->n = (int)n;
        v->kind = V_TEXT;
    } else if (PyFloat_Check(o)) {
        v->d = PyFloat_AS_DOUBLE(o);
        v->kind = V_FLOAT;
    } else if (PyBytes_Check(o)) {
        if (PyBytes_GET_SIZE(o) > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "BLOB longer than INT_MAX bytes");
            return -1;
        }
        v->p = PyBytes_AS_STRING(o);
        v->n = (int)PyBytes_GET_SIZE(o);
        v->kind = V_BLOB;
    } else {   /* (the rows hold none: bytearray and memoryview are not taken either) */
        PyErr_Format(programming_error, "a row value of type '%s' is not supported",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    return 0;
}

static int bind_read(sqlite3_stmt *st, int at, const Value *v) {
    switch (v->kind) {
    case V_INT: return sqlite3_bind_int64(st, at, v->i);
    case V_FLOAT: return sqlite3_bind_double(st, at, v->d);
    case V_TEXT: return sqlite3_bind_text(st, at, v->p, v->n, SQLITE_STATIC);
    case V_BLOB: return sqlite3_bind_blob(st, at, v->p, v->n, SQLITE_STATIC);
    default: return sqlite3_bind_null(st, at);
    }
}

/* Rows snap[at .. at+k) into `vals`, each `width` values: 0, or -1 with an exception set */
static int read_rows(Value *vals, PyObject *snap, Py_ssize_t at, Py_ssize_t k, int width) {
    Py_ssize_t r;
    int i;
    for (r = 0; r < k; r++) {
        PyObject *row = PyTuple_GET_ITEM(snap, at + r);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != width) {
            PyErr_Format(programming_error, "Incorrect number of bindings supplied: a row "
                         "of the statement takes %d", width);
            return -1;
        }
        for (i = 0; i < width; i++)
            if (read_value(vals + r * width + i, PyTuple_GET_ITEM(row, i)) < 0) return -1;
    }
    return 0;
}

/* Bind and run rows vals[0 .. k) (the lock let go): whole runs of `per` through `many`
 * (when there is one), the rest one by one through `one`. SQLITE_DONE, or the error. */
static int run_rows(sqlite3_stmt *many, sqlite3_stmt *one, int per, long long blk,
                    const Value *vals, Py_ssize_t k, int width) {
    Py_ssize_t r = 0;
    int rc = SQLITE_DONE, i;
    while (r < k) {
        int rows = many != NULL && k - r >= per ? per : 1;
        sqlite3_stmt *st = rows > 1 ? many : one;
        if ((rc = sqlite3_bind_int64(st, 1, blk)) != SQLITE_OK) return rc;
        for (i = 0; i < rows * width; i++)
            if ((rc = bind_read(st, 2 + i, vals + r * width + i)) != SQLITE_OK) return rc;
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) return rc;
        r += rows;
    }
    return rc;
}

PyDoc_STRVAR(insert_tuples_doc,
"insert_tuples(connection, many_sql, one_sql, rows, blk, per) -> None\n\n"
"Run `many_sql` (parameters: blk, then `per` rows) for each whole run of `per` rows of\n"
"`rows` (tuples), then `one_sql` (blk, then one row) for each row left, on the sqlite3\n"
"Connection `connection`, in its current transaction: executemany of the sqlite3 module,\n"
"the values read with the interpreter lock, bound and run without it. Errors are raised\n"
"as the sqlite3 module raises them (IntegrityError for a constraint, ...).");

static PyObject *insert_tuples(PyObject *self, PyObject *args) {
    PyObject *conn, *rows, *snap, *ret = NULL;
    const char *many_sql, *one_sql;
    long long blk;
    int per, width, rc = SQLITE_OK;
    sqlite3 *db;
    sqlite3_stmt *one = NULL, *many = NULL;
    Value *vals = NULL;
    Py_ssize_t n, at = 0, chunk;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!ssOLi", connection_type, &conn, &many_sql, &one_sql, &rows,
                          &blk, &per))
        return NULL;
    /* the sqlite3 module's own checks (closed, another thread's connection): a cursor */
    if ((snap = PyObject_CallMethod(conn, "cursor", NULL)) == NULL) return NULL;
    Py_DECREF(snap);
    if ((db = ((ModuleConnection *)conn)->db) == NULL) {
        PyErr_SetString(programming_error, "Cannot operate on a closed database.");
        return NULL;
    }
    if (per < 1 || per > 4096) {
        PyErr_SetString(PyExc_ValueError, "insert_tuples: per must be 1 to 4096");
        return NULL;
    }
    /* the rows stay alive (their strings bound SQLITE_STATIC) while the lock is let go */
    if ((snap = PySequence_Tuple(rows)) == NULL) return NULL;
    n = PyTuple_GET_SIZE(snap);
    if ((rc = sqlite3_prepare_v2(db, one_sql, -1, &one, NULL)) != SQLITE_OK) goto db_error;
    width = sqlite3_bind_parameter_count(one) - 1;
    if (width < 1) {
        PyErr_SetString(PyExc_ValueError, "insert_tuples: one_sql takes no row");
        goto done;
    }
    if (per > 1 && n >= per) {
        if ((rc = sqlite3_prepare_v2(db, many_sql, -1, &many, NULL)) != SQLITE_OK) goto db_error;
        if (sqlite3_bind_parameter_count(many) != 1 + per * width) {
            PyErr_SetString(PyExc_ValueError, "insert_tuples: many_sql does not hold per rows");
            goto done;
        }
    }
    chunk = (Py_ssize_t)per * CHUNK_RUNS;   /* whole runs: only the last chunk has a rest */
    if ((vals = PyMem_Malloc(sizeof(Value) * (size_t)(chunk < n ? chunk : n) * width + 1)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    while (at < n) {
        Py_ssize_t k = n - at < chunk ? n - at : chunk;
        if (read_rows(vals, snap, at, k, width) < 0) goto done;
        Py_BEGIN_ALLOW_THREADS
        rc = run_rows(many, one, per, blk, vals, k, width);
        Py_END_ALLOW_THREADS
        if (((ModuleConnection *)conn)->db != db) {   /* closed meanwhile (a misuse) */
            PyErr_SetString(programming_error, "The connection was closed while rows were "
                            "written.");
            goto done;
        }
        if (rc != SQLITE_DONE) goto db_error;
        at += k;
    }
    ret = Py_None;
    Py_INCREF(ret);
    goto done;
db_error:
    raise_db_as(error_class(rc), db, rc);
done:
    sqlite3_finalize(many);
    sqlite3_finalize(one);
    PyMem_Free(vals);
    Py_DECREF(snap);
    return ret;
}

/* insert_tuples' classes and check (0: it is left out of the module) */
static int insert_tuples_ready(PyObject *sq) {
    if ((connection_type = (PyTypeObject *)PyObject_GetAttrString(sq, "Connection")) == NULL ||
        (integrity_error = PyObject_GetAttrString(sq, "IntegrityError")) == NULL ||
        (database_error = PyObject_GetAttrString(sq, "DatabaseError")) == NULL ||
        (data_error = PyObject_GetAttrString(sq, "DataError")) == NULL ||
        (programming_error = PyObject_GetAttrString(sq, "ProgrammingError")) == NULL) {
        PyErr_Clear();
        return 0;
    }
    return PyType_Check(connection_type) && same_library();
}
#endif

static PyMethodDef module_methods[] = {
    {"pack_flows", pack_flows, METH_O,
     "pack_flows(flowsec) -> (bytes, extras): store/flowagg.py pack_flows in C."},
#ifndef _WIN32
    {"write_slices", write_slices, METH_VARARGS,
     "write_slices(fd, data, slice[, stage, size]): write all of data to fd, at most\n"
     "`slice` bytes per write(2), without taking the GIL between them; with `stage` (a\n"
     "writable buffer of at least `size` bytes) data is copied there first, padded with\n"
     "zeros to `size`, and the `size` bytes are written from there."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_packedrows",
    "Packed packet rows into a capture database through SQLite's C API.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__packedrows(void) {
    PyObject *m, *sq;
    if (PyType_Ready(&RowWriterType) < 0 || PyType_Ready(&FlowTotalsType) < 0)
        return NULL;
    if ((id_name = PyUnicode_InternFromString("id")) == NULL) return NULL;
    sq = PyImport_ImportModule("sqlite3");
    if (sq == NULL) return NULL;
    operational_error = PyObject_GetAttrString(sq, "OperationalError");
    if (operational_error == NULL) {
        Py_DECREF(sq);
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL) {
        Py_DECREF(sq);
        return NULL;
    }
#ifdef HAVE_INSERT_TUPLES
    if (insert_tuples_ready(sq)) {
        static PyMethodDef def = {"insert_tuples", insert_tuples, METH_VARARGS,
                                  insert_tuples_doc};
        PyObject *f = PyCFunction_NewEx(&def, NULL, NULL);
        if (f == NULL || PyModule_AddObject(m, "insert_tuples", f) < 0) {
            Py_XDECREF(f);
            Py_DECREF(sq);
            Py_DECREF(m);
            return NULL;
        }
    }
#endif
    Py_DECREF(sq);
    Py_INCREF(&RowWriterType);
    Py_INCREF(&FlowTotalsType);
    if (PyModule_AddObject(m, "RowWriter", (PyObject *)&RowWriterType) < 0 ||
        PyModule_AddObject(m, "FlowTotals", (PyObject *)&FlowTotalsType) < 0 ||
        PyModule_AddIntConstant(m, "ROW_SIZE", ROW_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MANY_ROWS", MANY_ROWS) < 0) {
        Py_DECREF(&RowWriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
