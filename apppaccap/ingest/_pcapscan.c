/* The compiled half of pcap and pcapng ingest (see apppaccap/ingest/scanner.py).
 *
 * scan() walks pcap records, scan_pcapng() the option-less Enhanced Packet Blocks of a
 * pcapng section, in a buffer (the mmap of the file), and they record the common
 * packet - a clean Ethernet / Linux-cooked / raw-IP frame carrying IPv4 or IPv6 with TCP
 * or UDP - exactly as Recorder.add() would: connection counters and TCP state, the
 * (flow, second) aggregate, the packet row and its bytes.
 * Everything else stops the scan and is handled by the Python path one record at a
 * time: record headers that need a warning or an error, frames the fast decoder does
 * not take (VLAN, fragments, options it would have to explain, ICMP, ARP...). DNS
 * answers are recorded and read here (dns_pairs: dissect/dns.py's dns_answers in C), their
 * (name, ip) pairs handed to Recorder.learn_answers. The first
 * packet of a flow creates its connection here (create_flow: Recorder.conn_for in C,
 * the labeller asked for the flow's nDPI state);
 * only a flow the Recorder knows but the scanner does not (created by the Python path,
 * or forgotten by the scanner after an eviction) goes back to Python to be registered.
 * tests/test_pcapscan.py checks that both paths store identical rows for every file of
 * the corpus.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <limits.h>
#include <arpa/inet.h>
#include <structmember.h>
#include <sys/random.h>
#include <time.h>

#define NS 1000000000LL
#define AGG_NS 1000000000LL  /* the aggregate's unit: one second (recorder.SECOND_NS) */
#define MAX_CAPLEN (256u << 20)
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

enum { FULL = 0, END = 1, SLOW = 2, NEWFLOW = 3 };

/* nDPI: its per-flow step and the state shared with Python (dissect/dpistate.h) */
#include "../dissect/dpistate.h"
typedef void *(*dpi_malloc_fn)(size_t);
/* open: ndpi_flow_malloc, nDPI's flow size, the labeller's pending dict (conn id ->
 * (conn, state)) and its bound - a new flow's state made here (AppLabeller.open_state in
 * C; NULL: open_state is called) */
typedef struct { void *mod; dpi_process_fn process; dpi_extra_fn extra; uint32_t cap;
                 PyObject *settled; dpi_malloc_fn open; Py_ssize_t flow_size;
                 PyObject *pending; Py_ssize_t max_pending; } Dpi;

/* A packed packet row, little-endian, no padding: capturedb.PLAIN_FORMAT "<qqIIHBHHHBBqII"
 * (id, ts, len, caplen, l3, proto, sport, dport, tcp_flags, ttl, direction, conn_id, off,
 * iface);
 * the writer expands it in SQL, taking src/dst from the connection. */
#define ROW_SIZE 51

static inline unsigned char *put(unsigned char *p, unsigned long long v, int n) {
    int i;
    for (i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + n;
}

static PyObject *a_pout, *a_bout, *a_pin, *a_bin, *a_last, *a_state, *a_fin;
static PyObject *a_id, *a_app, *a_proto, *a_local, *a_remote, *a_label, *a_peer, *a_first,
    *a_row, *a_hostname, *a_next_conn;
static PyObject *st_empty, *st_est, *st_active, *st_reset, *st_closed, *st_closing,
    *st_syn_sent, *st_syn_received;

static inline uint32_t rd32(const unsigned char *p, int big) {
    return big ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}

static inline int be16(const unsigned char *p) { return (p[0] << 8) | p[1]; }

typedef struct {
    int l3, proto, sport, dport, flags, ttl, alen, l3off, plen, poff, dns;
    const unsigned char *sa, *da;
} Frame;

/* 1: a clean TCP/UDP frame, fields as dissect/decode.py gives them; 0: ask Python.
 * dns_ok: a DNS answer's payload goes to a Python callable (else the frame is Python's). */
static int fast_decode(uint32_t lt, const unsigned char *d, Py_ssize_t n, Frame *f,
                       int dns_ok) {
    Py_ssize_t off, lim = n, l4, have;
    int l3;
    if (lt == 1) {
        if (n < 14) return 0;
        l3 = be16(d + 12);
        off = 14;
    } else if (lt == 101 || lt == 12 || lt == 14) {
        if (n < 1) return 0;
        l3 = (d[0] >> 4) == 4 ? 0x0800 : (d[0] >> 4) == 6 ? 0x86DD : 0;
        off = 0;
    } else if (lt == 228 || lt == 229) {
        l3 = lt == 228 ? 0x0800 : 0x86DD;
        off = 0;
    } else if (lt == 113) {
        if (n < 16) return 0;
        l3 = be16(d + 14);
        off = 16;
    } else if (lt == 276) {
        if (n < 20) return 0;
        l3 = be16(d);
        off = 20;
    } else {
        return 0;
    }
    if (l3 == 0x0800) {
        const unsigned char *ip = d + off;
        int ihl, tot;
        if (n - off < 20 || (ip[0] >> 4) != 4) return 0;
        ihl = (ip[0] & 15) << 2;
        tot = be16(ip + 2);
        if (ihl < 20 || tot < ihl || (be16(ip + 6) & 0x1FFF)) return 0;
        if (off + tot < n) lim = off + tot;
        l4 = off + ihl;
        if (l4 > lim) return 0;
        f->ttl = ip[8];
        f->proto = ip[9];
        f->sa = ip + 12;
        f->da = ip + 16;
        f->alen = 4;
    } else if (l3 == 0x86DD) {
        const unsigned char *ip = d + off;
        int plen;
        if (n - off < 40 || (ip[0] >> 4) != 6) return 0;
        plen = be16(ip + 4);
        if (plen && off + 40 + plen < n) lim = off + 40 + plen;
        l4 = off + 40;
        f->proto = ip[6];   /* an extension header is not 6/17: Python walks those */
        f->ttl = ip[7];
        f->sa = ip + 8;
        f->da = ip + 24;
        f->alen = 16;
    } else {
        return 0;
    }
    f->l3 = l3;
    f->l3off = (int)off;
    have = lim - l4;
    if (f->proto == 6) {
        int of, hlen;
        if (have < 20) return 0;
        of = be16(d + l4 + 12);
        hlen = (of >> 12) << 2;
        if (hlen < 20 || hlen > have) return 0;
        f->flags = of & 0x1FF;
        f->plen = (int)(have - hlen);
    } else if (f->proto == 17) {
        if (have < 8) return 0;
        f->flags = 0;
        f->plen = (int)(have - 8);
    } else {
        return 0;
    }
    f->sport = be16(d + l4);
    f->dport = be16(d + l4 + 2);
    f->dns = 0;
    /* DNS answers teach hostnames (Recorder.learn_answers): only with a
     * UDP length decode.py takes without a warning and that ends inside the capture */
    if (f->proto == 17 && (f->sport == 53 || f->sport == 5353)) {
        int ulen = be16(d + l4 + 4);
        if (!dns_ok || ulen < 8 || l4 + ulen > lim) return 0;
        f->dns = 1;
        f->poff = (int)(l4 + 8);
        f->plen = ulen - 8;
    }
    return 1;
}

/* The text of an address as dissect/decode.py writes it (dotted quad, inet_ntop). */
static PyObject *addr_text(const unsigned char *a, int alen) {
    char txt[INET6_ADDRSTRLEN];
    if (alen == 4) {   /* by hand: snprintf cost ~2,000 instructions an address */
        char *p = txt;
        int i;
        for (i = 0; i < 4; i++) {
            unsigned v = a[i];
            if (i) *p++ = '.';
            if (v >= 100) *p++ = (char)('0' + v / 100);
            if (v >= 10) *p++ = (char)('0' + v / 10 % 10);
            *p++ = (char)('0' + v % 10);
        }
        return PyUnicode_FromStringAndSize(txt, p - txt);
    } else if (inet_ntop(AF_INET6, a, txt, sizeof(txt)) == NULL) {
        PyErr_SetString(PyExc_ValueError, "inet_ntop failed");
        return NULL;
    }
    return PyUnicode_FromString(txt);
}

/* dissect/dns.py read_name: a possibly compressed name at *pos -> its text (UTF-8 with
 * backslashreplace, "<Root>" when empty), *pos moved after it; NULL with no exception
 * when it does not parse, NULL with one on a failure. */
static PyObject *dns_name(const unsigned char *b, Py_ssize_t n, Py_ssize_t *pos) {
    char text[512];
    Py_ssize_t p = *pos, after = -1, len = 0;
    int jumps = 0, total = 0;
    while (1) {
        int ln;
        if (p >= n) return NULL;
        ln = b[p];
        if (ln >= 0xC0) {   /* a compression pointer (a loop ends at 32) */
            if (p + 1 >= n || jumps >= 32) return NULL;
            if (after < 0) after = p + 2;
            jumps++;
            p = ((ln & 0x3F) << 8) | b[p + 1];
        } else if (ln >= 0x40) {
            return NULL;
        } else if (ln == 0) {
            *pos = after >= 0 ? after : p + 1;
            if (len == 0) return PyUnicode_FromString("<Root>");
            return PyUnicode_DecodeUTF8(text, len, "backslashreplace");
        } else {
            total += ln + 1;
            if (p + 1 + ln > n || total > 255) return NULL;
            if (len) text[len++] = '.';
            memcpy(text + len, b + p + 1, ln);
            len += ln;
            p += 1 + ln;
        }
    }
}

/* dissect/dns.py dns_answers: the (name, ip) pairs of the A/AAAA answers of a DNS
 * response, [] for a query or anything malformed; NULL on a failure (exception). */
static PyObject *dns_pairs(const unsigned char *b, Py_ssize_t n) {
    PyObject *out = PyList_New(0), *name = NULL;
    Py_ssize_t pos = 12;
    int qd, an, i;
    if (out == NULL || n < 12 || !(b[2] & 0x80)) return out;
    qd = be16(b + 4);
    an = be16(b + 6);
    for (i = 0; i < qd; i++) {
        if ((name = dns_name(b, n, &pos)) == NULL) goto bad;
        Py_CLEAR(name);
        pos += 4;
    }
    for (i = 0; i < an; i++) {
        int rtype, rclass, rdlen;
        PyObject *ip = NULL, *pair;
        if ((name = dns_name(b, n, &pos)) == NULL || pos + 10 > n) goto bad;
        rtype = be16(b + pos);
        rclass = be16(b + pos + 2);
        rdlen = be16(b + pos + 8);
        pos += 10;
        if (pos + rdlen > n) goto bad;
        if ((rclass & 0x7FFF) == 1 && ((rtype == 1 && rdlen == 4) || (rtype == 28 && rdlen == 16))) {
            if ((ip = addr_text(b + pos, rdlen)) == NULL) goto fail;
            pair = PyTuple_Pack(2, name, ip);
            Py_DECREF(ip);
            if (pair == NULL || PyList_Append(out, pair) < 0) { Py_XDECREF(pair); goto fail; }
            Py_DECREF(pair);
        }
        Py_CLEAR(name);
        pos += rdlen;
    }
    return out;
bad:   /* malformed: no answers at all (a decoding failure too, as dns.py's except) */
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) goto fail;
        PyErr_Clear();
    }
    Py_XDECREF(name);
    Py_DECREF(out);
    return PyList_New(0);
