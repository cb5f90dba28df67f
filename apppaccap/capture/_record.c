/* The live pipeline's common packet, recorded in C (capture/live.py LiveCapture._release
 * with Target.pick, Recorder.conn_for and Recorder.add).
 *
 * At 150k packets/s the pipeline thread spent ~3 us a packet in those Python functions,
 * with the interpreter lock held: the largest share of the service's CPU after SQLite's
 * own. record() walks a run of queue items and records each packet the Python code would
 * record without a decision of its own to make: the flow's attribution entry came with
 * the packet and is answered, its connection exists and keeps its label and TCP state (no
 * SYN, FIN or RST; past the handshake), it is not a DNS answer, and its timestamp fits.
 * A connection nDPI still looks at is fed here (AppLabeller.feed's step): the packet that
 * settles its label puts the connection on the labeller's `settled` list, named by
 * Python (AppLabeller.complete_settled) as soon as this call returns. A process or thread capture's packets of other programs are passed
 * here too. It stops at the first other packet and returns; LiveCapture._release hands
 * that one to the Python path (the one definition of what is stored) and calls record()
 * again. tests/test_record.py checks both paths store identical databases for the corpus.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "../dissect/dpistate.h"

#define SECOND_NS 1000000000LL
#define TCP 6
#define UDP 17
#define SKIPPED 2   /* record_one: not the capture's packet (Target.pick said False) */

static PyObject *a_failure, *a_on_tcp, *a_epb_divs, *a_labeller, *a_batch, *a_conns,
    *a_next_id, *a_packets, *a_bytes, *a_batch_packets, *a_batch_bytes, *a_rows, *a_buf,
    *a_dirty, *a_procs, *a_threads, *a_procsec, *a_flowsec, *a_label, *a_local, *a_state,
    *a_app, *a_id, *a_pout, *a_bout, *a_pin, *a_bin, *a_last, *a_process_id, *a_pid, *a_tid,
    *a_proc, *a_c_feed, *s_syn_sent, *s_syn_received, *s_get, *s_ppid, *one, *zero;

/* The Recorder's state for one call: read at its start, counters written back at its end */
typedef struct {
    PyObject *rec;   /* borrowed: the Recorder; the rest is read at the first packet that
                      * gets as far as its connection (rec_load), owned */
    int state;       /* REC_UNREAD, REC_READ, or REC_PYTHON: every packet is Python's */
    PyObject *batch, *rows, *buf, *dirty, *procs, *threads, *procsec, *flowsec, *conns,
        *labeller;
    long long next_id, packets, bytes, batch_packets, batch_bytes;
    /* nDPI fed here (the labeller's c_feed; pending NULL: Python feeds it): its module and
     * functions, the packet cap, the labeller's pending dict (conn id -> (conn, state))
     * and its `settled` list */
    void *dpi_mod;
    dpi_process_fn dpi_process;
    dpi_extra_fn dpi_extra;
    unsigned int dpi_cap;
    PyObject *pending, *settled;
} Rec;
enum { REC_UNREAD, REC_READ, REC_PYTHON };

