/* Usage accounting's per-packet work in C (usage/counting.py is the reference and the
 * fallback): a pcap handle opened here, read with pcap_dispatch while the GIL is released,
 * each packet counted per raw 5-tuple in a C table with counting.py's rules (wire length =
 * link header + IP total length; ports only for unfragmented TCP/UDP; a TCP SYN is flags &
 * (SYN|ACK) == SYN). Python is called only for what needs Python, after each batch, with
 * the GIL taken once for the batch and the events in packet order:
 *   - a flow with ports first seen since the last take(): on_new(key5, syn, ts) -> nDPI
 *     state or None (counting.py: begin, then on_flow);
 *   - a TCP SYN of a flow already seen: on_flow(key5, True);
 *   - a packet of a flow still being labelled (its state's item 0 true):
 *     feed(st, pkt, off, l4, end, proto, ts), the packet copied out of the ring.
 * take() swaps the table and returns counting.py's dict: raw (proto, src, sport, dst,
 * dport) -> [packets, bytes, key5, st]. A mutex guards the table: the reader holds it over
 * a batch (dispatch, then the events with the GIL), take() waits for it without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <pcap/pcap.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define BATCH 2048 /* packets per pcap_dispatch: bounds the packets copied for Python */

typedef struct {
    uint8_t proto, alen; /* alen: 4 or 16 */
    uint16_t sport, dport;
    uint8_t src[16], dst[16];
} Key;

typedef struct {
    Key k;
    uint64_t packets, bytes;
    PyObject *key5, *st; /* owned; key5 NULL until built, st NULL = None */
    uint8_t pending;     /* first seen in this batch, on_new not called yet */
    uint8_t feeding;     /* st given: its packets go to feed until st[0] is false */
} Flow;

typedef struct {
    uint32_t flow;
    uint8_t isnew, syn, proto, copied;
    int64_t ts;
    uint32_t off, l4, end, caplen;
    size_t at; /* the packet's copy in the arena */
} Event;

typedef struct {
    Flow *flows;
    uint32_t n, cap;
    uint32_t *slots; /* index + 1 into flows, 0 empty */
    uint32_t nslots; /* power of two */
} Table;

typedef struct {
    PyObject_HEAD
    pcap_t *p;
    int type_at, hdr; /* type_at < 0: the frame is IP itself */
    int linked, nano;
    pthread_mutex_t mu;
    Table t;
    Event *ev;
    size_t nev, evcap;
    uint8_t *arena;
    size_t used, arcap;
    int want_pkts, oom;
} Handle;

static void table_free(Table *t) {
    for (uint32_t i = 0; i < t->n; i++) {
        Py_XDECREF(t->flows[i].key5);
        Py_XDECREF(t->flows[i].st);
    }
    PyMem_RawFree(t->flows);
    PyMem_RawFree(t->slots);
    memset(t, 0, sizeof(*t));
}

static uint64_t key_hash(const Key *k) {
    const uint8_t *b = (const uint8_t *)k;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < sizeof(Key); i++) h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

static int table_grow(Table *t) {
    uint32_t ns = t->nslots ? t->nslots * 2 : 1024;
    uint32_t *s = PyMem_RawCalloc(ns, sizeof(uint32_t));
    if (!s) return -1;
    for (uint32_t i = 0; i < t->n; i++) {
        uint64_t h = key_hash(&t->flows[i].k) & (ns - 1);
        while (s[h]) h = (h + 1) & (ns - 1);
        s[h] = i + 1;
    }
    PyMem_RawFree(t->slots);
    t->slots = s;
    t->nslots = ns;
    return 0;
}