fail:
    Py_XDECREF(name);
    Py_DECREF(out);
    return NULL;
}

/* obj.name += delta (ints) */
static int add_attr(PyObject *obj, PyObject *name, long long delta) {
    PyObject *v = PyObject_GetAttr(obj, name), *d, *r;
    int rc;
    if (v == NULL) return -1;
    d = PyLong_FromLongLong(delta);
    if (d == NULL) { Py_DECREF(v); return -1; }
    r = PyNumber_Add(v, d);
    Py_DECREF(v);
    Py_DECREF(d);
    if (r == NULL) return -1;
    rc = PyObject_SetAttr(obj, name, r);
    Py_DECREF(r);
    return rc;
}

/* Conn's counters and state as the slots they are (Conn has __slots__): read and written
 * at their offsets, not through attribute lookups (~5 a packet). Only for an object of
 * exactly the class the maker gave (conn_type), and a slot holding a value; anything else
 * takes the attribute path. */
#define NSLOTS 16
static PyObject *conn_type;             /* strong reference */
static PyObject **slot_names[NSLOTS] = {&a_pout, &a_bout, &a_pin, &a_bin, &a_last, &a_state,
                                        &a_fin, &a_id, &a_proto, &a_local, &a_remote, &a_label,
                                        &a_peer, &a_first, &a_hostname, &a_app};
static Py_ssize_t slot_offs[NSLOTS];    /* -1: not a plain object slot */

static int learn_slots(PyObject *cls) {
    int i;
    if (cls == conn_type) return 0;
    Py_XDECREF(conn_type);
    conn_type = NULL;
    if (cls == NULL || !PyType_Check(cls)) return 0;
    for (i = 0; i < NSLOTS; i++) {
        PyObject *d = PyObject_GetAttr(cls, *slot_names[i]);
        slot_offs[i] = -1;
        if (d == NULL) { PyErr_Clear(); continue; }
        if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) slot_offs[i] = m->offset;
        }
        Py_DECREF(d);
    }
    Py_INCREF(cls);
    conn_type = cls;
    return 0;
}

static inline PyObject **slot_of(PyObject *obj, PyObject *name) {
    int i;
    if ((PyObject *)Py_TYPE(obj) != conn_type) return NULL;
    for (i = 0; i < NSLOTS; i++)
        if (*slot_names[i] == name)
            return slot_offs[i] < 0 ? NULL : (PyObject **)((char *)obj + slot_offs[i]);
    return NULL;
}

/* obj.name (a new reference) */
static PyObject *cget(PyObject *obj, PyObject *name) {
    PyObject **p = slot_of(obj, name);
    if (p != NULL && *p != NULL) {
        Py_INCREF(*p);
        return *p;
    }
    return PyObject_GetAttr(obj, name);
}

/* obj.name = v */
static int cset(PyObject *obj, PyObject *name, PyObject *v) {
    PyObject **p = slot_of(obj, name);
    if (p != NULL && *p != NULL) {
        Py_INCREF(v);
        Py_SETREF(*p, v);
        return 0;
    }
    return PyObject_SetAttr(obj, name, v);
}

/* obj.name += delta (ints) */
static int add_attr(PyObject *obj, PyObject *name, long long delta);

static int cadd(PyObject *obj, PyObject *name, long long delta) {
    PyObject **p = slot_of(obj, name), *n;
    long long x;
    if (p == NULL || *p == NULL || !PyLong_CheckExact(*p)) return add_attr(obj, name, delta);
    x = PyLong_AsLongLong(*p);
    if (x == -1 && PyErr_Occurred()) {   /* beyond 64 bits: Python adds */
        PyErr_Clear();
        return add_attr(obj, name, delta);
    }
    if ((delta > 0 && x > LLONG_MAX - delta) || (n = PyLong_FromLongLong(x + delta)) == NULL)
        return add_attr(obj, name, delta);
    Py_SETREF(*p, n);
    return 0;
}

static int same_str(PyObject *a, PyObject *b) {
    return a == b || (PyUnicode_Check(a) && PyUnicode_Compare(a, b) == 0);
}

/* key: proto, address length, then the smaller endpoint (address, port) first */
static int flow_key(const Frame *f, int *src_is_a, unsigned char *k) {
    int alen = f->alen, c = memcmp(f->sa, f->da, alen);
    unsigned char *p;
    const unsigned char *a, *b;
    int ap, bp;
    *src_is_a = c < 0 || (c == 0 && f->sport <= f->dport);
    a = *src_is_a ? f->sa : f->da;
    b = *src_is_a ? f->da : f->sa;
    ap = *src_is_a ? f->sport : f->dport;
    bp = *src_is_a ? f->dport : f->sport;
    k[0] = (unsigned char)f->proto;
    k[1] = (unsigned char)alen;
    p = k + 2;
    memcpy(p, a, alen);
    p[alen] = ap >> 8;
    p[alen + 1] = ap & 0xFF;
    p += alen + 2;
    memcpy(p, b, alen);
    p[alen] = bp >> 8;
    p[alen + 1] = bp & 0xFF;
    return 2 + 2 * (alen + 2);
}

/* A flow the scanner knows (its `flows` entry): the Conn, whether the key's first
 * endpoint is the connection's local one, its id, and its nDPI state (a DpiState
 * bytearray shared with applabels.py) while it is being labelled.
 * While one scan call runs, a flow's counters, TCP state, last time and current
 * (flow, second) aggregate are kept here in C, loaded from the Conn at the flow's first
 * packet in the call and written back to it (and to the batch's flowsec list) before the
 * call returns (flows_sync): Python never sees them in between, and a packet costs no
 * Python object (ints, the (conn, second) tuple, dict updates: ~0.5 s per 1M packets
 * of short flows). */
enum { S_EMPTY, S_SYN_SENT, S_SYN_RECEIVED, S_EST, S_CLOSING, S_CLOSED, S_RESET, S_ACTIVE,
       S_OTHER };
static PyObject **st_objs[S_OTHER] = {&st_empty, &st_syn_sent, &st_syn_received, &st_est,
                                      &st_closing, &st_closed, &st_reset, &st_active};

#define KEY_MAX 38   /* flow_key's longest: proto, length, 2 x (IPv6 address, port) */
typedef struct {
    PyObject_HEAD
    PyObject *conn, *cid, *dpi;   /* dpi: NULL once labelled (or labels off) */
    long long cid_v;
    int a_is_local;
    /* the running call's copy (valid while gen == that call's Touched.gen) */
    unsigned long long gen;
    long long np[2], nb[2];       /* packets and bytes added, [in, out] */
    long long last, fin0, fin;
    int st0, st;
    PyObject *agg;                /* flowsec[(conn, agg_sec)], being added to; or NULL */
    long long agg_sec, agg_n, agg_b, agg_last;
    unsigned char klen, key[KEY_MAX];   /* its key in the FlowTable (klen 0: none yet) */
} Flow;