static int get_ll(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int set_ll(PyObject *obj, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    int r;
    if (v == NULL) return -1;
    r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* attribute `name` of `obj` (a new reference) is None: 1, not None: 0, error: -1 */
static int attr_is_none(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    Py_DECREF(v);
    return v == Py_None;
}

/* v[index] += by, where v is a list of ints */
static int list_add(PyObject *v, Py_ssize_t index, long long by) {
    PyObject *old = PyList_GET_ITEM(v, index), *sum;
    long long x = PyLong_AsLongLong(old);
    if (x == -1 && PyErr_Occurred()) return -1;
    if ((sum = PyLong_FromLongLong(x + by)) == NULL) return -1;
    return PyList_SetItem(v, index, sum);   /* steals sum, drops old */
}

/* d[key] = [n, by] or d[key][0] += n, d[key][1] += by (the batch's counters) */
static int count2(PyObject *d, PyObject *key, long long n, long long by) {
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (v == NULL) {
        if (PyErr_Occurred()) return -1;
        v = Py_BuildValue("[LL]", n, by);
        if (v == NULL) return -1;
        n = PyDict_SetItem(d, key, v);
        Py_DECREF(v);
        return (int)n;
    }
    if (!PyList_Check(v) || PyList_GET_SIZE(v) < 2) {
        PyErr_SetString(PyExc_TypeError, "record: a batch counter is not a list");
        return -1;
    }
    return list_add(v, 0, n) < 0 || list_add(v, 1, by) < 0 ? -1 : 0;
}

/* The flow key of Recorder.conn_for: (proto, (src, sport), (dst, dport)), its two ends in
 * order (labels.flow_key). A new reference, or NULL. */
static PyObject *conn_key(PyObject *proto, PyObject *src, PyObject *sport, PyObject *dst,
                          PyObject *dport) {
    PyObject *a = PyTuple_Pack(2, src, sport), *b = NULL, *key = NULL;
    int le;
    if (a == NULL || (b = PyTuple_Pack(2, dst, dport)) == NULL) goto done;
    if ((le = PyObject_RichCompareBool(a, b, Py_LE)) < 0) goto done;
    key = le ? PyTuple_Pack(3, proto, a, b) : PyTuple_Pack(3, proto, b, a);
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    return key;
}

/* Recorder.add's packet row: (id, ts, len, caplen, iface, l3, proto, src, dst, sport,
 * dport, tcp_flags, ttl, vlan, icmp_type, direction, conn_id, process_id, pid, tid, notes,
 * off, ts_raw), a new reference or NULL */
static PyObject *packet_row(long long id, PyObject *ts, long long size, PyObject *iface,
                            PyObject *d, int dir, PyObject *conn_id, PyObject *process_id,
                            PyObject *pid, PyObject *tid, Py_ssize_t off) {
    PyObject *row = PyTuple_New(23), *v;
    static const int from_d[] = {0, 1, 2, 3, 4, 5, 6, 9, 10, 11};   /* l3 .. icmp_type */
    int i;
    if (row == NULL) return NULL;
    if ((v = PyLong_FromLongLong(id)) == NULL) goto fail;
    PyTuple_SET_ITEM(row, 0, v);
    Py_INCREF(ts);
    PyTuple_SET_ITEM(row, 1, ts);
    if ((v = PyLong_FromLongLong(size)) == NULL) goto fail;
    PyTuple_SET_ITEM(row, 2, v);
    Py_INCREF(v);   /* caplen: the whole packet (live) */
    PyTuple_SET_ITEM(row, 3, v);
    Py_INCREF(iface);
    PyTuple_SET_ITEM(row, 4, iface);
    for (i = 0; i < 10; i++) {
        v = PyTuple_GET_ITEM(d, from_d[i]);
        Py_INCREF(v);
        PyTuple_SET_ITEM(row, 5 + i, v);
    }
    if ((v = PyLong_FromLong(dir)) == NULL) goto fail;
    PyTuple_SET_ITEM(row, 15, v);
    Py_INCREF(conn_id);
    PyTuple_SET_ITEM(row, 16, conn_id);
    Py_INCREF(process_id);
    PyTuple_SET_ITEM(row, 17, process_id);
    Py_INCREF(pid);
    PyTuple_SET_ITEM(row, 18, pid);
    Py_INCREF(tid);
    PyTuple_SET_ITEM(row, 19, tid);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(row, 20, Py_None);
    if ((v = PyLong_FromSsize_t(off)) == NULL) goto fail;
    PyTuple_SET_ITEM(row, 21, v);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(row, 22, Py_None);
    /* no cycle passes through a row of ints, text and None: the cycle collector need not
     * walk the batch's rows (~7 % of the service's CPU at 150k packets/s was collecting) */
    for (i = 0; i < 23 && !PyType_IS_GC(Py_TYPE(PyTuple_GET_ITEM(row, i))); i++) {}
    if (i == 23) PyObject_GC_UnTrack(row);
    return row;
fail:
    Py_DECREF(row);   /* (unset items are NULL: tuple dealloc skips them) */
    return NULL;
}

/* A run: consecutive packets of one connection, label and second. Its counters are
 * added to the connection and the batch once, when it ends (run_end), in the order
 * Recorder.add adds them for its first packet: the batch's dicts come out the same. */
typedef struct {
    /* all owned: the entry and label the run's packets came with (compared by identity:
     * held, no other object can take their address), its connection, ... */
    PyObject *ref, *lab, *conn, *k, *local, *process_id, *pid, *tid, *first, *last;
    PyObject *dpi;               /* the connection's nDPI state while it is fed, or NULL */
    long long sec, n[2], b[2];   /* packets and bytes by direction: [0] in, [1] out */
    int first_dir;               /* the direction of its first packet (0, 1) */
} Run;

static void run_clear(Run *u) {
    Py_CLEAR(u->conn);
    Py_CLEAR(u->k);
    Py_CLEAR(u->local);
    Py_CLEAR(u->process_id);
    Py_CLEAR(u->pid);
    Py_CLEAR(u->tid);
    Py_CLEAR(u->first);
    Py_CLEAR(u->last);
    Py_CLEAR(u->ref);
    Py_CLEAR(u->lab);
    Py_CLEAR(u->dpi);
    u->n[0] = u->n[1] = u->b[0] = u->b[1] = 0;
}

static int add_attr(PyObject *obj, PyObject *name, long long by) {
    long long x;
    return by == 0 ? 0 : get_ll(obj, name, &x) < 0 ? -1 : set_ll(obj, name, x + by);
}

/* The run's counters into the connection and the batch; the run is cleared (0, -1) */
static int run_end(Rec *r, Run *u, int out_dir, int in_dir) {
    long long n = u->n[0] + u->n[1], b = u->b[0] + u->b[1];
    PyObject *t = NULL, *v, *sec = NULL;
    int ret = -1, i;
    if (u->conn == NULL) return 0;
    if (n == 0) goto ok;
    if (add_attr(u->conn, a_pout, u->n[1]) < 0 || add_attr(u->conn, a_bout, u->b[1]) < 0 ||
        add_attr(u->conn, a_pin, u->n[0]) < 0 || add_attr(u->conn, a_bin, u->b[0]) < 0 ||
        PyObject_SetAttr(u->conn, a_last, u->last) < 0 ||
        PyDict_SetItem(r->dirty, u->k, u->conn) < 0)
        goto done;
    if ((sec = PyLong_FromLongLong(u->sec)) == NULL) goto done;
    if (u->lab != Py_None) {
        v = PyDict_GetItemWithError(r->procs, u->process_id);
        if (v == NULL) {
            PyObject *proc;
            if (PyErr_Occurred() || (proc = PyObject_GetAttr(u->lab, a_proc)) == NULL)
                goto done;
            v = Py_BuildValue("[NLL]", proc, n, b);
            if (v == NULL || PyDict_SetItem(r->procs, u->process_id, v) < 0) {
                Py_XDECREF(v);
                goto done;
            }
            Py_DECREF(v);
        } else if (!PyList_Check(v) || PyList_GET_SIZE(v) < 3 || list_add(v, 1, n) < 0 ||
                   list_add(v, 2, b) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "record: a process counter is not a list");
            goto done;
        }
        if ((t = PyTuple_Pack(3, u->pid, u->tid, u->process_id)) == NULL) goto done;
        v = PyDict_GetItemWithError(r->threads, t);
        if (v == NULL && PyErr_Occurred()) goto done;
        {
            long long x = v == NULL ? 0 : PyLong_AsLongLong(v);
            if (x == -1 && PyErr_Occurred()) goto done;
            if ((v = PyLong_FromLongLong(x + n)) == NULL) goto done;
        }
        i = PyDict_SetItem(r->threads, t, v);
        Py_DECREF(v);
        Py_CLEAR(t);
        if (i < 0) goto done;
        for (i = 0; i < 2; i++) {   /* by direction, the run's first one first */
            int dir = i == 0 ? u->first_dir : !u->first_dir;
            if (u->n[dir] == 0) continue;
            t = Py_BuildValue("(OOi)", u->process_id, sec, dir ? out_dir : in_dir);
            if (t == NULL || count2(r->procsec, t, u->n[dir], u->b[dir]) < 0) goto done;
            Py_CLEAR(t);
        }
    }
    /* one aggregate per (flow, second), expanded at flush time */
    if ((t = PyTuple_Pack(2, u->conn, sec)) == NULL) goto done;
    v = PyDict_GetItemWithError(r->flowsec, t);
    if (v == NULL) {
        if (PyErr_Occurred() || (v = Py_BuildValue("[LLOO]", n, b, u->first, u->last)) == NULL)
            goto done;
        i = PyDict_SetItem(r->flowsec, t, v);
        Py_DECREF(v);
        if (i < 0) goto done;
    } else if (!PyList_Check(v) || PyList_GET_SIZE(v) < 4 || list_add(v, 0, n) < 0 ||
               list_add(v, 1, b) < 0 || (Py_INCREF(u->last), PyList_SetItem(v, 3, u->last)) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "record: a flow counter is not a list");
        goto done;
    }
ok:
    ret = 0;
done:
    Py_XDECREF(t);
    Py_XDECREF(sec);
    run_clear(u);
    return ret;
}