/* The flow's index, *isnew set when it was added; -1 when memory ran out. */
static int64_t table_get(Table *t, const Key *k, int *isnew) {
    if ((uint64_t)(t->n + 1) * 2 > t->nslots && table_grow(t) < 0) return -1;
    uint64_t h = key_hash(k) & (t->nslots - 1);
    while (t->slots[h]) {
        uint32_t i = t->slots[h] - 1;
        if (!memcmp(&t->flows[i].k, k, sizeof(Key))) {
            *isnew = 0;
            return i;
        }
        h = (h + 1) & (t->nslots - 1);
    }
    if (t->n == t->cap) {
        uint32_t nc = t->cap ? t->cap * 2 : 256;
        Flow *f = PyMem_RawRealloc(t->flows, (size_t)nc * sizeof(Flow));
        if (!f) return -1;
        t->flows = f;
        t->cap = nc;
    }
    Flow *f = &t->flows[t->n];
    memset(f, 0, sizeof(*f));
    f->k = *k;
    t->slots[h] = ++t->n;
    *isnew = 1;
    return t->n - 1;
}

static int push_event(Handle *self, const Event *e, const u_char *pkt) {
    if (self->nev == self->evcap) {
        size_t nc = self->evcap ? self->evcap * 2 : 256;
        Event *ev = PyMem_RawRealloc(self->ev, nc * sizeof(Event));
        if (!ev) return -1;
        self->ev = ev;
        self->evcap = nc;
    }
    Event *d = &self->ev[self->nev];
    *d = *e;
    if (e->copied) {
        if (self->used + e->caplen > self->arcap) {
            size_t nc = self->arcap ? self->arcap : 1 << 16;
            while (nc < self->used + e->caplen) nc *= 2;
            uint8_t *a = PyMem_RawRealloc(self->arena, nc);
            if (!a) return -1;
            self->arena = a;
            self->arcap = nc;
        }
        memcpy(self->arena + self->used, pkt, e->caplen);
        d->at = self->used;
        self->used += e->caplen;
    }
    self->nev++;
    return 0;
}

static inline unsigned be16(const u_char *p) { return ((unsigned)p[0] << 8) | p[1]; }

/* counting.py's on_packet, without the GIL */
static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *pkt) {
    Handle *self = (Handle *)user;
    uint32_t len = h->caplen;
    uint32_t off = self->hdr, l4, end;
    int version;
    Key k;
    memset(&k, 0, sizeof(k));
    if (self->type_at < 0) {
        version = len > 0 ? pkt[0] >> 4 : 0;
    } else {
        if (len < (uint32_t)self->type_at + 2) return;
        unsigned etype = be16(pkt + self->type_at);
        if (etype == 0x8100 && self->type_at == 12) {
            if (len < 18) return;
            etype = be16(pkt + 16);
            off += 4;
        }
        version = etype == 0x0800 ? 4 : etype == 0x86DD ? 6 : 0;
    }
    unsigned frag;
    if (version == 4) {
        if (len < off + 20) return;
        k.proto = pkt[off + 9];
        k.alen = 4;
        end = off + be16(pkt + off + 2);
        memcpy(k.src, pkt + off + 12, 4);
        memcpy(k.dst, pkt + off + 16, 4);
        frag = be16(pkt + off + 6) & 0x1FFF;
        l4 = off + (pkt[off] & 15) * 4;
    } else if (version == 6) {
        if (len < off + 40) return;
        k.proto = pkt[off + 6];
        k.alen = 16;
        end = off + 40 + be16(pkt + off + 4);
        memcpy(k.src, pkt + off + 8, 16);
        memcpy(k.dst, pkt + off + 24, 16);
        frag = 0;
        l4 = off + 40;
    } else {
        return;
    }
    int syn = 0;
    if ((k.proto == 6 || k.proto == 17) && !frag && len >= l4 + 4) {
        k.sport = be16(pkt + l4);
        k.dport = be16(pkt + l4 + 2);
        if (k.proto == 6 && len > l4 + 13) syn = (pkt[l4 + 13] & 0x12) == 0x02;
    }
    int isnew;
    int64_t i = table_get(&self->t, &k, &isnew);
    if (i < 0) {
        self->oom = 1;
        return;
    }
    Flow *f = &self->t.flows[i];
    int ports = k.sport || k.dport;
    Event e;
    memset(&e, 0, sizeof(e));
    e.flow = (uint32_t)i;
    e.syn = syn;
    e.proto = k.proto;
    e.ts = self->nano ? (int64_t)h->ts.tv_sec * 1000000000 + h->ts.tv_usec
                      : ((int64_t)h->ts.tv_sec * 1000000 + h->ts.tv_usec) * 1000;
    e.off = off;
    e.l4 = l4;
    e.end = end;
    e.caplen = len;
    if (isnew) {
        f->packets = 1;
        f->bytes = end;
        if (!ports) return;
        f->pending = 1;
        e.isnew = 1;
        e.copied = self->want_pkts;
    } else {
        f->packets++;
        f->bytes += end;
        if (!syn && !f->pending && !f->feeding) return;
        e.copied = self->want_pkts && (f->pending || f->feeding);
    }
    if (push_event(self, &e, pkt) < 0) self->oom = 1;
}