static void flow_dealloc(Flow *f) {
    Py_XDECREF(f->conn);
    Py_XDECREF(f->cid);
    Py_XDECREF(f->dpi);
    Py_XDECREF(f->agg);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *flow_getconn(Flow *f, void *c) { (void)c; Py_INCREF(f->conn); return f->conn; }
static PyObject *flow_getdpi(Flow *f, void *c) {
    (void)c;
    if (f->dpi == NULL) Py_RETURN_NONE;
    Py_INCREF(f->dpi);
    return f->dpi;
}

static PyGetSetDef flow_getset[] = {
    {"conn", (getter)flow_getconn, NULL, "the connection", NULL},
    {"dpi", (getter)flow_getdpi, NULL, "its nDPI state (None: labelled)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apppaccap.ingest._pcapscan.Flow",
    .tp_basicsize = sizeof(Flow),
    .tp_dealloc = (destructor)flow_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A flow of the scanner's table (made by flow())",
    .tp_getset = flow_getset,
};

/* a new Flow (NULL: exception); st None or NULL: not being labelled */
static PyObject *flow_new(PyObject *conn, int a_is_local, PyObject *cid, PyObject *st) {
    Flow *f;
    long long v = PyLong_AsLongLong(cid);
    if (v == -1 && PyErr_Occurred()) return NULL;
    f = PyObject_New(Flow, &FlowType);
    if (f == NULL) return NULL;
    Py_INCREF(conn);
    Py_INCREF(cid);
    f->conn = conn;
    f->cid = cid;
    f->cid_v = v;
    f->a_is_local = a_is_local;
    f->dpi = NULL;
    if (st != NULL && st != Py_None) {
        Py_INCREF(st);
        f->dpi = st;
    }
    f->gen = 0;
    f->agg = NULL;
    f->klen = 0;
    return (PyObject *)f;
}

static PyObject *py_flow(PyObject *self, PyObject *args) {
    PyObject *conn, *cid, *st = Py_None;
    int a_is_local;
    (void)self;
    if (!PyArg_ParseTuple(args, "OpO!|O", &conn, &a_is_local, &PyLong_Type, &cid, &st))
        return NULL;
    return flow_new(conn, a_is_local, cid, st);
}

/* The flows one scan call touched (strong references), and its generation: per call, not
 * global - a Python callback (or a finalizer) can let another thread's ingest scan
 * meanwhile, and that call must not write back this one's flows mid-update. */
typedef struct { Flow **v; Py_ssize_t n, cap; unsigned long long gen; } Touched;
static unsigned long long call_gen;   /* the last generation given (under the GIL) */

static int state_code(PyObject *state) {
    int i;
    for (i = 0; i < S_OTHER; i++)
        if (same_str(state, *st_objs[i])) return i;
    return S_OTHER;
}

/* The flow's first packet in this call: its Conn's counters and state read, the conn
 * marked dirty (at its first packet, as Recorder.add's dict order has it). */
static int flow_load(Flow *f, PyObject *dirty, Touched *t) {
    PyObject *state;
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 1024;
        Flow **v = PyMem_Realloc(t->v, cap * sizeof(Flow *));
        if (v == NULL) { PyErr_NoMemory(); return -1; }
        t->v = v;
        t->cap = cap;
    }
    if ((state = cget(f->conn, a_state)) == NULL) return -1;
    f->st = f->st0 = state_code(state);
    Py_DECREF(state);
    f->fin = f->fin0 = -1;   /* read at the flow's first FIN */
    f->np[0] = f->np[1] = f->nb[0] = f->nb[1] = 0;
    Py_CLEAR(f->agg);
    if (PyDict_SetItem(dirty, f->cid, f->conn) < 0) return -1;
    Py_INCREF(f);
    t->v[t->n++] = f;
    f->gen = t->gen;
    return 0;
}

/* the running (flow, second) aggregate added to its flowsec list */
static int agg_flush(Flow *f) {
    PyObject *v = f->agg, *n, *b, *t;
    long long n0, b0;
    if (v == NULL) return 0;
    f->agg = NULL;
    n0 = PyLong_AsLongLong(PyList_GET_ITEM(v, 0));
    b0 = PyLong_AsLongLong(PyList_GET_ITEM(v, 1));
    if ((n0 == -1 || b0 == -1) && PyErr_Occurred()) { Py_DECREF(v); return -1; }
    n = PyLong_FromLongLong(n0 + f->agg_n);
    b = PyLong_FromLongLong(b0 + f->agg_b);
    t = PyLong_FromLongLong(f->agg_last);
    if (n == NULL || b == NULL || t == NULL) {
        Py_XDECREF(n); Py_XDECREF(b); Py_XDECREF(t); Py_DECREF(v);
        return -1;
    }
    PyList_SetItem(v, 0, n);   /* steals */
    PyList_SetItem(v, 1, b);
    PyList_SetItem(v, 3, t);
    Py_DECREF(v);
    return 0;
}

/* flowsec[(conn, second)] += (1 packet, size bytes), last = ts: a new (flow, second)'s
 * list found or made in flowsec (made at its first packet: the dict's order is
 * Recorder.add's), the counts added in C until the second changes or the call ends. */
static int aggregate(PyObject *flowsec, Flow *f, long long ts, long long size) {
    long long sec = ts / AGG_NS;
    PyObject *k, *s, *v;
    if (f->agg != NULL && f->agg_sec == sec) {
        f->agg_n++;
        f->agg_b += size;
        f->agg_last = ts;
        return 0;
    }
    if (agg_flush(f) < 0) return -1;
    if ((k = PyTuple_New(2)) == NULL) return -1;
    if ((s = PyLong_FromLongLong(sec)) == NULL) { Py_DECREF(k); return -1; }
    Py_INCREF(f->conn);
    PyTuple_SET_ITEM(k, 0, f->conn);
    PyTuple_SET_ITEM(k, 1, s);
    v = PyDict_GetItemWithError(flowsec, k);
    if (v != NULL && !(PyList_CheckExact(v) && PyList_GET_SIZE(v) == 4)) {
        PyErr_SetString(PyExc_TypeError, "flowsec values must be [packets, bytes, first, last]");
        Py_DECREF(k);
        return -1;
    }
    if (v == NULL) {
        PyObject *n, *t;
        if (PyErr_Occurred()) { Py_DECREF(k); return -1; }
        v = PyList_New(4);
        n = PyLong_FromLong(0);
        t = PyLong_FromLongLong(ts);
        if (v == NULL || n == NULL || t == NULL) {
            Py_XDECREF(v); Py_XDECREF(n); Py_XDECREF(t); Py_DECREF(k);
            return -1;
        }
        Py_INCREF(n);
        Py_INCREF(t);
        PyList_SET_ITEM(v, 0, n);   /* steals */
        PyList_SET_ITEM(v, 1, n);
        PyList_SET_ITEM(v, 2, t);
        PyList_SET_ITEM(v, 3, t);
        if (PyDict_SetItem(flowsec, k, v) < 0) { Py_DECREF(v); Py_DECREF(k); return -1; }
    } else {
        Py_INCREF(v);
    }
    Py_DECREF(k);
    f->agg = v;
    f->agg_sec = sec;
    f->agg_n = 1;
    f->agg_b = size;
    f->agg_last = ts;
    return 0;
}

/* recorder._tcp_state on the flow's copy; returns whether it is CLOSED or RESET now */
static int tcp_state(Flow *f, int flags) {
    if (!(flags & 0x07) && f->st == S_EST) return 0;   /* the common case */
    if (flags & 0x04) {
        f->st = S_RESET;
    } else if (flags & 0x01) {
        if (f->fin < 0) {
            PyObject *fin = cget(f->conn, a_fin);
            if (fin == NULL) return -1;
            f->fin = f->fin0 = PyLong_AsLongLong(fin);
            Py_DECREF(fin);
            if (f->fin == -1 && PyErr_Occurred()) return -1;
        }
        f->fin++;
        f->st = f->fin >= 2 ? S_CLOSED : S_CLOSING;
    } else if (flags & 0x02) {
        f->st = (flags & 0x10) ? S_SYN_RECEIVED : S_SYN_SENT;
    } else if (f->st == S_EMPTY || f->st == S_SYN_SENT || f->st == S_SYN_RECEIVED) {
        f->st = S_EST;
    }
    return f->st == S_CLOSED || f->st == S_RESET;
}

/* One flow's copy written back to its Conn (Conn.pout += ..., last, fin, state). */
static int flow_store(Flow *f) {
    PyObject *conn = f->conn, *t;
    int rc = agg_flush(f);
    f->gen = 0;
    if (rc == 0 && f->np[1] && (cadd(conn, a_pout, f->np[1]) < 0 || cadd(conn, a_bout, f->nb[1]) < 0))
        rc = -1;
    if (rc == 0 && f->np[0] && (cadd(conn, a_pin, f->np[0]) < 0 || cadd(conn, a_bin, f->nb[0]) < 0))
        rc = -1;
    if (rc == 0 && f->np[0] + f->np[1]) {
        if ((t = PyLong_FromLongLong(f->last)) == NULL) return -1;
        rc = cset(conn, a_last, t);
        Py_DECREF(t);
    }
    if (rc == 0 && f->fin != f->fin0) {
        if ((t = PyLong_FromLongLong(f->fin)) == NULL) return -1;
        rc = cset(conn, a_fin, t);
        Py_DECREF(t);
    }
    if (rc == 0 && f->st != f->st0 && f->st != S_OTHER) rc = cset(conn, a_state, *st_objs[f->st]);
    return rc;
}

/* Before a scan call returns: every flow it touched written back (all of them, even
 * after a failure; the first failure reported). */
static int flows_sync(Touched *t) {
    Py_ssize_t i;
    int rc = 0;
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    if (PyErr_Occurred()) PyErr_Fetch(&et, &ev, &tb);
    for (i = 0; i < t->n; i++) {
        if (flow_store(t->v[i]) < 0 && rc == 0) {
            rc = -1;
            if (et == NULL) PyErr_Fetch(&et, &ev, &tb);
            else PyErr_Clear();
        }
        Py_DECREF(t->v[i]);
    }
    PyMem_Free(t->v);
    t->v = NULL;
    t->n = t->cap = 0;
    if (et != NULL) PyErr_Restore(et, ev, tb);
    return rc;
}

/* The scanner's flow table: key (flow_key's bytes) -> Flow, open addressing in C. A
 * packet's lookup makes no Python object (a dict cost a bytes key and its hash, ~500
 * instructions a packet). The hash is seeded at import (a crafted file cannot aim at
 * one chain). Python only adds (table[key] = flow) and forgets (drop(conns), clear()). */
typedef struct { Flow *flow; uint64_t hash; } Slot;   /* the key is in the Flow */
typedef struct { PyObject_HEAD Slot *slots; Py_ssize_t cap, used; } FlowTable;
static uint64_t table_seed;

static uint64_t key_hash(const unsigned char *k, int n) {
    uint64_t h = table_seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    int i;
    for (i = 0; i < n; i++) {
        h ^= k[i];
        h *= 0x100000001B3ULL;
        h ^= h >> 29;
    }
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    return h ^ (h >> 32);
}

static Slot *table_find(FlowTable *t, const unsigned char *k, int n, uint64_t h) {
    Py_ssize_t mask = t->cap - 1, i = (Py_ssize_t)(h & (uint64_t)mask);
    while (1) {
        Slot *s = &t->slots[i];
        if (s->flow == NULL ||
            (s->hash == h && s->flow->klen == n && memcmp(s->flow->key, k, (size_t)n) == 0))
            return s;
        i = (i + 1) & mask;
    }
}

/* the Flow under key, borrowed, or NULL */
static Flow *table_get(FlowTable *t, const unsigned char *k, int n, uint64_t h) {
    return t->cap ? table_find(t, k, n, h)->flow : NULL;
}

/* table[key] = flow (a new reference taken); -1: exception */
static int table_put(FlowTable *t, const unsigned char *k, int n, uint64_t h, Flow *f) {
    Slot *s;
    if (n > KEY_MAX) {
        PyErr_SetString(PyExc_ValueError, "flow table: key too long");
        return -1;
    }
    if ((t->used + 1) * 2 > t->cap) {   /* at most half full */
        Py_ssize_t cap = t->cap ? t->cap * 2 : 1024, i;
        Slot *old = t->slots, *ns = PyMem_Calloc((size_t)cap, sizeof(Slot));
        Py_ssize_t oldcap = t->cap;
        if (ns == NULL) { PyErr_NoMemory(); return -1; }
        t->slots = ns;
        t->cap = cap;
        for (i = 0; i < oldcap; i++)
            if (old[i].flow != NULL)
                *table_find(t, old[i].flow->key, old[i].flow->klen, old[i].hash) = old[i];
        PyMem_Free(old);
    }
    if (f->klen && (f->klen != n || memcmp(f->key, k, (size_t)n) != 0)) {
        PyErr_SetString(PyExc_ValueError, "flow table: a Flow goes under one key");
        return -1;
    }
    f->klen = (unsigned char)n;
    memcpy(f->key, k, (size_t)n);
    s = table_find(t, k, n, h);
    Py_INCREF(f);
    if (s->flow != NULL) {
        Py_SETREF(s->flow, f);
        return 0;
    }
    s->flow = f;
    s->hash = h;
    t->used++;
    return 0;
}

static void table_clear(FlowTable *t) {
    Slot *old = t->slots;
    Py_ssize_t i, cap = t->cap;
    t->slots = NULL;
    t->cap = t->used = 0;
    for (i = 0; i < cap; i++) Py_XDECREF(old[i].flow);
    PyMem_Free(old);
}

static void table_dealloc(FlowTable *t) {
    table_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    FlowTable *t;
    if (PyTuple_GET_SIZE(args) || (kw != NULL && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "FlowTable() takes no arguments");
        return NULL;
    }
    if ((t = (FlowTable *)type->tp_alloc(type, 0)) == NULL) return NULL;
    t->slots = NULL;
    t->cap = t->used = 0;
    return (PyObject *)t;
}

static Py_ssize_t table_len(FlowTable *t) { return t->used; }

static PyObject *table_getitem(FlowTable *t, PyObject *key) {
    Flow *f;
    if (!PyBytes_Check(key)) { PyErr_SetObject(PyExc_KeyError, key); return NULL; }
    f = PyBytes_GET_SIZE(key) > KEY_MAX ? NULL
        : table_get(t, (const unsigned char *)PyBytes_AS_STRING(key), (int)PyBytes_GET_SIZE(key),
                    key_hash((const unsigned char *)PyBytes_AS_STRING(key),
                             (int)PyBytes_GET_SIZE(key)));
    if (f == NULL) { PyErr_SetObject(PyExc_KeyError, key); return NULL; }
    Py_INCREF(f);
    return (PyObject *)f;
}

static int table_setitem(FlowTable *t, PyObject *key, PyObject *v) {
    const unsigned char *k;
    int n;
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "flow table: entries go only with clear()");
        return -1;
    }
    if (!PyBytes_Check(key) || !Py_IS_TYPE(v, &FlowType)) {
        PyErr_SetString(PyExc_TypeError, "flow table: bytes key -> Flow");
        return -1;
    }
    k = (const unsigned char *)PyBytes_AS_STRING(key);
    n = PyBytes_GET_SIZE(key) > KEY_MAX ? KEY_MAX + 1 : (int)PyBytes_GET_SIZE(key);
    return table_put(t, k, n, key_hash(k, n > KEY_MAX ? 0 : n), (Flow *)v);
}