/* Start a run for `conn` (a borrowed reference) with label `lab`: its id, local end and
 * the label's ids read once (0, -1) */
static int run_start(Run *u, PyObject *ref, PyObject *lab, PyObject *conn, long long sec) {
    u->ref = Py_NewRef(ref);
    u->lab = Py_NewRef(lab);
    u->sec = sec;
    u->conn = Py_NewRef(conn);
    if ((u->k = PyObject_GetAttr(conn, a_id)) == NULL ||
        (u->local = PyObject_GetAttr(conn, a_local)) == NULL)
        return -1;
    if (!PyTuple_Check(u->local) || PyTuple_GET_SIZE(u->local) != 2) {
        PyErr_SetString(PyExc_TypeError, "record: a connection's local end is not a pair");
        return -1;
    }
    if (lab == Py_None) {
        u->process_id = Py_NewRef(Py_None);
        u->pid = Py_NewRef(zero);
        u->tid = Py_NewRef(zero);
        return 0;
    }
    if ((u->process_id = PyObject_GetAttr(lab, a_process_id)) == NULL ||
        (u->pid = PyObject_GetAttr(lab, a_pid)) == NULL ||
        (u->tid = PyObject_GetAttr(lab, a_tid)) == NULL)
        return -1;
    return 0;
}

/* The labeller's c_feed: (module, process, extra_possible, cap, pending, settled), or None
 * (nDPI is then fed by Python). 0 or -1. */
