/* Packed packet rows (capturedb.PLAIN_FORMAT, from the compiled ingest scanner) into a
 * capture database through SQLite's C API: the bulk writer process's packet hot path.
 *
 * Through Python's sqlite3 module the rows went through a temp table and an INSERT ...
 * SELECT joining their connection (binding 14 ints a row from Python, then the join):
 * ~2.5 s of the writer's ~4 s CPU for 1M packets of short flows. Here each row is bound
 * and stepped in C, its addresses taken from the batch's connection rows.
 *
 * The statements are capturedb.py's (it owns the packets table): `insert` with named
 * parameters (:id :ts :len :caplen :iface :l3 :proto :src :dst :sport :dport :tcp_flags
 * :ttl :direction :conn_id :off :blk), `lookup` (conn id -> local_ip, remote_ip) for a
 * connection the batch does not carry (as the LEFT JOIN did: none -> NULL addresses).
 *
 * This is a second connection to the database of the writer process: the caller runs
 * it after committing the batch's own transaction (one writer at a time, never nested).
 * Errors come out as sqlite3.OperationalError with sqlite_errorcode set, as the sqlite3
 * module raises them (store/faults.py reads "disk full" from it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sqlite3.h>
#include <stdint.h>

#define ROW_SIZE 51  /* "<qqIIHBHHHBBqII" */

enum { P_ID, P_TS, P_LEN, P_CAPLEN, P_IFACE, P_L3, P_PROTO, P_SRC, P_DST, P_SPORT, P_DPORT,
       P_FLAGS, P_TTL, P_DIR, P_CONN, P_OFF, P_BLK, NPARAMS };
static const char *const PARAM_NAMES[NPARAMS] = {
    ":id", ":ts", ":len", ":caplen", ":iface", ":l3", ":proto", ":src", ":dst", ":sport",
    ":dport", ":tcp_flags", ":ttl", ":direction", ":conn_id", ":off", ":blk"};

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *ins, *look;
    int at[NPARAMS];      /* each parameter's index in `ins` */
    Py_ssize_t local_at, remote_at;  /* where a connection row holds its addresses */
} RowWriter;

static PyObject *operational_error;  /* sqlite3.OperationalError */