static PyObject *table_clear_py(FlowTable *t, PyObject *unused) {
    (void)unused;
    table_clear(t);
    Py_RETURN_NONE;
}

/* Forget the flows of the connections in `conns` (the Recorder's last eviction), keeping
 * the others: after clear() every flow still open came back through the Python path at
 * its next packet (~40 us each), once per eviction pass of a long file. */
static PyObject *table_drop_py(FlowTable *t, PyObject *conns) {
    PyObject *gone = PySet_New(conns), *err = NULL;
    Slot *old = t->slots, *ns;
    Py_ssize_t i, cap = t->cap;
    if (gone == NULL) return NULL;
    if (cap == 0 || PySet_GET_SIZE(gone) == 0) {
        Py_DECREF(gone);
        Py_RETURN_NONE;
    }
    if ((ns = PyMem_Calloc((size_t)cap, sizeof(Slot))) == NULL) {
        Py_DECREF(gone);
        return PyErr_NoMemory();
    }
    t->slots = ns;
    t->used = 0;
    for (i = 0; i < cap; i++) {
        Flow *f = old[i].flow;
        int in;
        if (f == NULL) continue;
        in = err == NULL ? PySet_Contains(gone, f->conn) : 0;
        if (in < 0) {   /* kept; the error is raised once the table is whole again */
            err = Py_None;
            in = 0;
        }
        if (in) {
            Py_DECREF(f);
            continue;
        }
        *table_find(t, f->key, f->klen, old[i].hash) = old[i];
        t->used++;
    }
    PyMem_Free(old);
    Py_DECREF(gone);
    if (err != NULL) return NULL;
    Py_RETURN_NONE;
}

static PyMappingMethods table_mapping = {
    (lenfunc)table_len, (binaryfunc)table_getitem, (objobjargproc)table_setitem,
};

