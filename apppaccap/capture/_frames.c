/* The sniffer's frames into queue items, in C: capture/sniffer.py `frame_items`.
 *
 * A frame from the sniffer process (capture/sniffchild.py) is packets, each a 14-byte
 * header (u64 ts_ns, u16 adapter index, u32 length, little-endian) and its bytes. For each
 * packet the feeding thread made the item (ts, iface, data, decoded, flow key, the flow's
 * entry): in Python that was ~2.1 us a packet (0.7 here) of the service's interpreter
 * lock, the largest share of it while a live capture ran at 150,000 packets/s (py-spy
 * --gil, docs/INTERNALS.md: Capture). Here the common packet - Ethernet (802.1Q tags allowed),
 * IPv4 without fragmentation or IPv6 without extension headers, a whole TCP or UDP header,
 * nothing dissect/decode.py would note or warn about - is decoded into the same Decoded
 * named tuple decode() returns; every other packet goes to `fallback`, the Python path
 * (sniffer._item), so decode.py stays the one definition of a decoded packet and
 * tests/test_frames.py checks both give equal items on every packet of the corpus and on
 * damaged copies of them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>

#define HEADER 14
#define FIELDS 21 /* Decoded's fields (dissect/decoded.py) */
#define MAX_VLAN_TAGS 8 /* decode.py's _MAX_VLAN_TAGS */

/* Address text, direct-mapped: traffic repeats the same few addresses (decode.py keeps a
 * dict for the same reason); a slot is replaced on a miss, so memory stays bounded. */
#define SLOTS 8192
typedef struct {
    uint8_t len;
    uint8_t raw[16];
    PyObject *text;
} Slot;
static Slot slots[SLOTS];

static PyObject *address(const uint8_t *raw, int len) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < len; i++) h = (h ^ raw[i]) * 16777619u;
    Slot *s = &slots[h & (SLOTS - 1)];
    if (s->text == NULL || s->len != len || memcmp(s->raw, raw, (size_t)len) != 0) {
        char buf[INET6_ADDRSTRLEN];
        PyObject *text;
        if (len == 4)
            text = PyUnicode_FromFormat("%u.%u.%u.%u", raw[0], raw[1], raw[2], raw[3]);
        else {
            if (inet_ntop(AF_INET6, raw, buf, sizeof buf) == NULL) {
                PyErr_SetString(PyExc_ValueError, "an IPv6 address inet_ntop refused");
                return NULL;
            }
            text = PyUnicode_FromString(buf);
        }
        if (text == NULL) return NULL;
        Py_XSETREF(s->text, text);
        s->len = (uint8_t)len;
        memcpy(s->raw, raw, (size_t)len);
    }
    Py_INCREF(s->text);
    return s->text;
}

static inline unsigned u16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }
static inline uint32_t u32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

typedef struct {
    long l3, proto, sport, dport, flags, ttl, vlan, off, plen, l3off, l4off;
    uint32_t seq, ack;
    const uint8_t *src, *dst;
    int alen;
} Fields;

/* decode.py's decode() for the common packet of an Ethernet frame: 1 and `f` filled, or 0
 * where decode() would take another branch, note or warn (the caller falls back). */
static int decode_common(const uint8_t *p, long n, Fields *f) {
    long off = 14, lim = n, end, l4off, have;
    long l3;
    int tags = 0;
    if (n < 14) return 0;
    l3 = (long)u16(p + 12);
    f->vlan = -1;
    while (l3 == 0x8100 || l3 == 0x88A8 || l3 == 0x9100 || l3 == 0x9200) {
        if (off + 4 > n || ++tags > MAX_VLAN_TAGS) return 0; /* decode() notes either */
        if (f->vlan < 0) f->vlan = (long)(u16(p + off) & 0x0FFF);
        l3 = (long)u16(p + off + 2);
        off += 4;
    }
    f->l3 = l3;
    f->l3off = off;
    have = n - off;
    if (l3 == 0x0800) {
        long ihl, tot;
        if (have < 20 || p[off] >> 4 != 4) return 0;
        ihl = (long)(p[off] & 15) << 2;
        if (ihl < 20) return 0;
        tot = (long)u16(p + off + 2);
        f->ttl = p[off + 8];
        f->proto = p[off + 9];
        f->src = p + off + 12;
        f->dst = p + off + 16;
        f->alen = 4;
        end = off + tot;
        if (tot < ihl) {
            if (tot) return 0; /* decode() warns: bogus total length */
            end = n;
        }
        lim = end < n ? end : n;
        l4off = off + ihl;
        if (l4off > lim || (u16(p + off + 6) & 0x1FFF)) return 0; /* cut options; fragment */
    } else if (l3 == 0x86DD) {
        long plen;
        if (have < 40 || p[off] >> 4 != 6) return 0;
        plen = (long)u16(p + off + 4);
        f->proto = p[off + 6];
        f->ttl = p[off + 7];
        f->src = p + off + 8;
        f->dst = p + off + 24;
        f->alen = 16;
        end = plen ? off + 40 + plen : n;
        lim = end < n ? end : n;
        l4off = off + 40;
        switch (f->proto) {
        case 0: case 43: case 44: case 60: case 51: return 0; /* extension headers */
        }
    } else
        return 0;
    have = lim - l4off;
    f->l4off = l4off;
    f->seq = f->ack = 0;
    f->flags = 0;
    if (f->proto == 6) {
        long hlen;
        if (have < 20) return 0;
        f->sport = (long)u16(p + l4off);
        f->dport = (long)u16(p + l4off + 2);
        f->seq = u32(p + l4off + 4);
        f->ack = u32(p + l4off + 8);
        f->flags = (long)u16(p + l4off + 12);
        hlen = (f->flags >> 12) << 2;
        f->flags &= 0x01FF;
        if (hlen < 20 || hlen > have) return 0;
        off = l4off + hlen;
    } else if (f->proto == 17) {
        long ulen;
        if (have < 8) return 0;
        f->sport = (long)u16(p + l4off);
        f->dport = (long)u16(p + l4off + 2);
        ulen = (long)u16(p + l4off + 4);
        off = l4off + 8;
        if (ulen != 0) {
            if (ulen < 8) return 0;                 /* decode() warns */
            if (l4off + ulen <= lim) lim = l4off + ulen;
            else if (l4off + ulen > end) return 0;  /* decode() warns */
        }
    } else
        return 0;
    f->off = off;
    f->plen = lim - off > 0 ? lim - off : 0;
    return 1;
}