static PyObject *key5_of(const Key *k) {
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    int af = k->alen == 4 ? AF_INET : AF_INET6;
    if (!inet_ntop(af, k->src, a, sizeof(a)) || !inet_ntop(af, k->dst, b, sizeof(b))) {
        PyErr_SetString(PyExc_ValueError, "address not printable");
        return NULL;
    }
    return Py_BuildValue("(isisi)", k->proto, a, k->sport, b, k->dport);
}

/* keeps the first error, clears the rest: every event is still handled */
typedef struct {
    PyObject *type, *value, *tb;
} Err;

static void keep_error(Err *err) {
    if (!err->type) {
        PyErr_Fetch(&err->type, &err->value, &err->tb);
    } else {
        PyErr_Clear();
    }
}

static int still_feeding(Flow *f) {
    PyObject *s0 = PySequence_GetItem(f->st, 0);
    if (!s0) return -1;
    int r = PyObject_IsTrue(s0);
    Py_DECREF(s0);
    return r;
}

/* The batch's events, in order, with the GIL; 0, or -1 with the first error set. */
static int run_events(Handle *self, PyObject *on_new, PyObject *on_flow, PyObject *feed) {
    Err err = {NULL, NULL, NULL};
    for (size_t n = 0; n < self->nev; n++) {
        Event *e = &self->ev[n];
        Flow *f = &self->t.flows[e->flow];
        if (e->isnew) {
            f->pending = 0;
            f->key5 = key5_of(&f->k);
            if (!f->key5) {
                keep_error(&err);
                continue;
            }
            PyObject *st = PyObject_CallFunction(on_new, "OOL", f->key5,
                                                 e->syn ? Py_True : Py_False, e->ts);
            if (!st) {
                keep_error(&err);
                continue;
            }
            if (st == Py_None) {
                Py_DECREF(st);
            } else {
                f->st = st;
                f->feeding = feed != Py_None;
            }
        } else if (e->syn && f->key5) {
            PyObject *r = PyObject_CallFunctionObjArgs(on_flow, f->key5, Py_True, NULL);
            if (!r) keep_error(&err);
            Py_XDECREF(r);
        }
        if (!f->feeding || !e->copied) continue;
        int more = still_feeding(f);
        if (more <= 0) {
            if (more < 0) keep_error(&err);
            f->feeding = 0;
            continue;
        }
        PyObject *pkt = PyBytes_FromStringAndSize((const char *)self->arena + e->at,
                                                  e->caplen);
        PyObject *r = pkt ? PyObject_CallFunction(feed, "OOIIIiL", f->st, pkt, e->off,
                                                  e->l4, e->end, (int)e->proto, e->ts)
                          : NULL;
        if (!r) keep_error(&err);
        Py_XDECREF(r);
        Py_XDECREF(pkt);
    }
    self->nev = 0;
    self->used = 0;
    if (err.type) {
        PyErr_Restore(err.type, err.value, err.tb);
        return -1;
    }
    return 0;
}