static PyMethodDef table_methods[] = {
    {"clear", (PyCFunction)table_clear_py, METH_NOARGS, "Forget every flow."},
    {"drop", (PyCFunction)table_drop_py, METH_O,
     "drop(conns): forget the flows whose connection is one of `conns`."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FlowTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apppaccap.ingest._pcapscan.FlowTable",
    .tp_basicsize = sizeof(FlowTable),
    .tp_dealloc = (destructor)table_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The scanner's flows: flow_key bytes -> Flow (table[key] = flow, drop, clear)",
    .tp_as_mapping = &table_mapping,
    .tp_methods = table_methods,
    .tp_new = table_new,
};

/* What creating a connection needs (Recorder.conn_for, in C): the Conn class, the
 * Recorder (its next_conn counter), its conns, hostnames and local_ips, and the
 * labeller's open_state(conn) (None: labels off), and Recorder.learn_answers (called with
 * the (name, ip) pairs of each DNS answer the scanner records). mk.cls NULL: Python creates flows
 * and reads DNS answers. */
typedef struct { PyObject *cls, *rec, *conns, *hostnames, *local_ips, *open_state, *learn; }
    Maker;

/* Where recorded packets go: the Recorder's batch, and the scanner's flow table. */
typedef struct {
    FlowTable *flows;
    PyObject *plain, *blob, *flowsec, *dirty;
    /* bytes of plain and blob in use: while scanning, their sizes grow by doubling, not by
     * a resize a packet (bytearray grows ~1/8 at a time: its reallocations copied the
     * batch ~8 times over, ~0.2 s per 1M packets of short flows); sink_trim cuts them
     * back to what is used before Python sees them */
    Py_ssize_t plain_used, blob_used;
    long long next_id;
    Dpi dpi;  /* dpi.mod NULL: no labelling */
    Maker mk;
    Touched touched;   /* flows to write back before the call returns */
} Sink;


/* `ba` resized to `n` bytes, its allocation kept when it holds them: PyByteArray_Resize
 * gives back all but `n` bytes of a buffer less than half used, so a buffer recycled for
 * the next batch (recycle below) would lose the pages it has already touched - each new
 * one cost ~2,000 page faults per 8 MB batch, ~5 % of the parsing process's time on short
 * flows. The invariants PyByteArray_Resize keeps hold: no export, the bytes start at the
 * allocation, a NUL after the last byte. -1: exception */
static int ba_set_size(PyObject *ba, Py_ssize_t n) {
    PyByteArrayObject *b = (PyByteArrayObject *)ba;
    if (b->ob_exports == 0 && b->ob_start == b->ob_bytes && b->ob_bytes != NULL &&
        n >= 0 && n < b->ob_alloc) {
        Py_SET_SIZE(b, n);
        b->ob_bytes[n] = '\0';
        return 0;
    }
    return PyByteArray_Resize(ba, n);
}

/* `need` more bytes of `ba` after `*used` (which moves past them); NULL: exception */
static unsigned char *reserve(PyObject *ba, Py_ssize_t *used, Py_ssize_t need) {
    Py_ssize_t have = PyByteArray_GET_SIZE(ba), want = *used + need;
    unsigned char *p;
    if (want > have && want < ((PyByteArrayObject *)ba)->ob_alloc) {
        if (ba_set_size(ba, ((PyByteArrayObject *)ba)->ob_alloc - 1) < 0) return NULL;
    } else if (want > have) {
        Py_ssize_t grow = have < PY_SSIZE_T_MAX / 2 ? have * 2 : want;
        if (grow < want) grow = want;
        if (grow < 65536) grow = 65536;
        if (PyByteArray_Resize(ba, grow) < 0) return NULL;
    }
    p = (unsigned char *)PyByteArray_AS_STRING(ba) + *used;
    *used = want;
    return p;
}

static void sink_start(Sink *s) {
    s->touched.v = NULL;
    s->touched.n = s->touched.cap = 0;
    s->touched.gen = ++call_gen;   /* every flow's copy from an earlier call is stale */
    s->plain_used = PyByteArray_GET_SIZE(s->plain);
    s->blob_used = PyByteArray_GET_SIZE(s->blob);
}

/* plain and blob cut back to the bytes in use (their allocation kept: ba_set_size) */
static int sink_trim(Sink *s) {
    int rc = 0;
    if (PyByteArray_GET_SIZE(s->plain) != s->plain_used &&
        ba_set_size(s->plain, s->plain_used) < 0)
        rc = -1;
    if (PyByteArray_GET_SIZE(s->blob) != s->blob_used &&
        ba_set_size(s->blob, s->blob_used) < 0)
        rc = -1;
    return rc;
}

static PyObject *recycle(PyObject *self, PyObject *ba) {
    if (!PyByteArray_CheckExact(ba)) {
        PyErr_SetString(PyExc_TypeError, "recycle: a bytearray is needed");
        return NULL;
    }
    if (ba_set_size(ba, 0) < 0) return NULL;
    Py_INCREF(ba);
    return ba;
}

static int parse_maker(PyObject *o, Maker *m) {
    memset(m, 0, sizeof(*m));
    if (o == NULL || o == Py_None) return 0;
    if (!PyArg_ParseTuple(o, "OOO!O!OOO", &m->cls, &m->rec, &PyDict_Type, &m->conns,
                          &PyDict_Type, &m->hostnames, &m->local_ips, &m->open_state,
                          &m->learn))
        return -1;
    return learn_slots(m->cls);
}


/* AppLabeller.open_state below its bound: a zeroed nDPI flow, its state (DpiState in a
 * bytearray) registered in the labeller's pending dict under the conn's id; the state, a
 * new reference (NULL: exception). One ctypes call less per flow (~4 us). */
static PyObject *open_state(const Dpi *d, PyObject *conn, PyObject *cid) {
    PyObject *st, *pair;
    DpiState *ds;
    void *flow = d->open((size_t)d->flow_size);
    if (flow == NULL) return PyErr_NoMemory();
    memset(flow, 0, (size_t)d->flow_size);
    st = PyByteArray_FromStringAndSize(NULL, sizeof(DpiState));
    if (st == NULL) return NULL;   /* (the flow leaks only on a MemoryError) */
    ds = (DpiState *)PyByteArray_AS_STRING(st);
    memset(ds, 0, sizeof(*ds));
    ds->flow = (uint64_t)(uintptr_t)flow;
    pair = PyTuple_Pack(2, conn, st);
    if (pair == NULL || PyDict_SetItem(d->pending, cid, pair) < 0) {
        Py_XDECREF(pair);
        Py_DECREF(st);
        return NULL;
    }
    Py_DECREF(pair);
    return st;
}

/* (obj, port) */
static PyObject *int_pair(PyObject *obj, long port) {
    PyObject *n = PyLong_FromLong(port), *t;
    if (n == NULL) return NULL;
    t = PyTuple_Pack(2, obj, n);
    Py_DECREF(n);
    return t;
}

/* Recorder.conn_for for the first packet of a flow the scanner does not know: the new
 * Conn registered in rec.conns and in the scanner's flows under `key` (with its nDPI
 * state when labels are on). Returns 1 (entry set, borrowed from flows), 0 (the
 * Recorder knows this flow already - Python registers it) or -1 (exception). */
static int create_flow(Sink *s, const Frame *f, long long ts, const unsigned char *key,
                       int klen, uint64_t kh, int src_is_a, PyObject **entry) {
    const Maker *m = &s->mk;
    PyObject *src = NULL, *dst = NULL, *a = NULL, *b = NULL;
    PyObject *pkey = NULL, *conn = NULL, *cid = NULL, *host, *st = NULL, *e = NULL;
    PyObject *local, *remote, *proto = NULL, *tsobj = NULL;
    int rc = -1, swap = 0, le;
    long long next;

    if ((src = addr_text(f->sa, f->alen)) == NULL || (dst = addr_text(f->da, f->alen)) == NULL)
        goto done;
    /* tuples made directly (here and below): Py_BuildValue parses its format each time,
     * ~500 instructions a call */
    if ((a = int_pair(src, f->sport)) == NULL || (b = int_pair(dst, f->dport)) == NULL)
        goto done;
    /* labels.flow_key: (proto, smaller endpoint, larger one), compared as Python does */
    if ((le = PyObject_RichCompareBool(a, b, Py_LE)) < 0) goto done;
    if ((proto = PyLong_FromLong(f->proto)) == NULL ||
        (pkey = PyTuple_Pack(3, proto, le ? a : b, le ? b : a)) == NULL)
        goto done;
    if (PyDict_GetItemWithError(m->conns, pkey) != NULL) { rc = 0; goto done; }
    if (PyErr_Occurred()) goto done;
    /* the originator is "local" unless a SYN+ACK or the local addresses say otherwise */
    if (f->proto == 6 && (f->flags & 0x12) == 0x12) {
        swap = 1;
    } else if (PyObject_Length(m->local_ips) > 0) {
        int d_in = PySet_Contains(m->local_ips, dst), s_in;
        if (d_in < 0) goto done;
        if (d_in) {
            if ((s_in = PySet_Contains(m->local_ips, src)) < 0) goto done;
            swap = !s_in;
        }
    }
    local = swap ? b : a;
    remote = swap ? a : b;
    if ((cid = PyObject_GetAttr(m->rec, a_next_conn)) == NULL) goto done;
    next = PyLong_AsLongLong(cid);
    if (next == -1 && PyErr_Occurred()) goto done;
    if ((tsobj = PyLong_FromLongLong(ts)) == NULL) goto done;
    {
        PyObject *cargs[5] = {cid, proto, local, remote, tsobj};
        conn = PyObject_Vectorcall(m->cls, cargs, 5, NULL);
    }
    if (conn == NULL) goto done;
    host = PyDict_GetItemWithError(m->hostnames, swap ? src : dst);
    if (host == NULL && PyErr_Occurred()) goto done;
    if (host != NULL && PyObject_SetAttr(conn, a_hostname, host) < 0) goto done;
    {
        PyObject *nx = PyLong_FromLongLong(next + 1);
        int r2;
        if (nx == NULL) goto done;
        r2 = PyObject_SetAttr(m->rec, a_next_conn, nx);
        Py_DECREF(nx);
        if (r2 < 0) goto done;
    }
    if (PyDict_SetItem(m->conns, pkey, conn) < 0) goto done;
    if (m->open_state != Py_None) {
        if (s->dpi.open != NULL && PyDict_GET_SIZE(s->dpi.pending) < s->dpi.max_pending) {
            if ((st = open_state(&s->dpi, conn, cid)) == NULL) goto done;
        } else if ((st = PyObject_CallOneArg(m->open_state, conn)) == NULL) {
            goto done;
        }
    }
    /* a_is_local: whether the key's first endpoint is the connection's local one */
    e = flow_new(conn, (!swap) == src_is_a, cid, st);
    if (e == NULL || table_put(s->flows, key, klen, kh, (Flow *)e) < 0) goto done;
    *entry = e;   /* flows holds it */
    rc = 1;
done:
    Py_XDECREF(src); Py_XDECREF(dst); Py_XDECREF(a);
    Py_XDECREF(b); Py_XDECREF(pkey); Py_XDECREF(conn); Py_XDECREF(cid); Py_XDECREF(st);
    Py_XDECREF(e); Py_XDECREF(proto); Py_XDECREF(tsobj);
    return rc;
}

/* The flows argument's optional companion: (module, process, extra_possible, cap,
 * settled) - addresses as integers, and a list the scanner appends the conn of each flow
 * whose label it settled to - or None. Returns 0 or -1 (exception). */
static int parse_dpi(PyObject *o, Dpi *d) {
    unsigned long long mod, proc, extra, open = 0;
    unsigned int cap;
    memset(d, 0, sizeof(*d));
    if (o == NULL || o == Py_None) return 0;
    if (!PyArg_ParseTuple(o, "KKKIO!|KnO!n", &mod, &proc, &extra, &cap, &PyList_Type,
                          &d->settled, &open, &d->flow_size, &PyDict_Type, &d->pending,
                          &d->max_pending))
        return -1;
    d->open = d->pending != NULL && d->flow_size > 0 ? (dpi_malloc_fn)(uintptr_t)open : NULL;
    d->mod = (void *)(uintptr_t)mod;
    d->process = (dpi_process_fn)(uintptr_t)proc;
    d->extra = (dpi_extra_fn)(uintptr_t)extra;
    d->cap = cap;
    if (!d->mod || !d->process || !d->extra) d->mod = NULL;
    return 0;
}

/* applabels.AppLabeller.feed, for a packet the scanner took: 1 when the flow's label is
 * settled by this packet (Python names it and frees nDPI's flow before the batch is
 * written), else 0. Pure ACKs teach nDPI nothing and are not fed (nor counted). */
static int dpi_feed(const Dpi *d, PyObject *state, const Frame *f, const unsigned char *data,
                    uint32_t caplen, long long ts) {
    DpiState *st;
    if (!PyByteArray_Check(state) || PyByteArray_GET_SIZE(state) != (Py_ssize_t)sizeof(DpiState))
        return 0;
    st = (DpiState *)PyByteArray_AS_STRING(state);
    if (st->done || !st->flow) return 0;
    if (f->proto == 6 && f->plen == 0 && !(f->flags & 0x07)) return 0;
    return dpi_step(d->mod, d->process, d->extra, d->cap, st, data + f->l3off,
                    (long long)caplen - f->l3off, (uint64_t)(ts / 1000000));
}

/* A pending flow that ended (CLOSED or RESET): 1 when this settles it (Recorder.add
 * settles such a flow's label at once, after nDPI saw the packet). */
static int dpi_end(PyObject *state) {
    DpiState *st;
    if (!PyByteArray_Check(state) || PyByteArray_GET_SIZE(state) != (Py_ssize_t)sizeof(DpiState))
        return 0;
    st = (DpiState *)PyByteArray_AS_STRING(state);
    if (st->done || !st->flow) return 0;
    st->done = 1;
    return 1;
}

enum { TAKEN = 0 };

/* Record one packet as Recorder.add would, if the fast path takes it (and feed nDPI a
 * flow still being labelled). Returns TAKEN, SLOW, NEWFLOW (with *key, a new reference,
 * and *src_is_a set) or -1 (exception). */
static int record(Sink *s, const unsigned char *data, uint32_t caplen, uint32_t origlen,
                  long long ts, uint32_t linktype, uint32_t iface, long long div,
                  PyObject **key, int *src_is_a) {
    Frame f;
    PyObject *entry;
    Flow *fl;
    Py_ssize_t boff;
    int out, ended = 0, klen;
    unsigned char kb[KEY_MAX];
    uint64_t kh;

    if (!fast_decode(linktype & 0x0FFFFFFF, data, caplen, &f, s->mk.cls != NULL)) return SLOW;
    klen = flow_key(&f, src_is_a, kb);
    kh = key_hash(kb, klen);
    entry = (PyObject *)table_get(s->flows, kb, klen, kh);
    if (entry == NULL) {
        int made = s->mk.cls == NULL ? 0 : create_flow(s, &f, ts, kb, klen, kh, *src_is_a, &entry);
        if (made < 0) return -1;
        if (made == 0) {   /* Python registers the conn under this key */
            *key = PyBytes_FromStringAndSize((const char *)kb, klen);
            return *key == NULL ? -1 : NEWFLOW;
        }
    }
    if (!Py_IS_TYPE(entry, &FlowType)) {
        PyErr_SetString(PyExc_TypeError, "flows values must be Flow objects (flow())");
        return -1;
    }
    fl = (Flow *)entry;
    if (fl->gen != s->touched.gen && flow_load(fl, s->dirty, &s->touched) < 0) return -1;
    out = *src_is_a == fl->a_is_local;
    fl->np[out]++;
    fl->nb[out] += origlen;
    fl->last = ts;
    if (aggregate(s->flowsec, fl, ts, origlen) < 0) return -1;
    if (f.proto == 6) {
        if ((ended = tcp_state(fl, f.flags)) < 0) return -1;
    } else if (fl->st == S_EMPTY) {
        fl->st = S_ACTIVE;
    }

    boff = s->blob_used;
    if (div) {
        /* the packet as the EPB export writes it (pcapng_writer.frame_epb): header,
         * data, padding, epb_flags, end of options, trailing length */
        uint32_t pad = (4 - (caplen & 3)) & 3, blen = 44 + caplen + pad;
        unsigned long long ticks = (unsigned long long)(ts / div);
        unsigned char *p;
        if ((p = reserve(s->blob, &s->blob_used, blen)) == NULL) return -1;
        p = put(p, 6, 4);
        p = put(p, blen, 4);
        p = put(p, iface, 4);
        p = put(p, ticks >> 32, 4);
        p = put(p, ticks & 0xFFFFFFFFu, 4);
        p = put(p, caplen, 4);
        p = put(p, origlen, 4);
        memcpy(p, data, caplen);
        p += caplen;
        memset(p, 0, pad);
        p += pad;
        p = put(p, 2, 2);
        p = put(p, 4, 2);
        p = put(p, out ? 2 : 1, 4);
        p = put(p, 0, 4);
        put(p, blen, 4);
        boff += 28;
    } else {
        unsigned char *p = reserve(s->blob, &s->blob_used, caplen);
        if (p == NULL) return -1;
        memcpy(p, data, caplen);
    }
    {
        long long cid = fl->cid_v;
        unsigned char *p;
        if ((p = reserve(s->plain, &s->plain_used, ROW_SIZE)) == NULL) return -1;
        p = put(p, (unsigned long long)s->next_id, 8);
        p = put(p, (unsigned long long)ts, 8);
        p = put(p, origlen, 4);
        p = put(p, caplen, 4);
        p = put(p, f.l3, 2);
        p = put(p, f.proto, 1);
        p = put(p, f.sport, 2);
        p = put(p, f.dport, 2);
        p = put(p, f.flags, 2);
        p = put(p, f.ttl, 1);
        p = put(p, out ? 1 : 0, 1);
        p = put(p, (unsigned long long)cid, 8);
        p = put(p, (unsigned long long)boff, 4);
        put(p, iface, 4);
    }
    s->next_id++;
    if (fl->dpi != NULL && s->dpi.mod != NULL &&
        (dpi_feed(&s->dpi, fl->dpi, &f, data, caplen, ts) ||
         (ended && dpi_end(fl->dpi))) &&
        PyList_Append(s->dpi.settled, fl->conn) < 0)
        return -1;
    if (f.dns && f.plen > 0) {   /* after nDPI's feed, as in Recorder.add */
        /* the answers read here (dns.py's parse in C), handed to learn_answers */
        PyObject *pairs = dns_pairs(data + f.poff, f.plen), *r;
        if (pairs == NULL) return -1;
        if (PyList_GET_SIZE(pairs) == 0) {
            Py_DECREF(pairs);
        } else {
            r = PyObject_CallOneArg(s->mk.learn, pairs);
            Py_DECREF(pairs);
            if (r == NULL) return -1;
            Py_DECREF(r);
        }
    }
    return TAKEN;
}

static PyObject *result(Py_ssize_t off, Py_ssize_t taken, long long total, int code,
                        PyObject *key, int src_is_a, long long last_ts) {
    if (key == NULL) {
        Py_INCREF(Py_None);
        key = Py_None;
    }
    return Py_BuildValue("(nnLiNiL)", off, taken, total, code, key, src_is_a, last_ts);
}

PyDoc_STRVAR(scan_doc,
"scan(buf, off, size, big_endian, unit, rhl, snaplen, linktype, flows, plain, blob,\n"
"     next_id, max_rows, max_bytes, flowsec, dirty, div[, dpi[, maker]])\n"
"-> (off, packets, bytes, code, key, src_is_a, last_ts)\n\n"
"Record classic-pcap packets from buf[off:size] until a batch limit (code 0), the end\n"
"(1), a record Python must handle (2) or the first packet of an unknown flow (3, with\n"
"its key and whether its source is the key's first endpoint). flows: key -> Flow\n"
"(flow(conn, a_is_local, conn_id[, nDPI state bytearray])); dpi: (module, process, extra, cap,\n"
"settled list) with the addresses of libndpi's functions, or None; maker: (Conn,\n"
"recorder, conns, hostnames, local_ips, open_state or None, learn_answers) to create new\n"
"flows here and record DNS answers (their (name, ip) pairs handed to learn_answers)\n"
"(code 3 then only for flows the recorder knows), or None; plain: bytearray\n"
"of packed rows\n"
"(capturedb.PLAIN_FORMAT); blob: bytearray of packet bytes, each framed as a pcapng\n"
"EPB with ticks of div ns when div > 0.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t off, size, max_rows, max_bytes, taken = 0;
    int big, rhl;
    long long unit, div, total = 0, last_ts = 0;
    unsigned int snaplen, linktype;
    PyObject *key = NULL;
    int code = END, src_is_a = 0;
    const unsigned char *buf;
    long long limit;
    Sink s;
    PyObject *dpi = NULL, *mk = NULL;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnpLiIIO!O!O!LnnO!O!L|OO", &view, &off, &size, &big, &unit,
                          &rhl, &snaplen, &linktype, &FlowTableType, &s.flows, &PyByteArray_Type,
                          &s.plain, &PyByteArray_Type, &s.blob, &s.next_id, &max_rows,
                          &max_bytes, &PyDict_Type, &s.flowsec, &PyDict_Type, &s.dirty, &div,
                          &dpi, &mk))
        return NULL;
    sink_start(&s);
    if (parse_dpi(dpi, &s.dpi) < 0 || parse_maker(mk, &s.mk) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (size > view.len) size = view.len;
    if (off < 0 || unit <= 0 || rhl < 16) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan: need off >= 0, unit > 0, rhl >= 16");
        return NULL;
    }
    buf = (const unsigned char *)view.buf;
    limit = NS / unit;
    if (snaplen == 0) snaplen = MAX_CAPLEN;

    while (1) {
        const unsigned char *h;
        uint32_t sec, frac, caplen, origlen;
        long long ts;
        int rc;

        if (taken >= max_rows || s.blob_used >= max_bytes) { code = FULL; break; }
        if (off >= size) { code = END; break; }
        if (off + rhl > size) { code = SLOW; break; }
        h = buf + off;
        sec = rd32(h, big);
        frac = rd32(h + 4, big);
        caplen = rd32(h + 8, big);
        origlen = rd32(h + 12, big);
        if (caplen > MAX_CAPLEN || off + rhl + (Py_ssize_t)caplen > size ||
            frac >= limit || caplen > snaplen || caplen > origlen) {
            code = SLOW;   /* Python's reader stops or warns with the words for it */
            break;
        }
        ts = (long long)sec * NS + (long long)frac * unit;
        rc = record(&s, h + rhl, caplen, origlen, ts, linktype, 0, div, &key, &src_is_a);
        if (rc < 0) goto fail;
        if (rc != TAKEN) { code = rc; break; }
        taken++;
        total += origlen;
        last_ts = ts;
        off += rhl + caplen;
    }
    PyBuffer_Release(&view);
    if (flows_sync(&s.touched) < 0 || sink_trim(&s) < 0) { Py_XDECREF(key); return NULL; }
    return result(off, taken, total, code, key, src_is_a, last_ts);