static int dpi_load(Rec *r) {
    PyObject *f = PyObject_GetAttr(r->labeller, a_c_feed);
    unsigned long long mod, proc, extra;
    int ok;
    if (f == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        return 0;
    }
    ok = f == Py_None || PyArg_ParseTuple(f, "KKKIO!O!", &mod, &proc, &extra, &r->dpi_cap,
                                          &PyDict_Type, &r->pending, &PyList_Type,
                                          &r->settled);
    if (!ok || f == Py_None || !mod || !proc || !extra) {
        r->pending = r->settled = NULL;
        Py_DECREF(f);
        return ok ? 0 : -1;
    }
    Py_INCREF(r->pending);   /* (held by the tuple, held by the labeller: taken before) */
    Py_INCREF(r->settled);
    Py_DECREF(f);
    r->dpi_mod = (void *)(uintptr_t)mod;
    r->dpi_process = (dpi_process_fn)(uintptr_t)proc;
    r->dpi_extra = (dpi_extra_fn)(uintptr_t)extra;
    return 0;
}

/* The Recorder's state, read once a call and only when a packet needs it: a call that
 * hands its first packet back (short flows, DNS: every packet may be Python's) costs no
 * more than its checks. 1 read, 0 every packet is Python's, -1 error. */
static int rec_load(Rec *r) {
    PyObject *rec = r->rec;
    if (r->state != REC_UNREAD) return r->state == REC_READ;
    /* a failed write, the extraction feed, EPB framing: every packet is Python's */
    if (attr_is_none(rec, a_failure) != 1 || attr_is_none(rec, a_on_tcp) != 1 ||
        attr_is_none(rec, a_epb_divs) != 1) {
        if (PyErr_Occurred()) return -1;
        r->state = REC_PYTHON;
        return 0;
    }
    if ((r->batch = PyObject_GetAttr(rec, a_batch)) == NULL ||
        (r->rows = PyObject_GetAttr(r->batch, a_rows)) == NULL ||
        (r->buf = PyObject_GetAttr(r->batch, a_buf)) == NULL ||
        (r->dirty = PyObject_GetAttr(r->batch, a_dirty)) == NULL ||
        (r->procs = PyObject_GetAttr(r->batch, a_procs)) == NULL ||
        (r->threads = PyObject_GetAttr(r->batch, a_threads)) == NULL ||
        (r->procsec = PyObject_GetAttr(r->batch, a_procsec)) == NULL ||
        (r->flowsec = PyObject_GetAttr(r->batch, a_flowsec)) == NULL ||
        (r->conns = PyObject_GetAttr(rec, a_conns)) == NULL ||
        (r->labeller = PyObject_GetAttr(rec, a_labeller)) == NULL ||
        get_ll(rec, a_next_id, &r->next_id) < 0 || get_ll(rec, a_packets, &r->packets) < 0 ||
        get_ll(rec, a_bytes, &r->bytes) < 0 ||
        get_ll(rec, a_batch_packets, &r->batch_packets) < 0 ||
        get_ll(rec, a_batch_bytes, &r->batch_bytes) < 0)
        return -1;
    if (!PyList_Check(r->rows) || !PyByteArray_Check(r->buf) || !PyDict_Check(r->dirty) ||
        !PyDict_Check(r->procs) || !PyDict_Check(r->threads) || !PyDict_Check(r->procsec) ||
        !PyDict_Check(r->flowsec) || !PyDict_Check(r->conns)) {
        PyErr_SetString(PyExc_TypeError, "record: not a Recorder's batch");
        return -1;
    }
    if (r->labeller != Py_None && dpi_load(r) < 0) return -1;
    r->state = REC_READ;
    return 1;
}

static void rec_clear(Rec *r) {
    Py_CLEAR(r->batch);
    Py_CLEAR(r->rows);
    Py_CLEAR(r->buf);
    Py_CLEAR(r->dirty);
    Py_CLEAR(r->procs);
    Py_CLEAR(r->threads);
    Py_CLEAR(r->procsec);
    Py_CLEAR(r->flowsec);
    Py_CLEAR(r->conns);
    Py_CLEAR(r->labeller);
    Py_CLEAR(r->pending);
    Py_CLEAR(r->settled);
}

/* The nDPI state of `conn` (not labelled yet) if its packet `d` can be fed here: 0 with
 * *dpi set (borrowed: the labeller's pending dict holds it), 1 when the packet is Python's
 * (no state to feed, nDPI done with it but not named yet, no IP header), -1 error */
static int dpi_state(Rec *r, PyObject *conn, PyObject *d, PyObject **dpi) {
    PyObject *id, *p, *st, *l3;
    DpiState *ds;
    long long off;
    if (r->pending == NULL || PyTuple_GET_SIZE(d) < 18) return 1;
    if ((id = PyObject_GetAttr(conn, a_id)) == NULL) return -1;
    p = PyDict_GetItemWithError(r->pending, id);
    Py_DECREF(id);
    if (p == NULL) return PyErr_Occurred() ? -1 : 1;
    if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 2) return 1;
    st = PyTuple_GET_ITEM(p, 1);
    if (!PyByteArray_Check(st) || PyByteArray_GET_SIZE(st) != (Py_ssize_t)sizeof(DpiState))
        return 1;
    ds = (DpiState *)PyByteArray_AS_STRING(st);
    l3 = PyTuple_GET_ITEM(d, 17);   /* l3_off */
    if (ds->done || !ds->flow || !PyLong_Check(l3)) return 1;
    off = PyLong_AsLongLong(l3);
    if (off < 0) return PyErr_Occurred() ? -1 : 1;
    *dpi = st;
    return 0;
}