/* The item of a common packet, or NULL with an exception; `refs` and `on_flow` as
 * sniffer._item uses them (the flow's entry asked once per flow and frame, and again on a
 * client's SYN). */
static PyObject *common_item(PyObject *ts, PyObject *iface, PyObject *data, const Fields *f,
                             PyTypeObject *decoded, PyObject *on_flow, PyObject *refs) {
    PyObject *d = NULL, *key = NULL, *ref = NULL, *item = NULL, *src = NULL, *dst = NULL;
    PyObject *v[FIELDS];
    int i;
    src = address(f->src, f->alen);
    dst = src ? address(f->dst, f->alen) : NULL;
    if (dst == NULL) goto done;
    d = decoded->tp_alloc(decoded, FIELDS);
    if (d == NULL) goto done;
    v[0] = PyLong_FromLong(f->l3);
    v[1] = PyLong_FromLong(f->proto);
    v[2] = Py_NewRef(src);
    v[3] = Py_NewRef(dst);
    v[4] = PyLong_FromLong(f->sport);
    v[5] = PyLong_FromLong(f->dport);
    v[6] = PyLong_FromLong(f->flags);
    v[7] = PyLong_FromUnsignedLong(f->seq);
    v[8] = PyLong_FromUnsignedLong(f->ack);
    v[9] = PyLong_FromLong(f->ttl);
    v[10] = f->vlan < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(f->vlan);
    v[11] = Py_NewRef(Py_None);
    v[12] = Py_NewRef(Py_None);
    v[13] = PyLong_FromLong(f->off);
    v[14] = PyLong_FromLong(f->plen);
    v[15] = Py_NewRef(Py_False);
    v[16] = PyLong_FromLong(1);
    v[17] = PyLong_FromLong(f->l3off);
    v[18] = PyLong_FromLong(f->l4off);
    v[19] = Py_NewRef(Py_None);
    v[20] = Py_NewRef(data);
    for (i = 0; i < FIELDS; i++) {
        if (v[i] == NULL) { /* a failed allocation: the others are freed with the tuple */
            for (int j = 0; j < FIELDS; j++) PyTuple_SET_ITEM(d, j, v[j]);
            Py_CLEAR(d);
            goto done;
        }
    }
    for (i = 0; i < FIELDS; i++) PyTuple_SET_ITEM(d, i, v[i]);
    /* ints, text, bytes and None only: no cycle can pass through them, and the cycle
     * collector need not walk them while they wait in the queue and the batch */
    PyObject_GC_UnTrack(d);
    key = PyTuple_Pack(5, v[1], src, v[4], dst, v[5]); /* (proto, src, sport, dst, dport) */
    if (key == NULL) goto done;
    PyObject_GC_UnTrack(key);
    if (on_flow != Py_None) {
        int syn = f->proto == 6 && (f->flags & 0x12) == 0x02;
        if (!syn) {
            ref = PyDict_GetItemWithError(refs, key); /* borrowed */
            if (ref == NULL && PyErr_Occurred()) goto done;
            Py_XINCREF(ref);
        }
        if (ref == NULL || ref == Py_None) {
            Py_XDECREF(ref);
            ref = PyObject_CallFunction(on_flow, "OO", key, syn ? Py_True : Py_False);
            if (ref == NULL || PyDict_SetItem(refs, key, ref) < 0) goto done;
        }
    } else
        ref = Py_NewRef(Py_None);
    item = PyTuple_Pack(6, ts, iface, data, d, key, ref);
    /* No cycle passes through an item (nothing it reaches refers back to it): the cycle
     * collector need not walk the items waiting in the queue and the hold buffer. The
     * entry it holds stays tracked, and an untracked holder only keeps it reachable. */
    if (item != NULL) PyObject_GC_UnTrack(item);
done:
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_XDECREF(d);
    Py_XDECREF(key);
    Py_XDECREF(ref);
    return item;
}