fail:
    Py_XDECREF(key);
    PyBuffer_Release(&view);
    flows_sync(&s.touched);
    sink_trim(&s);   /* the exception raised stays the one reported */
    return NULL;
}

/* One interface of the current pcapng section, as the Python reader converts it. */
typedef struct {
    uint32_t gid, linktype, snaplen;
    unsigned long long mult, div;
    long long tsoff, epb_div;
    int usable;
} Iface;

PyDoc_STRVAR(scan_pcapng_doc,
"scan_pcapng(buf, off, size, big_endian, ifaces, flows, plain, blob, next_id, max_rows,\n"
"            max_bytes, flowsec, dirty[, dpi[, maker]])\n"
"-> (off, packets, bytes, code, key, src_is_a, last_ts)\n\n"
"As scan(), for the Enhanced Packet Blocks of one pcapng section: ifaces holds, per\n"
"section-local interface id, (file-wide id, linktype, mult, div, ts offset ns, snaplen,\n"
"epb div) with ts = ticks * mult // div + offset as pcapng_reader computes it. Any other\n"
"block, an EPB with options, or anything needing a warning is left to Python (code 2).");

static PyObject *scan_pcapng(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t off, size, max_rows, max_bytes, taken = 0, n, i;
    int big, code = END, src_is_a = 0;
    long long total = 0, last_ts = 0;
    PyObject *ifaces, *key = NULL;
    Iface *ifs = NULL;
    const unsigned char *buf;
    Sink s;
    PyObject *dpi = NULL, *mk = NULL;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnpO!O!O!O!LnnO!O!|OO", &view, &off, &size, &big,
                          &PyTuple_Type, &ifaces, &FlowTableType, &s.flows, &PyByteArray_Type,
                          &s.plain, &PyByteArray_Type, &s.blob, &s.next_id, &max_rows,
                          &max_bytes, &PyDict_Type, &s.flowsec, &PyDict_Type, &s.dirty, &dpi,
                          &mk))
        return NULL;
    sink_start(&s);
    if (parse_dpi(dpi, &s.dpi) < 0 || parse_maker(mk, &s.mk) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (size > view.len) size = view.len;
    if (off < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan_pcapng: need off >= 0");
        return NULL;
    }
    n = PyTuple_GET_SIZE(ifaces);
    ifs = PyMem_Calloc(n ? n : 1, sizeof(Iface));
    if (ifs == NULL) { PyBuffer_Release(&view); return PyErr_NoMemory(); }
    for (i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(ifaces, i);
        unsigned long long gid, lt, snap, mult, div;
        long long tsoff, epb_div;
        if (!PyArg_ParseTuple(t, "KKKKLKL", &gid, &lt, &mult, &div, &tsoff, &snap, &epb_div)) {
            /* a time offset out of 64-bit range: Python reads that interface (mult/div
             * beyond 64 bits come as div 0 from pcapng_section) */
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto fail;
            PyErr_Clear();
            continue;
        }
        if (div == 0 || epb_div <= 0 || gid > 0xFFFFFFFFu) continue;
        ifs[i].gid = (uint32_t)gid;
        ifs[i].linktype = (uint32_t)lt;
        ifs[i].snaplen = (uint32_t)snap;
        ifs[i].mult = mult;
        ifs[i].div = div;
        ifs[i].tsoff = tsoff;
        ifs[i].epb_div = epb_div;
        ifs[i].usable = 1;
    }
    buf = (const unsigned char *)view.buf;

    while (1) {
        const unsigned char *b;
        uint32_t btype, blen, if_id, caplen, origlen, pad;
        unsigned __int128 v;
        Iface *fi;
        long long ts;
        int rc;

        if (taken >= max_rows || s.blob_used >= max_bytes) { code = FULL; break; }
        if (off >= size) { code = END; break; }
        if (off + 32 > size) { code = SLOW; break; }
        b = buf + off;
        btype = rd32(b, big);
        blen = rd32(b + 4, big);
        if (btype != 6 || blen < 32 || (blen & 3) || off + (Py_ssize_t)blen > size ||
            rd32(b + blen - 4, big) != blen) { code = SLOW; break; }
        /* The next block's trailing length is read before its packet's bytes are copied:
         * a cache miss each block (~70 ns; the copy streams through the bytes, the
         * trailer is past them). Its header is in the line just read: ask for it now. */
        if (off + (Py_ssize_t)blen + 8 <= size) {
            uint32_t next = rd32(b + blen + 4, big);
            if (next >= 32 && off + (Py_ssize_t)blen + next <= size)
                PREFETCH(b + blen + next - 4);
        }
        if_id = rd32(b + 8, big);
        caplen = rd32(b + 20, big);
        origlen = rd32(b + 24, big);
        pad = (4 - (caplen & 3)) & 3;
        /* exactly no options (options carry comments, flags, pids: Python's) */
        if ((Py_ssize_t)if_id >= n || !ifs[if_id].usable || caplen > blen - 32 ||
            32 + (unsigned long long)caplen + pad != blen) { code = SLOW; break; }
        fi = &ifs[if_id];
        if ((fi->snaplen && caplen > fi->snaplen) || caplen > origlen) { code = SLOW; break; }
        v = ((unsigned __int128)(((unsigned long long)rd32(b + 12, big) << 32) |
                                 rd32(b + 16, big))) * fi->mult;
        if (fi->div != 1) v /= fi->div;
        if (v >= ((unsigned __int128)1 << 63)) { code = SLOW; break; }
        ts = (long long)v;
        if ((fi->tsoff > 0 && ts > LLONG_MAX - fi->tsoff) || ts + fi->tsoff < 0) {
            code = SLOW;   /* outside 0..2^63: the ts-range warning and ts_raw are Python's */
            break;
        }
        ts += fi->tsoff;
        rc = record(&s, b + 28, caplen, origlen, ts, fi->linktype, fi->gid, fi->epb_div,
                    &key, &src_is_a);
        if (rc < 0) goto fail;
        if (rc != TAKEN) { code = rc; break; }
        taken++;
        total += origlen;
        last_ts = ts;
        off += blen;
    }
    PyMem_Free(ifs);
    PyBuffer_Release(&view);
    if (flows_sync(&s.touched) < 0 || sink_trim(&s) < 0) { Py_XDECREF(key); return NULL; }
    return result(off, taken, total, code, key, src_is_a, last_ts);

fail:
    Py_XDECREF(key);
    PyMem_Free(ifs);
    PyBuffer_Release(&view);
    flows_sync(&s.touched);
    sink_trim(&s);   /* the exception raised stays the one reported */
    return NULL;
}

typedef DpiProto (*dpi_giveup_fn)(void *, void *, uint8_t, uint8_t *);
typedef void (*dpi_free_fn)(void *);