/* AppLabeller.feed's step for a packet recorded here (its connection's state `dpi`): a
 * TCP packet without payload teaches nDPI nothing (those with SYN, FIN or RST are
 * Python's); the packet that settles the label puts the connection on `settled`. 0, -1. */
static int dpi_feed(Rec *r, PyObject *dpi, PyObject *conn, PyObject *d, PyObject *data,
                    long long proto, long long ts) {
    DpiState *ds = (DpiState *)PyByteArray_AS_STRING(dpi);
    long long off, size = PyBytes_GET_SIZE(data);
    if (PyTuple_GET_SIZE(d) < 18 || !PyLong_Check(PyTuple_GET_ITEM(d, 17))) return 0;
    off = PyLong_AsLongLong(PyTuple_GET_ITEM(d, 17));
    if (off < 0) PyErr_Clear();   /* (-1 on overflow: not fed, as for no IP header) */
    if (ds->done || !ds->flow || off < 0 || off >= size) return 0;
    if (proto == TCP && PyObject_Not(PyTuple_GET_ITEM(d, 14)) == 1) return 0;   /* payload_len */
    if (!dpi_step(r->dpi_mod, r->dpi_process, r->dpi_extra, r->dpi_cap, ds,
                  (const unsigned char *)PyBytes_AS_STRING(data) + off, size - off,
                  (uint64_t)(ts / 1000000)))
        return 0;
    return PyList_Append(r->settled, conn);
}

/* The connection of a packet Recorder.add would record without a decision of its own (a
 * borrowed reference), NULL when it is Python's (*err set on an error); *dpi: its nDPI
 * state while the packet is to be fed here, else NULL */
static PyObject *plain_conn(Rec *r, PyObject *lab, PyObject *d, long long proto, int *err,
                            PyObject **dpi) {
    PyObject *ck, *conn, *state;
    int python;
    ck = conn_key(PyTuple_GET_ITEM(d, 1), PyTuple_GET_ITEM(d, 2), PyTuple_GET_ITEM(d, 4),
                  PyTuple_GET_ITEM(d, 3), PyTuple_GET_ITEM(d, 5));
    if (ck == NULL) {
        *err = 1;
        return NULL;
    }
    conn = PyDict_GetItemWithError(r->conns, ck);   /* borrowed: conns keeps it */
    Py_DECREF(ck);
    if (conn == NULL) {   /* a new flow: Recorder.conn_for makes its connection */
        *err = PyErr_Occurred() != NULL;
        return NULL;
    }
    /* the connection's first label, a TCP state change, nDPI still looking: Python's */
    if (lab != Py_None && (python = attr_is_none(conn, a_label)) != 0) goto python;
    if ((state = PyObject_GetAttr(conn, a_state)) == NULL) {
        python = -1;
        goto python;
    }
    if (proto == TCP)   /* _tcp_state: without SYN/FIN/RST only these states change */
        python = !PyUnicode_Check(state) || PyUnicode_GET_LENGTH(state) == 0 ||
                 PyUnicode_Compare(state, s_syn_sent) == 0 ||
                 PyUnicode_Compare(state, s_syn_received) == 0;
    else
        python = PyObject_Not(state);   /* "": it becomes ACTIVE */
    Py_DECREF(state);
    *dpi = NULL;
    /* nDPI still looking: fed here when its state can be (dpi_state), else Python's */
    if (python == 0 && r->labeller != Py_None && (python = attr_is_none(conn, a_app)) == 1)
        python = dpi_state(r, conn, d, dpi);
    if (python == 0) return conn;
python:
    if (python < 0 || PyErr_Occurred()) *err = 1;
    return NULL;
}

/* record_one for the packet's label `lab` (held by the caller); -2: the previous run
 * could not be ended (this packet untouched) */
static int record_label(Rec *r, Run *u, PyObject *item, PyObject *lab, int out_dir,
                        int in_dir, int *attributed);

/* Record item `item` if the Python path would record it without a decision of its own:
 * 1 recorded (*attributed set), 0 left to Python (nothing changed), -1 an error recording
 * it, -2 an error ending the run before it (it is untouched). */
/* Target.pick for a process or thread capture (target: (pids, children, thread_id)): the
 * label to record (borrowed from `labels`), NULL when the packet is not the capture's
 * (*err set on an error). A child's pid joins `pids`, as in Python. */