PyDoc_STRVAR(items_doc,
"items(payload, linktypes, decoded, on_flow, refs, fallback, failed) -> list\n\n"
"The queue items of one frame of packets: (ts, iface, data, Decoded, key, entry) each.\n"
"`decoded` is dissect/decoded.py's Decoded; `on_flow(key, syn)` gives a flow's entry (or\n"
"None: no attribution), kept in the dict `refs` for the frame; `fallback(ts, iface, data)`\n"
"is called for every packet this decoder leaves to Python and returns its item, or None\n"
"to leave the packet out; `failed(exception)` is called when on_flow raised (the packet\n"
"is left out). A trailing header cut short ends the frame.");

static PyObject *items(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *linktypes, *on_flow, *refs, *fallback, *failed, *out = NULL;
    PyTypeObject *decoded;
    Py_ssize_t off = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*O!O!OO!OO", &buf, &PyList_Type, &linktypes, &PyType_Type,
                          &decoded, &on_flow, &PyDict_Type, &refs, &fallback, &failed))
        return NULL;
    if (!PyType_IsSubtype(decoded, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "items: decoded must be a tuple type");
        goto fail;
    }
    out = PyList_New(0);
    if (out == NULL) goto fail;
    while (buf.len - off >= HEADER) {
        const uint8_t *h = (const uint8_t *)buf.buf + off;
        uint64_t ts = 0;
        unsigned adapter = h[8] | (unsigned)h[9] << 8;
        uint32_t len = (uint32_t)h[10] | (uint32_t)h[11] << 8 | (uint32_t)h[12] << 16 |
                       (uint32_t)h[13] << 24;
        Py_ssize_t n;
        PyObject *pts, *piface, *data, *item = NULL;
        Fields f;
        unsigned long lt = 0;
        for (int i = 7; i >= 0; i--) ts = ts << 8 | h[i];
        off += HEADER;
        /* as a slice past the end would be */
        n = (uint64_t)len > (uint64_t)(buf.len - off) ? buf.len - off : (Py_ssize_t)len;
        data = PyBytes_FromStringAndSize((const char *)buf.buf + off, n);
        off += n;
        pts = PyLong_FromUnsignedLongLong(ts);
        piface = PyLong_FromUnsignedLong(adapter);
        if (data == NULL || pts == NULL || piface == NULL) goto item_fail;
        if (adapter < (unsigned)PyList_GET_SIZE(linktypes)) {
            /* masked as decode() masks it (a value past 32 bits is no link type we know) */
            lt = PyLong_AsUnsignedLongMask(PyList_GET_ITEM(linktypes, adapter));
            if (lt == (unsigned long)-1 && PyErr_Occurred()) goto item_fail;
        } else
            lt = 0; /* no such adapter: _item's lookup fails and says so */
        if ((lt & 0x0FFFFFFF) == 1 && decode_common((const uint8_t *)buf.buf + off - n, n, &f)) {
            item = common_item(pts, piface, data, &f, decoded, on_flow, refs);
            if (item == NULL) {
                /* on_flow raised: as in _item, `failed` logs it and the packet is left out
                 * (one bad packet must not end the frame, nor the feeding thread); a
                 * BaseException that is no Exception goes on up, as from _item */
                PyObject *type, *value, *tb;
                if (!PyErr_ExceptionMatches(PyExc_Exception)) goto item_fail;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                if (tb != NULL) PyException_SetTraceback(value, tb);
                item = PyObject_CallOneArg(failed, value);
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
            }
        } else /* a packet left to Python */
            item = PyObject_CallFunctionObjArgs(fallback, pts, piface, data, NULL);
        if (item == NULL) goto item_fail;
        if (item != Py_None && PyList_Append(out, item) < 0) goto item_fail;
        Py_DECREF(item);
        Py_DECREF(data);
        Py_DECREF(pts);
        Py_DECREF(piface);
        continue;
    item_fail:
        Py_XDECREF(item);
        Py_XDECREF(data);
        Py_XDECREF(pts);
        Py_XDECREF(piface);
        Py_CLEAR(out);
        goto fail;
    }
fail:
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"items", items, METH_VARARGS, items_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "apppaccap.capture._frames",
    "The sniffer's frames into queue items (capture/sniffer.py), in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__frames(void) { return PyModule_Create(&module); }