PyDoc_STRVAR(settle_doc,
"settle(conns, pending, dirty, names, complete, module, giveup, free[, named])\n\n"
"AppLabeller.complete for the flows the scanner settled (`conns`, those still in\n"
"`pending`): a flow nDPI detected as a protocol of `named` (or any, without `named`)\n"
"goes to complete(conn); another detected one gets its labels from\n"
"names(master, app, category) here, is marked in `dirty` and its nDPI flow freed; one\n"
"it did not detect gets nDPI's give-up verdict here (ndpi_detection_giveup, as\n"
"Detector.giveup), its labels from names(master, app, category), is marked in `dirty`\n"
"and its nDPI flow freed (ndpi_free_flow) - two ctypes calls less per flow.");

/* names(master, app, category), read first from `memo` (names()' own memo: a dict keyed
 * by the same tuple) - a call of the Python method each cost ~0.4 us, once per flow */
static PyObject *app_names(PyObject *names, PyObject *memo, int master, int app, int cat) {
    PyObject *key, *v;
    if (memo == NULL) return PyObject_CallFunction(names, "iii", master, app, cat);
    if ((key = Py_BuildValue("(iii)", master, app, cat)) == NULL) return NULL;
    v = PyDict_GetItemWithError(memo, key);
    Py_DECREF(key);
    if (v != NULL) {
        Py_INCREF(v);
        return v;
    }
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallFunction(names, "iii", master, app, cat);
}

static PyObject *settle(PyObject *self, PyObject *args) {
    PyObject *conns, *pending, *dirty, *names, *complete, *named = NULL, *memo = NULL;
    unsigned long long mod, giveup, freefn;
    Py_ssize_t i;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!OOKKK|O!O!", &PyList_Type, &conns, &PyDict_Type,
                          &pending, &PyDict_Type, &dirty, &names, &complete, &mod, &giveup,
                          &freefn, &PyTuple_Type, &named, &PyDict_Type, &memo))
        return NULL;
    if (!mod || !giveup || !freefn) {
        PyErr_SetString(PyExc_ValueError, "settle: nDPI addresses missing");
        return NULL;
    }
    for (i = 0; i < PyList_GET_SIZE(conns); i++) {
        PyObject *conn = PyList_GET_ITEM(conns, i), *cid, *pair, *st, *app, *r;
        DpiState *ds;
        DpiProto p;
        uint8_t guessed = 0;
        int rc, detected;
        if ((cid = PyObject_GetAttr(conn, a_id)) == NULL) return NULL;
        pair = PyDict_GetItemWithError(pending, cid);
        if (pair == NULL) {
            Py_DECREF(cid);
            if (PyErr_Occurred()) return NULL;
            continue;   /* named already (by the Python path) */
        }
        st = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 ? PyTuple_GET_ITEM(pair, 1) : NULL;
        ds = st != NULL && PyByteArray_Check(st) &&
             PyByteArray_GET_SIZE(st) == (Py_ssize_t)sizeof(DpiState)
             ? (DpiState *)PyByteArray_AS_STRING(st) : NULL;
        detected = ds != NULL && (ds->master || ds->app);
        app = NULL;
        if (ds != NULL && ds->flow && detected && named != NULL) {
            /* detected: its labels here too, unless its protocol is one whose names nDPI
             * read go with it (`named`: HTTP, TLS, QUIC) - those are complete()'s (a
             * Python call and a ctypes free less for each DNS flow, ~4 us) */
            int has;
            app = app_names(names, memo, (int)ds->master, (int)ds->app, (int)ds->category);
            if (app == NULL) { Py_DECREF(cid); return NULL; }
            has = PyTuple_Check(app) && PyTuple_GET_SIZE(app) > 0
                  ? PySequence_Contains(named, PyTuple_GET_ITEM(app, 0)) : 1;
            if (has < 0) { Py_DECREF(app); Py_DECREF(cid); return NULL; }
            if (has) Py_CLEAR(app);
        }
        if (app == NULL && (ds == NULL || detected || !ds->flow)) {
            Py_DECREF(cid);   /* names nDPI read go with it: Python's */
            if ((r = PyObject_CallOneArg(complete, conn)) == NULL) return NULL;
            Py_DECREF(r);
            continue;
        }
        if (app == NULL) {   /* not detected: nDPI's give-up guess */
            p = ((dpi_giveup_fn)(uintptr_t)giveup)((void *)(uintptr_t)mod,
                                                    (void *)(uintptr_t)ds->flow, 1, &guessed);
            app = app_names(names, memo, (int)p.master, (int)p.app, (int)p.category);
            if (app == NULL) { Py_DECREF(cid); return NULL; }
        }
        rc = PyObject_SetAttr(conn, a_app, app);
        Py_DECREF(app);
        Py_INCREF(st);   /* held across the pop */
        if (rc < 0 || PyDict_SetItem(dirty, cid, conn) < 0 || PyDict_DelItem(pending, cid) < 0) {
            Py_DECREF(st);
            Py_DECREF(cid);
            return NULL;
        }
        Py_DECREF(cid);
        ((dpi_free_fn)(uintptr_t)freefn)((void *)(uintptr_t)ds->flow);
        ds->flow = 0;
        ds->done = 1;
        Py_DECREF(st);
    }
    Py_RETURN_NONE;
}

/* A batch's connection rows (Conn.row) packed for the bulk writer: making 20-tuples in
 * Python and pickling them cost the parsing process ~0.4 s per 1M packets of short
 * flows. pack_conns writes each row's values straight from the Conn's attributes into
 * bytes - per row a count, then per value 'i' + int64, 's' + uint32 length + UTF-8, or
 * 'n' (None) - and unpack_conns (run where the bytes are unpickled, in the writer
 * process) makes the same {id: row tuple} dict again, so the writer's interface is
 * unchanged. A connection with a process label or a peer, or a value of another kind
 * (an int beyond 64 bits, a string UTF-8 cannot hold), is packed from its row(). */

typedef struct { unsigned char *p; Py_ssize_t used, cap; } Buf;

static unsigned char *buf_take(Buf *b, Py_ssize_t n) {
    unsigned char *at;
    if (b->used + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap * 2 : 65536;
        unsigned char *q;
        while (cap < b->used + n) cap *= 2;
        if ((q = PyMem_Realloc(b->p, cap)) == NULL) { PyErr_NoMemory(); return NULL; }
        b->p = q;
        b->cap = cap;
    }
    at = b->p + b->used;
    b->used += n;
    return at;
}

/* one value; 1: packed, 0: a kind the format does not hold (nothing written), -1 */
static int put_value(Buf *b, PyObject *v) {
    unsigned char *p;
    if (v == Py_None) {
        if ((p = buf_take(b, 1)) == NULL) return -1;
        *p = 'n';
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        int over = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &over);   /* (fast for small ints) */
        if (over) return 0;
        if (x == -1 && PyErr_Occurred()) return -1;
        if ((p = buf_take(b, 9)) == NULL) return -1;
        *p = 'i';
        put(p + 1, (unsigned long long)x, 8);
        return 1;
    }
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s;
        if (PyUnicode_IS_COMPACT_ASCII(v)) {   /* addresses, states, most names */
            n = PyUnicode_GET_LENGTH(v);
            s = (const char *)PyUnicode_DATA(v);
        } else {
            s = PyUnicode_AsUTF8AndSize(v, &n);
        }
        if (s == NULL) {   /* lone surrogates: not ours */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeError)) return -1;
            PyErr_Clear();
            return 0;
        }
        if (n > 0x7FFFFFFF) return 0;
        if ((p = buf_take(b, 5 + n)) == NULL) return -1;
        *p = 's';
        put(p + 1, (unsigned long long)n, 4);
        memcpy(p + 5, s, n);
        return 1;
    }
    return 0;
}

/* Conn.row's values, read from the conn: 1 packed, 0 not this way (b->used restored), -1 */
static int put_conn(Buf *b, PyObject *conn) {
    static PyObject **names[] = {&a_id, &a_proto, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                 &a_first, &a_last, &a_pout, &a_bout, &a_pin, &a_bin,
                                 &a_state, &a_hostname};
    PyObject *lab = NULL, *peer = NULL, *local = NULL, *remote = NULL, *app = NULL, *v;
    Py_ssize_t start = b->used, i;
    int rc = -1, ok = 1;
    unsigned char *p;
    if ((lab = cget(conn, a_label)) == NULL ||
        (peer = cget(conn, a_peer)) == NULL ||
        (local = cget(conn, a_local)) == NULL ||
        (remote = cget(conn, a_remote)) == NULL ||
        (app = cget(conn, a_app)) == NULL)
        goto done;
    if (lab != Py_None || peer != Py_None || !PyTuple_CheckExact(local) ||
        PyTuple_GET_SIZE(local) != 2 || !PyTuple_CheckExact(remote) ||
        PyTuple_GET_SIZE(remote) != 2 ||
        (app != Py_None && !(PyTuple_CheckExact(app) && PyTuple_GET_SIZE(app) == 3))) {
        rc = 0;
        goto done;
    }
    if ((p = buf_take(b, 1)) == NULL) goto done;
    *p = 22;
    for (i = 0; i < 22 && ok == 1; i++) {
        if (i < 17 && names[i] != NULL) {
            if ((v = cget(conn, *names[i])) == NULL) goto done;
            ok = put_value(b, v);
            Py_DECREF(v);
        } else if (i == 2 || i == 3) {
            ok = put_value(b, PyTuple_GET_ITEM(local, i - 2));
        } else if (i == 4 || i == 5) {
            ok = put_value(b, PyTuple_GET_ITEM(remote, i - 4));
        } else if (i == 6 || i == 17) {
            ok = put_value(b, Py_None);    /* process ids: no label, no peer */
        } else if (i == 7 || i == 8 || i == 18) {
            if ((p = buf_take(b, 9)) == NULL) goto done;
            *p = 'i';
            put(p + 1, 0, 8);
        } else {   /* 19..21: the application labels */
            ok = put_value(b, app == Py_None ? Py_None : PyTuple_GET_ITEM(app, i - 19));
        }
        if (ok < 0) goto done;
    }
    rc = ok;
done:
    if (rc != 1) b->used = start;
    Py_XDECREF(lab); Py_XDECREF(peer); Py_XDECREF(local); Py_XDECREF(remote); Py_XDECREF(app);
    return rc;
}

/* any row tuple; 1, 0 (b->used restored) or -1 */
static int put_row(Buf *b, PyObject *row) {
    Py_ssize_t start = b->used, i, n;
    unsigned char *p;
    if (!PyTuple_CheckExact(row) || (n = PyTuple_GET_SIZE(row)) == 0 || n > 255) return 0;
    if ((p = buf_take(b, 1)) == NULL) return -1;
    *p = (unsigned char)n;
    for (i = 0; i < n; i++) {
        int ok = put_value(b, PyTuple_GET_ITEM(row, i));
        if (ok != 1) {
            b->used = start;
            return ok;
        }
    }
    return 1;
}

PyDoc_STRVAR(pack_conns_doc,
"pack_conns(conns) -> (packed, rest)\n\n"
"The rows of `conns` (an iterable of Conn) as unpack_conns reads them back: {c.id:\n"
"c.row()} in the same order. Rows the format cannot hold are in `rest` (a list of\n"
"row tuples; a 0 count in `packed` marks where each goes).");