static PyObject *pick(PyObject *labels, PyObject *target, int *err) {
    PyObject *pids = PyTuple_GET_ITEM(target, 0), *thread_id = PyTuple_GET_ITEM(target, 2);
    int children = PyObject_IsTrue(PyTuple_GET_ITEM(target, 1)), thread = 0;
    Py_ssize_t i, n = PySequence_Fast_GET_SIZE(labels);
    if (children < 0 || (thread = PyObject_IsTrue(thread_id)) < 0) goto fail;
    for (i = 0; i < n; i++) {
        PyObject *lab = PySequence_Fast_GET_ITEM(labels, i), *pid, *v;
        int in;
        if ((pid = PyObject_GetAttr(lab, a_pid)) == NULL) goto fail;
        in = PySet_Contains(pids, pid);
        if (in == 0 && children) {   /* lab.proc.get("ppid") in pids */
            PyObject *proc = PyObject_GetAttr(lab, a_proc);
            v = proc == NULL ? NULL : PyObject_CallMethodOneArg(proc, s_get, s_ppid);
            Py_XDECREF(proc);
            in = v == NULL ? -1 : PySet_Contains(pids, v);
            Py_XDECREF(v);
        }
        if (in > 0 && children && PySet_Add(pids, pid) < 0) in = -1;
        Py_DECREF(pid);
        if (in < 0) goto fail;
        if (in == 0) continue;
        if (thread) {   /* lab.tid != thread_id: the next label */
            int other;
            if ((v = PyObject_GetAttr(lab, a_tid)) == NULL) goto fail;
            other = PyObject_RichCompareBool(v, thread_id, Py_NE);
            Py_DECREF(v);
            if (other < 0) goto fail;
            if (other) continue;
        }
        return lab;
    }
    return NULL;
fail:
    *err = 1;
    return NULL;
}

/* labels.originator_final: the first label names the src end of `key5` with its thread.
 * 1, 0, or -1 with an exception. */
static int originator_final(PyObject *labels, PyObject *key5) {
    PyObject *first, *tid, *local;
    int ok;
    if (!PyList_Check(labels) || PyList_GET_SIZE(labels) == 0 || !PyTuple_Check(key5) ||
        PyTuple_GET_SIZE(key5) < 3)
        return 0;
    first = PyList_GET_ITEM(labels, 0);
    Py_INCREF(first);
    if ((tid = PyObject_GetAttr(first, a_tid)) == NULL) { Py_DECREF(first); return -1; }
    ok = PyObject_IsTrue(tid);
    Py_DECREF(tid);
    if (ok != 1) { Py_DECREF(first); return ok; }
    if ((local = PyObject_GetAttr(first, a_local)) == NULL) { Py_DECREF(first); return -1; }
    Py_DECREF(first);
    ok = 0;
    if (PyTuple_Check(local) && PyTuple_GET_SIZE(local) == 2) {
        ok = PyObject_RichCompareBool(PyTuple_GET_ITEM(local, 0), PyTuple_GET_ITEM(key5, 1), Py_EQ);
        if (ok == 1)
            ok = PyObject_RichCompareBool(PyTuple_GET_ITEM(local, 1), PyTuple_GET_ITEM(key5, 2),
                                          Py_EQ);
    }
    Py_DECREF(local);
    return ok;
}

static int record_one(Rec *r, Run *u, PyObject *item, PyObject *pending, PyObject *target,
                      int out_dir, int in_dir, int *attributed) {
    PyObject *ref, *labels, *lab = Py_None;
    int ret;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) return 0;
    ref = PyTuple_GET_ITEM(item, 5);
    /* an entry that came with the packet, answered, no second look due */
    if (PyTuple_GET_ITEM(item, 4) == Py_None || !PyList_Check(ref) || PyList_GET_SIZE(ref) < 4)
        return 0;
    labels = PyList_GET_ITEM(ref, 0);
    if (labels == pending) return 0;
    switch (PyObject_IsTrue(PyList_GET_ITEM(ref, 3))) {
    case -1: return -1;
    case 1:   /* a second look due: only a system capture whose label it cannot change goes on */
        if (target != Py_None || PyList_GET_SIZE(ref) < 5) return 0;
        switch (originator_final(labels, PyList_GET_ITEM(ref, 4))) {
        case -1: return -1;
        case 0: return 0;
        }
    }
    if (!PyList_Check(labels) && !PyTuple_Check(labels)) return 0;
    if (target == Py_None) {   /* Target.pick of a system capture: the first label */
        if (PySequence_Fast_GET_SIZE(labels)) lab = PySequence_Fast_GET_ITEM(labels, 0);
    } else {
        int err = 0;
        Py_INCREF(labels);   /* (held: pick may run code that lets other threads in) */
        lab = pick(labels, target, &err);
        Py_XINCREF(lab);
        Py_DECREF(labels);
        if (err) return -1;
        if (lab == NULL) return SKIPPED;
        Py_DECREF(lab);   /* (still held by `labels`, held by the entry, held by the item) */
    }
    /* held while it is used: a collection running a finalizer could let the resolver
     * thread replace the entry's labels meanwhile */
    Py_INCREF(lab);
    ret = record_label(r, u, item, lab, out_dir, in_dir, attributed);
    Py_DECREF(lab);
    return ret;
}

