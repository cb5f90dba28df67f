/* nDPI's per-flow step, shared by the compiled ingest scanner (ingest/_pcapscan.c) and the
 * live recorder (capture/_record.c).
 *
 * nDPI is reached through function pointers the caller hands over (capture/applabels.py
 * loads libndpi with ctypes): no build-time dependency on nDPI's headers or library. A
 * flow still being labelled holds a bytearray of DpiState, the layout of
 * applabels.STATE, read and written by the Python side too. */
#ifndef APPPACCAP_DPISTATE_H
#define APPPACCAP_DPISTATE_H

#include <stdint.h>

typedef struct { uint16_t master, app; int32_t category; } DpiProto;  /* ndpi_protocol 4.2 */
typedef DpiProto (*dpi_process_fn)(void *, void *, const unsigned char *, unsigned short,
                                   uint64_t);
typedef uint8_t (*dpi_extra_fn)(void *, void *);
typedef struct { uint64_t flow; uint32_t fed; uint16_t master, app; int32_t category;
                 uint32_t done; } DpiState;

/* AppLabeller.feed's step for one packet of a flow nDPI still looks at (not done, flow
 * open; the caller checked): `l3` is the packet from its IP header, `ts_ms` its time.
 * 1 when the flow's label is settled by this packet (detected with nothing more to learn,
 * or the cap reached: Python names it and frees nDPI's flow), else 0. */
static inline int dpi_step(void *mod, dpi_process_fn process, dpi_extra_fn extra,
                           uint32_t cap, DpiState *st, const unsigned char *l3, long long len,
                           uint64_t ts_ms) {
    DpiProto p;
    if (len > 0xFFFF) len = 0xFFFF;
    p = process(mod, (void *)(uintptr_t)st->flow, l3, (unsigned short)len, ts_ms);
    st->fed++;
    if (p.master || p.app) {
        st->master = p.master;
        st->app = p.app;
        st->category = p.category;
        if (!extra(mod, (void *)(uintptr_t)st->flow)) st->done = 1;
    }
    if (st->fed >= cap) st->done = 1;
    return st->done ? 1 : 0;
}

#endif