static PyObject *pack_conns(PyObject *self, PyObject *arg) {
    PyObject *it, *conn, *rest, *out = NULL;
    Buf b = {NULL, 0, 0};
    (void)self;
    if ((rest = PyList_New(0)) == NULL) return NULL;
    if ((it = PyObject_GetIter(arg)) == NULL) { Py_DECREF(rest); return NULL; }
    while ((conn = PyIter_Next(it)) != NULL) {
        int ok = put_conn(&b, conn);
        if (ok == 0) {
            PyObject *row = PyObject_CallMethodNoArgs(conn, a_row);
            ok = row == NULL ? -1 : put_row(&b, row);
            if (ok == 0) {
                unsigned char *p = buf_take(&b, 1);
                ok = p == NULL || PyList_Append(rest, row) < 0 ? -1 : 1;
                if (p != NULL) *p = 0;
            }
            Py_XDECREF(row);
        }
        Py_DECREF(conn);
        if (ok < 0) goto fail;
    }
    if (PyErr_Occurred()) goto fail;
    {
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)b.p, b.used);
        if (bytes != NULL) out = PyTuple_Pack(2, bytes, rest);
        Py_XDECREF(bytes);
    }
fail:
    Py_DECREF(it);
    Py_DECREF(rest);
    PyMem_Free(b.p);
    return out;
}

static long long get64(const unsigned char *p) {
    unsigned long long v = 0;
    int i;
    for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return (long long)v;
}

PyDoc_STRVAR(unpack_conns_doc,
"unpack_conns(packed, rest) -> {id: row tuple}: pack_conns's rows again.");

static PyObject *unpack_conns(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *rest, *out;
    const unsigned char *p, *end;
    Py_ssize_t next_rest = 0;
    PyObject *seen[32] = {NULL};   /* per column: the last string made */
    int c;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*O!", &view, &PyList_Type, &rest)) return NULL;
    p = (const unsigned char *)view.buf;
    end = p + view.len;
    if ((out = PyDict_New()) == NULL) goto fail;
    while (p < end) {
        int n = *p++, i;
        PyObject *row;
        if (n == 0) {
            if (next_rest >= PyList_GET_SIZE(rest)) goto bad;
            row = PyList_GET_ITEM(rest, next_rest++);
            Py_INCREF(row);
        } else {
            if ((row = PyTuple_New(n)) == NULL) goto fail;
            for (i = 0; i < n; i++) {
                PyObject *v;
                if (p >= end) { Py_DECREF(row); goto bad; }
                if (*p == 'n') {
                    Py_INCREF(Py_None);
                    v = Py_None;
                    p += 1;
                } else if (*p == 'i' && end - p >= 9) {
                    v = PyLong_FromLongLong(get64(p + 1));
                    p += 9;
                } else if (*p == 's' && end - p >= 5) {
                    Py_ssize_t len = (Py_ssize_t)rd32(p + 1, 0);
                    PyObject *prev = i < 32 ? seen[i] : NULL;
                    if (end - p - 5 < len) { Py_DECREF(row); goto bad; }
                    /* a column's string as the row before's (states, labels): shared,
                     * as unpickling shares what pickle memoized */
                    if (prev != NULL && PyUnicode_IS_COMPACT_ASCII(prev) &&
                        PyUnicode_GET_LENGTH(prev) == len &&
                        memcmp(PyUnicode_DATA(prev), p + 5, (size_t)len) == 0) {
                        Py_INCREF(prev);
                        v = prev;
                    } else {
                        v = PyUnicode_DecodeUTF8((const char *)p + 5, len, "strict");
                        if (v != NULL && i < 32) {
                            Py_INCREF(v);
                            Py_XSETREF(seen[i], v);
                        }
                    }
                    p += 5 + len;
                } else {
                    Py_DECREF(row);
                    goto bad;
                }
                if (v == NULL) { Py_DECREF(row); goto fail; }
                PyTuple_SET_ITEM(row, i, v);
            }
        }
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) == 0 ||
            PyDict_SetItem(out, PyTuple_GET_ITEM(row, 0), row) < 0) {
            Py_DECREF(row);
            if (!PyErr_Occurred()) goto bad;
            goto fail;
        }
        Py_DECREF(row);
    }
    PyBuffer_Release(&view);
    for (c = 0; c < 32; c++) Py_XDECREF(seen[c]);
    return out;
bad:
    PyErr_SetString(PyExc_ValueError, "unpack_conns: damaged rows");
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    for (c = 0; c < 32; c++) Py_XDECREF(seen[c]);
    return NULL;
}

static PyObject *py_dns_answers(PyObject *self, PyObject *arg) {
    Py_buffer view;
    PyObject *out;
    (void)self;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    out = dns_pairs((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return out;
}

PyDoc_STRVAR(idle_conns_doc,
"idle_conns(conns, dirty, idle_ns) -> [(key, conn)] or None\n\n"
"Recorder._evict's choice, in C: the items of `conns` (key -> Conn) whose connection is\n"
"not in `dirty` (conn id -> Conn) and is CLOSED or RESET, or has been idle more than\n"
"idle_ns before the newest last packet of them all. None where a value is not what the\n"
"scanner stores (a time beyond 64 bits): the caller decides in Python.");

/* conn.last as a C integer: 1, 0 (not one: the caller leaves it to Python), -1 (error) */
static int last_of(PyObject *conn, long long *last) {
    PyObject *v = cget(conn, a_last);
    int overflow = 0;
    if (v == NULL) return -1;
    *last = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &overflow) : 0;
    Py_DECREF(v);
    if (*last == -1 && PyErr_Occurred()) return -1;
    return PyLong_Check(v) && !overflow && *last > LLONG_MIN / 2 && *last < LLONG_MAX / 2;
}

static PyObject *idle_conns(PyObject *self, PyObject *args) {
    PyObject *conns, *dirty, *k, *c, *out = NULL;
    long long idle, newest = 0;
    Py_ssize_t pos = 0, n = 0, i;
    int have = 0;
    /* one visit to each connection (a cache miss each, ~100,000 a pass): the ones not
     * written this batch kept with their last time and whether they ended */
    struct { PyObject *key, *conn; long long last; int ended; } *cand;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!L", &PyDict_Type, &conns, &PyDict_Type, &dirty, &idle))
        return NULL;
    cand = PyMem_Malloc((size_t)(PyDict_GET_SIZE(conns) + 1) * sizeof(*cand));
    if (cand == NULL) return PyErr_NoMemory();
    while (PyDict_Next(conns, &pos, &k, &c)) {
        PyObject *id, *state;
        long long last;
        int ok, in;
        if ((ok = last_of(c, &last)) <= 0) {
            PyMem_Free(cand);
            if (ok < 0) return NULL;
            Py_RETURN_NONE;
        }
        if (!have || last > newest) newest = last;
        have = 1;
        if ((id = cget(c, a_id)) == NULL) goto done;
        in = PyDict_Contains(dirty, id);
        Py_DECREF(id);
        if (in < 0) goto done;
        if (in) continue;
        if ((state = cget(c, a_state)) == NULL) goto done;
        cand[n].ended = same_str(state, st_closed) || same_str(state, st_reset);
        Py_DECREF(state);
        if (PyErr_Occurred()) goto done;
        cand[n].key = k;      /* borrowed: `conns` holds them while this runs */
        cand[n].conn = c;
        cand[n].last = last;
        n++;
    }
    if ((out = PyList_New(0)) == NULL) goto done;
    for (i = 0; i < n; i++) {
        PyObject *pair;
        if (!cand[i].ended && newest - cand[i].last <= idle) continue;
        if ((pair = PyTuple_Pack(2, cand[i].key, cand[i].conn)) == NULL ||
            PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(pair);
    }
done:
    PyMem_Free(cand);
    return out;
}

static PyMethodDef methods[] = {
    {"settle", settle, METH_VARARGS, settle_doc},
    {"idle_conns", idle_conns, METH_VARARGS, idle_conns_doc},
    {"dns_answers", py_dns_answers, METH_O,
     "dns_answers(payload) -> [(name, ip)]: dissect/dns.py dns_answers, as the scanner reads "
     "DNS answers."},
    {"scan", scan, METH_VARARGS, scan_doc},
    {"pack_conns", pack_conns, METH_O, pack_conns_doc},
    {"unpack_conns", unpack_conns, METH_VARARGS, unpack_conns_doc},
    {"flow", py_flow, METH_VARARGS,
     "flow(conn, a_is_local, conn_id[, dpi_state]) -> a flows entry for conn (a_is_local: the "
     "key's first endpoint is its local one; dpi_state: its nDPI state while labelled)."},
    {"scan_pcapng", scan_pcapng, METH_VARARGS, scan_pcapng_doc},
    {"recycle", recycle, METH_O,
     "recycle(bytearray) -> it, emptied with its allocation kept: the next batch's buffer "
     "fills pages already touched (the scanner's appends keep the allocation too)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pcapscan", "Compiled fast path of pcap and pcapng ingest.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__pcapscan(void) {
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(a_pout, "pout");
    INTERN(a_bout, "bout");
    INTERN(a_pin, "pin");
    INTERN(a_bin, "bin");
    INTERN(a_last, "last");
    INTERN(a_state, "state");
    INTERN(a_fin, "fin");
    INTERN(a_next_conn, "next_conn");
    INTERN(a_hostname, "hostname");
    INTERN(a_id, "id");
    INTERN(a_app, "app");
    INTERN(a_proto, "proto");
    INTERN(a_local, "local");
    INTERN(a_remote, "remote");
    INTERN(a_label, "label");
    INTERN(a_peer, "peer");
    INTERN(a_first, "first");
    INTERN(a_row, "row");
    INTERN(st_empty, "");
    INTERN(st_est, "ESTABLISHED");
    INTERN(st_active, "ACTIVE");
    INTERN(st_reset, "RESET");
    INTERN(st_closed, "CLOSED");
    INTERN(st_closing, "CLOSING");
    INTERN(st_syn_sent, "SYN_SENT");
    INTERN(st_syn_received, "SYN_RECEIVED");
#undef INTERN
    {
        PyObject *m;
        if (PyType_Ready(&FlowType) < 0 || PyType_Ready(&FlowTableType) < 0) return NULL;
        if (getrandom(&table_seed, sizeof(table_seed), 0) != sizeof(table_seed))
            table_seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&table_seed;
        m = PyModule_Create(&module);
        if (m != NULL && PyModule_AddObjectRef(m, "FlowTable", (PyObject *)&FlowTableType) < 0) {
            Py_DECREF(m);
            return NULL;
        }
        if (m != NULL && (PyModule_AddObject(m, "AGG_NS", PyLong_FromLongLong(AGG_NS)) < 0 ||
                          PyModule_AddIntConstant(m, "DPI_STATE_SIZE", sizeof(DpiState)) < 0)) {
            Py_DECREF(m);
            return NULL;
        }
        return m;
    }
}