static int record_label(Rec *r, Run *u, PyObject *item, PyObject *lab, int out_dir,
                        int in_dir, int *attributed) {
    PyObject *ts_o, *iface, *data, *d, *ref, *src, *sport, *conn, *row, *dpi = NULL;
    long long ts, size, proto, sec;
    Py_ssize_t off;
    int out, err = 0;
    ts_o = PyTuple_GET_ITEM(item, 0);
    iface = PyTuple_GET_ITEM(item, 1);
    data = PyTuple_GET_ITEM(item, 2);
    d = PyTuple_GET_ITEM(item, 3);
    ref = PyTuple_GET_ITEM(item, 5);
    if (!PyBytes_Check(data) || !PyTuple_Check(d) || PyTuple_GET_SIZE(d) < 15 ||
        !PyLong_Check(ts_o))
        return 0;
    ts = PyLong_AsLongLong(ts_o);
    if (ts < 0) {   /* (or past int64: Recorder.add keeps the exact value as text) */
        PyErr_Clear();
        return 0;
    }
    src = PyTuple_GET_ITEM(d, 2);
    sport = PyTuple_GET_ITEM(d, 4);
    if (src == Py_None || PyTuple_GET_ITEM(d, 3) == Py_None ||
        !PyLong_Check(PyTuple_GET_ITEM(d, 1)) || !PyLong_Check(sport))
        return 0;
    proto = PyLong_AsLongLong(PyTuple_GET_ITEM(d, 1));
    if (proto == TCP) {
        PyObject *flags = PyTuple_GET_ITEM(d, 6);
        /* SYN, FIN, RST: the state machine is Python's */
        if (!PyLong_Check(flags) || PyLong_AsLongLong(flags) & 0x07) return 0;
    } else if (proto == UDP) {   /* a DNS answer is read in Python */
        long long sp = PyLong_AsLongLong(sport);
        int dns = PyObject_IsTrue(PyTuple_GET_ITEM(d, 14));
        if (dns < 0) return -1;
        if (dns && (sp == 53 || sp == 5353)) return 0;
    } else {
        return 0;
    }
    sec = ts / SECOND_NS;
    /* The run goes on: the same flow entry, label and second. An entry belongs to one flow
     * (Attribution.entry keeps one per flow key, the feeding thread one per packet key and
     * frame), so the same entry means the same connection. */
    if (u->conn != NULL && ref == u->ref && lab == u->lab && sec == u->sec) {
        conn = u->conn;
    } else {
        int read = rec_load(r);   /* (a run goes on only once it was read) */
        if (read <= 0) return read < 0 ? -2 : 0;   /* (an error: this packet untouched) */
        if ((conn = plain_conn(r, lab, d, proto, &err, &dpi)) == NULL) return err ? -1 : 0;
        if (conn != u->conn || lab != u->lab || sec != u->sec) {
            if (run_end(r, u, out_dir, in_dir) < 0) return -2;   /* this packet untouched */
            if (run_start(u, ref, lab, conn, sec) < 0) return -1;
        }
        Py_SETREF(u->ref, Py_NewRef(ref));
        Py_XSETREF(u->dpi, Py_XNewRef(dpi));
    }
    /* recorded from here on (Recorder.add) */
    if (u->dpi != NULL && dpi_feed(r, u->dpi, conn, d, data, proto, ts) < 0) return -1;
    size = PyBytes_GET_SIZE(data);
    if ((out = PyObject_RichCompareBool(sport, PyTuple_GET_ITEM(u->local, 1), Py_EQ)) < 0)
        return -1;
    if (out && (out = PyObject_RichCompareBool(src, PyTuple_GET_ITEM(u->local, 0), Py_EQ)) < 0)
        return -1;
    off = PyByteArray_GET_SIZE(r->buf);
    if (PyByteArray_Resize(r->buf, off + size) < 0) return -1;
    memcpy(PyByteArray_AS_STRING(r->buf) + off, PyBytes_AS_STRING(data), (size_t)size);
    if ((row = packet_row(r->next_id, ts_o, size, iface, d, out ? out_dir : in_dir, u->k,
                          u->process_id, u->pid, u->tid, off)) == NULL)
        return -1;
    err = PyList_Append(r->rows, row);
    Py_DECREF(row);
    if (err < 0) return -1;
    if (u->n[0] + u->n[1] == 0) {
        u->first = Py_NewRef(ts_o);
        u->first_dir = out;
    }
    u->n[out]++;
    u->b[out] += size;
    Py_XSETREF(u->last, Py_NewRef(ts_o));
    *attributed = lab != Py_None;
    r->next_id++;
    r->packets++;
    r->bytes += size;
    return 1;
}

/* The exception set now into *failure (the first one only: a later one is dropped) */
static void take_error(PyObject **failure) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (*failure != NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    *failure = value != NULL ? value : Py_NewRef(Py_None);
}