static inline uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    int i;
    for (i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* sqlite3.OperationalError(message) with sqlite_errorcode / sqlite_errorname set */
static void raise_db(sqlite3 *db, int rc) {
    int code = db != NULL ? sqlite3_extended_errcode(db) : rc;
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    PyObject *exc = PyObject_CallFunction(operational_error, "s", msg), *v;
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
    PyErr_SetObject(operational_error, exc);
    Py_DECREF(exc);
}

static void rw_close_db(RowWriter *w) {
    sqlite3_finalize(w->ins);
    sqlite3_finalize(w->look);
    w->ins = w->look = NULL;
    if (w->db != NULL) sqlite3_close(w->db);
    w->db = NULL;
}

static int rw_init(RowWriter *w, PyObject *args, PyObject *kw) {
    static char *names[] = {"path", "insert", "lookup", "local_at", "remote_at", NULL};
    const char *path, *ins, *look;
    int rc, i;
    Py_ssize_t local_at, remote_at;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sssnn", names, &path, &ins, &look, &local_at,
                                     &remote_at))
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
    /* as the writer process's own connection: a crash mid-ingest fails the ingest */
    rc = sqlite3_exec(w->db, "PRAGMA synchronous=OFF", NULL, NULL, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(w->db, ins, -1, &w->ins, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(w->db, look, -1, &w->look, NULL);
    if (rc != SQLITE_OK) goto fail;
    for (i = 0; i < NPARAMS; i++) {
        w->at[i] = sqlite3_bind_parameter_index(w->ins, PARAM_NAMES[i]);
        if (w->at[i] == 0) {
            PyErr_Format(PyExc_ValueError, "RowWriter: the insert has no %s", PARAM_NAMES[i]);
            rw_close_db(w);
            return -1;
        }
    }
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
static int bind_looked_up(RowWriter *w, long long cid, int src_at, int dst_at, int out) {
    int rc;
    sqlite3_bind_int64(w->look, 1, cid);
    rc = sqlite3_step(w->look);
    if (rc == SQLITE_ROW) {
        int l = out ? 0 : 1, r = out ? 1 : 0;
        /* text copied by the bind (TRANSIENT): the lookup is reset below */
        if (sqlite3_column_type(w->look, l) == SQLITE_NULL)
            sqlite3_bind_null(w->ins, src_at);
        else
            sqlite3_bind_text(w->ins, src_at, (const char *)sqlite3_column_text(w->look, l),
                              sqlite3_column_bytes(w->look, l), SQLITE_TRANSIENT);
        if (sqlite3_column_type(w->look, r) == SQLITE_NULL)
            sqlite3_bind_null(w->ins, dst_at);
        else
            sqlite3_bind_text(w->ins, dst_at, (const char *)sqlite3_column_text(w->look, r),
                              sqlite3_column_bytes(w->look, r), SQLITE_TRANSIENT);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        sqlite3_bind_null(w->ins, src_at);
        sqlite3_bind_null(w->ins, dst_at);
        rc = SQLITE_OK;
    }
    sqlite3_reset(w->look);
    return rc;
}

/* Bind one Python value (int, str or None) as parameter `at`: 0, -1 (exception) */
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
    PyErr_SetString(PyExc_TypeError, "RowWriter.upsert: values must be int, str or None");
    return -1;
}

/* Run `st` once per value of `rows` (a sequence each: its items the parameters). */
static int insert_values(RowWriter *w, sqlite3_stmt *st, PyObject *rows, int *rc) {
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    int n = sqlite3_bind_parameter_count(st);
    *rc = SQLITE_OK;
    while (PyDict_Next(rows, &pos, &k, &v)) {
        Py_ssize_t i;
        if (!(PyList_Check(v) || PyTuple_Check(v)) || PySequence_Fast_GET_SIZE(v) != n) {
            PyErr_SetString(PyExc_ValueError, "RowWriter: a row does not fit the statement");
            return -1;
        }
        for (i = 0; i < n; i++)
            if (bind_value(st, (int)i + 1, PySequence_Fast_GET_ITEM(v, i)) < 0) {
                if (!PyErr_Occurred()) *rc = sqlite3_errcode(w->db);
                return -1;
            }
        *rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (*rc != SQLITE_DONE) return -1;
        *rc = SQLITE_OK;
    }
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
    PyObject *conns, *key = NULL;
    Py_ssize_t n, i;
    const unsigned char *p;
    int rc = SQLITE_OK, *at = w->at;
    sqlite3_stmt *st = w->ins;

    const char *conn_sql = NULL;
    sqlite3_stmt *cst = NULL;
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
        rc = sqlite3_prepare_v2(w->db, conn_sql, -1, &cst, NULL);
        if (rc != SQLITE_OK) goto db_error;
        if (insert_values(w, cst, conns, &rc) < 0) {
            if (PyErr_Occurred()) goto py_error;
            goto db_error;
        }
        sqlite3_finalize(cst);
        cst = NULL;
    }
    sqlite3_bind_int64(st, at[P_BLK], blk);
    for (i = 0; i < n; i++, p += ROW_SIZE) {
        long long cid = (long long)le(p + 35, 8);
        int out = p[34] == 1;
        PyObject *row;
        sqlite3_bind_int64(st, at[P_ID], (long long)le(p, 8));
        sqlite3_bind_int64(st, at[P_TS], (long long)le(p + 8, 8));
        sqlite3_bind_int64(st, at[P_LEN], (long long)le(p + 16, 4));
        sqlite3_bind_int64(st, at[P_CAPLEN], (long long)le(p + 20, 4));
        sqlite3_bind_int64(st, at[P_L3], (long long)le(p + 24, 2));
        sqlite3_bind_int64(st, at[P_PROTO], p[26]);
        sqlite3_bind_int64(st, at[P_SPORT], (long long)le(p + 27, 2));
        sqlite3_bind_int64(st, at[P_DPORT], (long long)le(p + 29, 2));
        sqlite3_bind_int64(st, at[P_FLAGS], (long long)le(p + 31, 2));
        sqlite3_bind_int64(st, at[P_TTL], p[33]);
        sqlite3_bind_int64(st, at[P_DIR], p[34]);
        sqlite3_bind_int64(st, at[P_CONN], cid);
        sqlite3_bind_int64(st, at[P_OFF], (long long)le(p + 43, 4));
        sqlite3_bind_int64(st, at[P_IFACE], (long long)le(p + 47, 4));
        key = PyLong_FromLongLong(cid);
        if (key == NULL) goto py_error;
        row = PyDict_GetItemWithError(conns, key);
        Py_CLEAR(key);
        if (row == NULL && PyErr_Occurred()) goto py_error;
        if (row != NULL) {
            PyObject *local, *remote;
            if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) <= w->local_at ||
                PyTuple_GET_SIZE(row) <= w->remote_at) {
                PyErr_SetString(PyExc_TypeError, "RowWriter: conns values must be row tuples");
                goto py_error;
            }
            local = PyTuple_GET_ITEM(row, w->local_at);
            remote = PyTuple_GET_ITEM(row, w->remote_at);
            if (bind_addr(st, at[P_SRC], out ? local : remote) < 0 ||
                bind_addr(st, at[P_DST], out ? remote : local) < 0)
                goto py_error;
        } else if ((rc = bind_looked_up(w, cid, at[P_SRC], at[P_DST], out)) != SQLITE_OK) {
            goto db_error;
        }
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) goto db_error;
    }
    rc = sqlite3_exec(w->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto db_error;
    sqlite3_clear_bindings(st);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);

db_error:
    raise_db(w->db, rc);
py_error:
    Py_XDECREF(key);
    sqlite3_finalize(cst);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
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

static PyMethodDef module_methods[] = {
    {"pack_flows", pack_flows, METH_O,
     "pack_flows(flowsec) -> (bytes, extras): store/flowagg.py pack_flows in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_packedrows",
    "Packed packet rows into a capture database through SQLite's C API.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__packedrows(void) {
    PyObject *m, *sq;
    if (PyType_Ready(&RowWriterType) < 0) return NULL;
    if ((id_name = PyUnicode_InternFromString("id")) == NULL) return NULL;
    sq = PyImport_ImportModule("sqlite3");
    if (sq == NULL) return NULL;
    operational_error = PyObject_GetAttrString(sq, "OperationalError");
    Py_DECREF(sq);
    if (operational_error == NULL) return NULL;
    m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RowWriterType);
    if (PyModule_AddObject(m, "RowWriter", (PyObject *)&RowWriterType) < 0 ||
        PyModule_AddIntConstant(m, "ROW_SIZE", ROW_SIZE) < 0) {
        Py_DECREF(&RowWriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