static void lock_nogil(Handle *self) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    Py_END_ALLOW_THREADS
}

static PyObject *h_count(Handle *self, PyObject *args) {
    PyObject *on_new, *on_flow, *feed;
    if (!PyArg_ParseTuple(args, "OOO", &on_new, &on_flow, &feed)) return NULL;
    if (!self->p) return PyErr_Format(PyExc_OSError, "the handle is closed");
    if (!self->linked) return PyLong_FromLong(0);
    self->want_pkts = feed != Py_None;
    long total = 0;
    int n, failed = 0;
    do {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        n = pcap_dispatch(self->p, BATCH, on_packet, (u_char *)self);
        Py_END_ALLOW_THREADS
        if (run_events(self, on_new, on_flow, feed) < 0) failed = 1;
        pthread_mutex_unlock(&self->mu);
        if (n > 0) total += n;
        if (self->oom) {
            self->oom = 0;
            PyErr_NoMemory();
            return NULL;
        }
    } while (n == BATCH && !failed);
    if (failed) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_OSError, pcap_geterr(self->p));
        return NULL;
    }
    return PyLong_FromLong(total);
}

static PyObject *h_take(Handle *self, PyObject *noargs) {
    lock_nogil(self);
    Table t = self->t;
    memset(&self->t, 0, sizeof(self->t));
    pthread_mutex_unlock(&self->mu);
    PyObject *out = PyDict_New();
    for (uint32_t i = 0; out && i < t.n; i++) {
        Flow *f = &t.flows[i];
        if (!f->key5 && !(f->key5 = key5_of(&f->k))) goto fail;
        PyObject *raw = Py_BuildValue("(iy#iy#i)", f->k.proto, f->k.src, (Py_ssize_t)f->k.alen,
                                      f->k.sport, f->k.dst, (Py_ssize_t)f->k.alen, f->k.dport);
        PyObject *acc = Py_BuildValue("[KKOO]", (unsigned long long)f->packets,
                                      (unsigned long long)f->bytes, f->key5,
                                      f->st ? f->st : Py_None);
        if (!raw || !acc || PyDict_SetItem(out, raw, acc) < 0) {
            Py_XDECREF(raw);
            Py_XDECREF(acc);
            goto fail;
        }
        Py_DECREF(raw);
        Py_DECREF(acc);
    }
    table_free(&t);
    return out;
fail:
    table_free(&t);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *h_fileno(Handle *self, PyObject *noargs) {
    if (!self->p) return PyErr_Format(PyExc_OSError, "the handle is closed");
    return PyLong_FromLong(pcap_get_selectable_fd(self->p));
}

static PyObject *h_datalink(Handle *self, PyObject *noargs) {
    if (!self->p) return PyErr_Format(PyExc_OSError, "the handle is closed");
    return PyLong_FromLong(pcap_datalink(self->p));
}

static PyObject *h_stats(Handle *self, PyObject *noargs) {
    struct pcap_stat st;
    if (!self->p) return PyErr_Format(PyExc_OSError, "the handle is closed");
    if (pcap_stats(self->p, &st) < 0) {
        PyErr_SetString(PyExc_OSError, pcap_geterr(self->p));
        return NULL;
    }
    return Py_BuildValue("(III)", st.ps_recv, st.ps_drop, st.ps_ifdrop);
}

static PyObject *h_close(Handle *self, PyObject *noargs) {
    lock_nogil(self);
    if (self->p) pcap_close(self->p);
    self->p = NULL;
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static void h_dealloc(Handle *self) {
    if (self->p) pcap_close(self->p);
    table_free(&self->t);
    PyMem_RawFree(self->ev);
    PyMem_RawFree(self->arena);
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef h_methods[] = {
    {"count", (PyCFunction)h_count, METH_VARARGS,
     "count(on_new, on_flow, feed): read what is there; returns the packets read"},
    {"take", (PyCFunction)h_take, METH_NOARGS, "the counters since the last take"},
    {"fileno", (PyCFunction)h_fileno, METH_NOARGS, NULL},
    {"datalink", (PyCFunction)h_datalink, METH_NOARGS, NULL},
    {"stats", (PyCFunction)h_stats, METH_NOARGS, "(received, dropped, if_dropped)"},
    {"close", (PyCFunction)h_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "apppaccap.usage._usagecount.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_dealloc = (destructor)h_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = h_methods,
};

/* counting.py's LINKS */
static int link_of(int dlt, int *type_at, int *hdr) {
    switch (dlt) {
    case 1: *type_at = 12; *hdr = 14; return 1;
    case 113: *type_at = 14; *hdr = 16; return 1;
    case 276: *type_at = 0; *hdr = 20; return 1;
    case 12: case 101: case 228: case 229: *type_at = -1; *hdr = 0; return 1;
    default: return 0;
    }
}

static PyObject *wrap(pcap_t *p) {
    Handle *self = PyObject_New(Handle, &HandleType);
    if (!self) {
        pcap_close(p);
        return NULL;
    }
    self->p = p;
    self->linked = link_of(pcap_datalink(p), &self->type_at, &self->hdr);
    self->nano = pcap_get_tstamp_precision(p) == PCAP_TSTAMP_PRECISION_NANO;
    pthread_mutex_init(&self->mu, NULL);
    memset(&self->t, 0, sizeof(self->t));
    self->ev = NULL;
    self->nev = self->evcap = 0;
    self->arena = NULL;
    self->used = self->arcap = 0;
    self->want_pkts = self->oom = 0;
    return (PyObject *)self;
}

static PyObject *open_live(PyObject *mod, PyObject *args) {
    const char *name;
    int snaplen, buffer, timeout_ms;
    char eb[PCAP_ERRBUF_SIZE] = "";
    if (!PyArg_ParseTuple(args, "siii", &name, &snaplen, &buffer, &timeout_ms)) return NULL;
    pcap_t *p = pcap_create(name, eb);
    if (!p) return PyErr_Format(PyExc_OSError, "%s", eb);
    pcap_set_snaplen(p, snaplen);
    pcap_set_promisc(p, 0);
    pcap_set_timeout(p, timeout_ms);
    pcap_set_immediate_mode(p, 0);
    pcap_set_buffer_size(p, buffer);
    pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO); /* else microseconds */
    int rc = pcap_activate(p);
    if (rc < 0) {
        PyErr_Format(PyExc_OSError, "%s: %s", name, pcap_geterr(p));
        pcap_close(p);
        return NULL;
    }
    if (pcap_setnonblock(p, 1, eb) < 0) {
        PyErr_Format(PyExc_OSError, "%s: %s", name, eb);
        pcap_close(p);
        return NULL;
    }
    return wrap(p);
}

static PyObject *open_offline(PyObject *mod, PyObject *args) {
    const char *path;
    char eb[PCAP_ERRBUF_SIZE] = "";
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    pcap_t *p = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_NANO, eb);
    if (!p) return PyErr_Format(PyExc_OSError, "%s", eb);
    return wrap(p);
}

static PyMethodDef mod_methods[] = {
    {"open_live", open_live, METH_VARARGS,
     "open_live(adapter, snaplen, buffer_bytes, timeout_ms): a nonblocking handle"},
    {"open_offline", open_offline, METH_VARARGS, "open_offline(path): a capture file"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_usagecount", NULL, -1, mod_methods};

PyMODINIT_FUNC PyInit__usagecount(void) {
    if (PyType_Ready(&HandleType) < 0) return NULL;
    return PyModule_Create(&mod);
}
