"""A paced UDP sender fast enough to saturate tcpdump on loopback, for live_rate.py and
api_load.py: C with sendmmsg (one system call per batch of up to 256 datagrams), compiled
with gcc into a temporary directory on first use. Python tops out near 45k sendto/s here;
this sends well past what tcpdump keeps. Each datagram carries its sequence number."""

from __future__ import annotations

import os
import subprocess
import tempfile

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define BATCH 256
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: sender PORT RATE SECONDS [SIZE [FLOW NPORTS]]\n");
        return 2;
    }
    int port = atoi(argv[1]); double rate = atof(argv[2]), secs = atof(argv[3]);
    int size = argc > 4 ? atoi(argv[4]) : 100;
    /* FLOW > 0: short flows, FLOW datagrams each from a new socket (a new source port),
       to ports PORT .. PORT+NPORTS-1 in turn (ephemeral ports come back later) */
    int flow = argc > 5 ? atoi(argv[5]) : 0, nports = argc > 6 ? atoi(argv[6]) : 1;
    if (size < 8 || size > 1400) size = 100;
    if (flow < 0 || flow > BATCH) flow = 0;
    if (nports < 1) nports = 1;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    long flows = 0;
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(0x7f000001);
    static char payload[BATCH][1400];
    struct iovec iov[BATCH]; struct mmsghdr msg[BATCH];
    memset(msg, 0, sizeof msg);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = payload[i]; iov[i].iov_len = size;
        msg[i].msg_hdr.msg_iov = &iov[i]; msg[i].msg_hdr.msg_iovlen = 1;
        msg[i].msg_hdr.msg_name = &a; msg[i].msg_hdr.msg_namelen = sizeof a;
    }
    long total = (long)(rate * secs), sent = 0;
    double start = now();
    while (sent < total) {
        long due = (long)((now() - start) * rate) + 1;
        if (due > total) due = total;
        while (sent < due) {
            int n = due - sent > BATCH ? BATCH : (int)(due - sent);
            if (flow) {
                n = flow;
                close(s);
                s = socket(AF_INET, SOCK_DGRAM, 0);
                a.sin_port = htons(port + (int)(flows++ % nports));
            }
            for (int i = 0; i < n; i++) { long seq = sent + i; memcpy(payload[i], &seq, 8); }
            int k = sendmmsg(s, msg, n, 0);
            if (k <= 0) { usleep(50); continue; }
            sent += k;
        }
        usleep(100);
    }
    printf("%ld %f\n", sent, now() - start);
    return 0;
}
"""


def sender_binary() -> str:
    """The compiled sender (built once per temporary directory)."""
    path = os.path.join(tempfile.gettempdir(), "apc_udp_mmsg_sender2")
    if not os.path.exists(path):
        work = tempfile.mkdtemp(prefix="apc-sender-")
        src = os.path.join(work, "sender.c")
        with open(src, "w") as fh:
            fh.write(SENDER_C)
        subprocess.run(["gcc", "-O2", "-o", os.path.join(work, "sender"), src], check=True)
        os.replace(os.path.join(work, "sender"), path)
    return path


def send(port: int, rate: float, seconds: float, size: int = 100, flow: int = 0,
         nports: int = 1) -> subprocess.Popen:
    """Start sending; communicate() gives "SENT SECONDS". `flow` > 0: short flows of that
    many datagrams, each from a new socket, to ports port .. port + nports - 1 in turn."""
    return subprocess.Popen([sender_binary(), str(port), str(rate), str(seconds), str(size),
                             str(flow), str(nports)], stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> tuple[int, float]:
    out = proc.communicate()[0].split()
    return int(out[0]), float(out[1])