PyDoc_STRVAR(record_doc,
"record(items, i, end, recorder, pending, out_dir, in_dir[, target])\n"
"    -> (i, kept, attributed, full, error)\n\n"
"Record items[i:end] into `recorder` (capture/recorder.py) as LiveCapture._release\n"
"would for its Target: None, a system capture; (pids, children, thread_id), a process or\n"
"thread capture (packets not the capture's are passed, uncounted). As _release would,\n"
"up to the first item the Python path must decide about\n"
"(returned as i), or up to the packet that fills the batch (full: flush it). error: the\n"
"exception recording a packet raised (i is past it; the caller raises it), or None.\n"
"`pending` is attribution's PENDING; out_dir / in_dir the directions' values.");

static PyObject *record(PyObject *self, PyObject *args) {
    PyObject *items, *rec, *pending, *v, *failure = NULL, *target = Py_None;
    Py_ssize_t i, end;
    int out_dir, in_dir, full = 0;
    long long kept = 0, attributed = 0;
    Rec r = {0};
    Run u = {0};
    (void)self;
    if (!PyArg_ParseTuple(args, "O!nnOOii|O", &PyList_Type, &items, &i, &end, &rec, &pending,
                          &out_dir, &in_dir, &target))
        return NULL;
    if (target != Py_None && !(PyTuple_Check(target) && PyTuple_GET_SIZE(target) == 3 &&
                               PyAnySet_Check(PyTuple_GET_ITEM(target, 0)))) {
        PyErr_SetString(PyExc_TypeError, "record: target must be (pids, children, thread_id)");
        return NULL;
    }
    if (i < 0) {
        PyErr_SetString(PyExc_ValueError, "record: a negative index");
        return NULL;
    }
    if (end > PyList_GET_SIZE(items)) end = PyList_GET_SIZE(items);
    r.rec = rec;
    for (; i < end; i++) {
        int a = 0, got = record_one(&r, &u, PyList_GET_ITEM(items, i), pending, target,
                                    out_dir, in_dir, &a);
        if (got < 0) {   /* handed back with the packets recorded: the caller raises it */
            take_error(&failure);
            if (got == -1) i++;   /* as in Python: the packet that failed is passed */
            break;
        }
        if (got == 0) break;
        if (got == SKIPPED) continue;
        kept++;
        attributed += a;
        if (PyList_GET_SIZE(r.rows) >= r.batch_packets ||
            PyByteArray_GET_SIZE(r.buf) >= r.batch_bytes) {
            full = 1;
            i++;
            break;
        }
    }
    /* the counters of what was recorded, before Python sees the batch again; their error
     * is handed back too (packets are recorded: returning none would record them again) */
    if (u.conn != NULL && run_end(&r, &u, out_dir, in_dir) < 0) take_error(&failure);
    if (kept && (set_ll(rec, a_next_id, r.next_id) < 0 || set_ll(rec, a_packets, r.packets) < 0 ||
                 set_ll(rec, a_bytes, r.bytes) < 0))
        take_error(&failure);
    run_clear(&u);
    rec_clear(&r);
    v = Py_BuildValue("(nLLiO)", i, kept, attributed, full, failure != NULL ? failure : Py_None);
    Py_XDECREF(failure);
    return v;
}

static PyMethodDef methods[] = {
    {"record", record, METH_VARARGS, record_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_record",
    "The live pipeline's common packet recorded in C (capture/live.py).", -1, methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__record(void) {
    INTERN(a_failure, "failure"); INTERN(a_on_tcp, "on_tcp"); INTERN(a_epb_divs, "epb_divs");
    INTERN(a_labeller, "labeller"); INTERN(a_batch, "batch"); INTERN(a_conns, "conns");
    INTERN(a_next_id, "next_id"); INTERN(a_packets, "packets"); INTERN(a_bytes, "bytes");
    INTERN(a_batch_packets, "batch_packets"); INTERN(a_batch_bytes, "batch_bytes");
    INTERN(a_rows, "rows"); INTERN(a_buf, "buf"); INTERN(a_dirty, "dirty");
    INTERN(a_procs, "procs"); INTERN(a_threads, "threads"); INTERN(a_procsec, "procsec");
    INTERN(a_flowsec, "flowsec"); INTERN(a_label, "label"); INTERN(a_local, "local");
    INTERN(a_state, "state"); INTERN(a_app, "app"); INTERN(a_id, "id"); INTERN(a_pout, "pout");
    INTERN(a_bout, "bout"); INTERN(a_pin, "pin"); INTERN(a_bin, "bin"); INTERN(a_last, "last");
    INTERN(a_process_id, "process_id"); INTERN(a_pid, "pid"); INTERN(a_tid, "tid");
    INTERN(a_proc, "proc"); INTERN(a_c_feed, "c_feed"); INTERN(s_syn_sent, "SYN_SENT");
    INTERN(s_syn_received, "SYN_RECEIVED"); INTERN(s_get, "get"); INTERN(s_ppid, "ppid");
    if ((one = PyLong_FromLong(1)) == NULL || (zero = PyLong_FromLong(0)) == NULL) return NULL;
    return PyModule_Create(&module);
}
