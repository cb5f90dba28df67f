// SPDX-License-Identifier: GPL-2.0
/* AppPacCap exact attribution: which task sends and which task reads each flow.
 *
 * CO-RE, built against vmlinux.h of the running kernel (make bpf). Only tp_btf hooks:
 * on the kernels we run on kprobes are compiled out and fentry is refused (lockdown), see
 * docs/ATTRIBUTION.md. Events are deduplicated here (LRU keyed by flow + direction: one
 * event when a flow's task is new or changes) and leave through a ring buffer whose
 * consumer is woken only once 64 KiB are waiting (it also polls every 50 ms).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define IPPROTO_ICMPV6 58

char LICENSE[] SEC("license") = "GPL";

#define DIR_OUT 0        /* packet sent: src is the local end, task = sender */
#define DIR_IN 1         /* payload copied to a reader: dst is the local end */
#define DIR_SOCK_OUT 2   /* socket-level send (sock_send_length): local/remote of the sock */
#define DIR_SOCK_IN 3    /* socket-level receive: TCP readers; UDP ones (no skb hook runs in their context) */

#define F_INFERRED 1     /* sent in softirq: the socket's last owner, not the running task */
#define F_PORT_HELD 2    /* UDP socket-level: its port was bound by number, so it leaves the
			  * port only when it is released (cgroup/sock_release counts that) */
#define F_SYN 8          /* a TCP SYN without ACK sent in context: a connection (re)starts */
#define F_DUAL 4         /* socket-level, IPv6: not IPV6_V6ONLY, so it receives IPv4 too */
#define SOCK_BINDPORT_LOCK 8

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define WAKE_BYTES (64 * 1024)

struct flow {
	__u8 proto;
	__u8 dir;
	__u8 family;     /* 4 or 6 */
	__u8 pad;
	__u16 sport;     /* host order; ICMP echo: the identifier in both */
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns;     /* network namespace inode: the same addresses mean other hosts */
};

struct event {
	__u64 ts;
	__u32 pid;
	__u32 tid;
	char comm[16];
	struct flow f;
	__u32 flags;
	__u64 gen;       /* UDP: the local port's generation (udp_port_gen) when seen */
};

/* one event's room in the ring buffer: the record plus libbpf's 8-byte header, 8-aligned */
#define RECORD_BYTES ((sizeof(struct event) + 8 + 7) & ~7UL)

struct owner {
	__u32 pid;
	__u32 tid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow);
	__type(value, __u64);      /* (pid << 32 | tid) ^ port_gen() last reported */
} seen SEC(".maps");

/* per CPU: the task a softirq runs on top of, 0 outside softirq. Softirqs do not nest on
 * one CPU, so a flag set at entry and cleared at exit suffices (a counter drifted: an
 * entry whose exit was never seen left it stuck); remembering the task as well keeps a
 * preempted softirq (PREEMPT_RT) from marking whatever runs next. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} softirq_task SEC(".maps");

/* last task that sent or received on a socket: the owner named, marked inferred, for what
 * the stack sends on its behalf in softirq. Socket-local storage, not a hash keyed by the
 * sock pointer: it dies with the socket, so a new socket the allocator puts at a closed
 * one's address never inherits the old owner (a keyed map named the old socket's thread
 * for the new one's handshake under load) */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct owner);
} sock_owner SEC(".maps");

/* counters: 0 events emitted, 1 ring buffer full (dropped), 2 softirq packets skipped */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &i);
	if (v)
		(*v)++;
}

static __always_inline int in_softirq(void)
{
	__u32 k = 0;
	__u64 *t = bpf_map_lookup_elem(&softirq_task, &k);
	return t && *t && *t == (__u64)bpf_get_current_task();
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(on_softirq_entry, unsigned int vec)
{
	__u32 k = 0;
	__u64 *t = bpf_map_lookup_elem(&softirq_task, &k);
	if (t)
		*t = bpf_get_current_task();
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(on_softirq_exit, unsigned int vec)
{
	__u32 k = 0;
	__u64 *t = bpf_map_lookup_elem(&softirq_task, &k);
	if (t)
		*t = 0;
	return 0;
}

/* UDP port generations: bumped each time a UDP socket takes a port by bind(), after the
 * kernel hashed it (post_bind). User space keeps a port's socket list while its
 * generation stays the same (sockdiag.py: a UDP port's list costs a walk of the kernel's
 * whole hash) and reads this map through mmap, without a system call. Attached to the
 * cgroup v2 root: every socket of the host's processes.
 *
 * A socket can also join a port without a bind that runs this hook: an automatic bind
 * (connect, sendto; IP_LOCAL_PORT_RANGE can aim it at one port) or a disconnect
 * (connect(AF_UNSPEC)) of a socket bound elsewhere in the list. Either needs the port's
 * sockets to allow sharing (SO_REUSEADDR, SO_REUSEPORT): a port bound by such a socket is
 * marked SHARED for good, and its list is read every time. A socket that sets the option
 * only after its bind is not seen (docs/ATTRIBUTION.md). */
#define PORTS 65536
#define SHARED (1ULL << 63)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, PORTS);
	__type(key, __u32);
	__type(value, __u64);   /* (an array's values are 8-byte aligned in its mmap) */
} udp_port_gen SEC(".maps");

/* The generation of a UDP flow's local port: user space trusts what the kernel saw on
 * that port only while it is unchanged (another socket may have taken the port since). */
static __always_inline __u64 port_gen(const struct flow *f)
{
	__u32 port;
	__u64 *g;
	if (f->proto != IPPROTO_UDP)
		return 0;
	port = f->dir == DIR_IN ? f->dport : f->sport;
	g = bpf_map_lookup_elem(&udp_port_gen, &port);
	return g ? *g : 0;
}

static __always_inline void emit(struct flow *f, __u32 pid, __u32 tid, const char *comm,
				 __u32 flags)
{
	__u64 gen = port_gen(f);
	/* a new generation of the port reports the task again: equal values need the same
	 * task and generation (a collision of two differing pairs only withholds an event
	 * whose stale predecessor carries another generation, which user space refuses) */
	__u64 who = (((__u64)pid << 32) | tid) ^ gen;
	__u64 *old = bpf_map_lookup_elem(&seen, f);
	if (old && *old == who && !(flags & F_SYN))
		return;   /* (a SYN is always told: its 4-tuple's old records are dropped) */
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(1);
		return;   /* not marked seen: the next packet of the flow tries again */
	}
	bpf_map_update_elem(&seen, f, &who, BPF_ANY);
	e->ts = bpf_ktime_get_ns();
	e->pid = pid;
	e->tid = tid;
	if (comm)
		__builtin_memcpy(e->comm, comm, 16);
	else   /* the running task's: read only when an event is due, not per packet */
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->f = *f;
	e->flags = flags;
	e->gen = gen;
	/* Wake the consumer once, when this record takes the waiting data past WAKE_BYTES. A
	 * wake-up for every record past it (until the consumer caught up) cost ~4 µs each on
	 * our VMs (an irq_work interrupt: a VM exit) and was most of the programs' time. */
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	int cross = avail >= WAKE_BYTES && avail - RECORD_BYTES < WAKE_BYTES;
	bpf_ringbuf_submit(e, cross ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	count(0);
}

static __always_inline __u32 task_netns(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	return BPF_CORE_READ(t, nsproxy, net_ns, ns.inum);
}

/* The running task, for a flow of namespace `netns` (the device's or the socket's: a task
 * may run code for another namespace's packets, so its own namespace is only the
 * fallback). */
static __always_inline void emit_current(struct flow *f, __u32 netns, __u32 flags)
{
	__u64 pt = bpf_get_current_pid_tgid();
	f->netns = netns ? netns : task_netns();
	emit(f, pt >> 32, (__u32)pt, 0, flags);
}

/* IP + transport header of an skb into *f (addresses as on the wire: src, dst): 0, 1 for
 * a TCP SYN without ACK, -1 when the packet carries no flow we name. */
static __always_inline int parse_skb(const struct sk_buff *skb, struct flow *f)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u8 vihl;
	__u32 l4;
	__u8 proto;

	if (bpf_probe_read_kernel(&vihl, 1, head + nh))
		return -1;
	if ((vihl >> 4) == 4) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return -1;
		if (ip.frag_off & bpf_htons(0x1fff))
			return -1;  /* not the first fragment: no ports here */
		f->family = 4;
		__builtin_memset(f->saddr, 0, 16);
		__builtin_memset(f->daddr, 0, 16);
		__builtin_memcpy(f->saddr, &ip.saddr, 4);
		__builtin_memcpy(f->daddr, &ip.daddr, 4);
		proto = ip.protocol;
		l4 = nh + (ip.ihl & 0xf) * 4;
	} else if ((vihl >> 4) == 6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return -1;
		f->family = 6;
		__builtin_memcpy(f->saddr, &ip6.saddr, 16);
		__builtin_memcpy(f->daddr, &ip6.daddr, 16);
		proto = ip6.nexthdr;  /* extension headers: not followed */
		l4 = nh + sizeof(ip6);
	} else {
		return -1;
	}
	f->proto = proto;
	f->pad = 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__be16 ports[2];
		if (bpf_probe_read_kernel(ports, sizeof(ports), head + l4))
			return -1;
		f->sport = bpf_ntohs(ports[0]);
		f->dport = bpf_ntohs(ports[1]);
		if (proto == IPPROTO_TCP) {
			__u8 tcpflags;
			if (!bpf_probe_read_kernel(&tcpflags, 1, head + l4 + 13) &&
			    (tcpflags & 0x12) == 0x02)
				return 1;   /* SYN without ACK */
		}
		return 0;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__u8 h[6];
		if (bpf_probe_read_kernel(h, sizeof(h), head + l4))
			return -1;
		/* echo request/reply only: the identifier names the pinging socket */
		if (!(h[0] == 8 || h[0] == 0 || h[0] == 128 || h[0] == 129))
			return -1;
		f->sport = f->dport = ((__u16)h[4] << 8) | h[5];
		return 0;
	}
	return -1;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_net_dev_queue, struct sk_buff *skb)
{
	struct flow f;
	if (!in_softirq()) {
		int syn = parse_skb(skb, &f);
		if (syn < 0)
			return 0;
		f.dir = DIR_OUT;
		emit_current(&f, BPF_CORE_READ(skb, dev, nd_net.net, ns.inum), syn ? F_SYN : 0);
		return 0;
	}
	/* sent by the stack in softirq (loopback SYN-ACK, ACK, RST): never the running task,
	 * only the socket's last owner, marked inferred (nothing when no task used it yet) */
	struct sock *s = skb->sk;   /* a BTF pointer: what bpf_sk_storage_get takes */
	struct owner *o = s ? bpf_sk_storage_get(&sock_owner, s, 0, 0) : 0;
	if (!o) {
		count(2);
		return 0;
	}
	struct owner copy = *o;
	if (parse_skb(skb, &f) < 0)
		return 0;
	f.dir = DIR_OUT;
	f.netns = BPF_CORE_READ(s, __sk_common.skc_net.net, ns.inum);
	emit(&f, copy.pid, copy.tid, copy.comm, F_INFERRED);
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(on_skb_copy, const struct sk_buff *skb, int len)
{
	struct flow f;
	if (in_softirq())
		return 0;
	/* TCP readers are seen by sock_recv_length, from the socket (cheaper than parsing
	 * every copied chunk's headers); this hook is for ping and raw sockets */
	struct sock *s = BPF_CORE_READ(skb, sk);
	__u32 netns = 0;
	if (s) {   /* UDP's queued skbs carry no socket: those readers are the task itself */
		if (BPF_CORE_READ(s, sk_type) == SOCK_STREAM)
			return 0;
		/* inet sockets only: a packet socket (a sniffer reading with recvfrom, as scapy
		 * does) gets copies of other programs' packets and owns none of them */
		__u16 family = BPF_CORE_READ(s, __sk_common.skc_family);
		if (family != 2 && family != 10)
			return 0;
		netns = BPF_CORE_READ(s, __sk_common.skc_net.net, ns.inum);
	}
	if (parse_skb(skb, &f) < 0)
		return 0;
	/* echo replies only: a TCP or UDP reader is seen by sock_recv_length, from its own
	 * socket and namespace. Here the skb may carry no socket (UDP's queued datagrams), and
	 * a task reading, in our namespace, a socket made in another one (passed over
	 * SCM_RIGHTS) had its reads filed under our namespace's 4-tuples (review, eighteenth
	 * session: another user's flow named for the reader) */
	if (f.proto != IPPROTO_ICMP && f.proto != IPPROTO_ICMPV6)
		return 0;
	f.dir = DIR_IN;
	emit_current(&f, netns, 0);
	return 0;
}

static __always_inline void sock_event(struct sock *sk, __u8 dir)
{
	/* every socket's send and receive passes here (unix sockets too): inet only, and
	 * the owner map written only when the task changes */
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != 2 && family != 10)
		return;
	struct owner o;
	__u64 pt = bpf_get_current_pid_tgid();
	o.pid = pt >> 32;
	o.tid = (__u32)pt;
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	struct owner *old = bpf_sk_storage_get(&sock_owner, sk, 0,
					       BPF_SK_STORAGE_GET_F_CREATE);
	if (old && (old->tid != o.tid || old->pid != o.pid))
		*old = o;   /* written only when the task changes */

	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return;   /* ping and raw sockets are seen per packet */
	if (proto == IPPROTO_TCP && dir == DIR_SOCK_OUT)
		return;   /* TCP senders: net_dev_queue sees each packet in their context */
	struct flow f = {};
	f.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	f.proto = proto;
	f.dir = dir;
	f.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	f.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == 2) {
		__be32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		f.family = 4;
		__builtin_memcpy(f.saddr, &s, 4);
		__builtin_memcpy(f.daddr, &d, 4);
	} else if (family == 10) {
		f.family = 6;
		BPF_CORE_READ_INTO(&f.saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&f.daddr, sk, __sk_common.skc_v6_daddr);
	} else {
		return;
	}
	__u32 flags = 0;
	if (proto == IPPROTO_UDP &&
	    (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_userlocks) & SOCK_BINDPORT_LOCK))
		flags = F_PORT_HELD;
	if (family == 10 && !BPF_CORE_READ_BITFIELD_PROBED(sk, __sk_common.skc_ipv6only))
		flags |= F_DUAL;
	emit(&f, o.pid, o.tid, o.comm, flags);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_sock_send, struct sock *sk, int ret, int flags)
{
	if (ret > 0 && !in_softirq())
		sock_event(sk, DIR_SOCK_OUT);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_sock_recv, struct sock *sk, int ret, int flags)
{
	if (ret > 0 && !in_softirq())
		sock_event(sk, DIR_SOCK_IN);
	return 0;
}

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

static __always_inline void bump_port(struct bpf_sock *ctx)
{
	struct sock *sk;
	__u64 *g;
	__u32 port;
	if (ctx->protocol != IPPROTO_UDP)
		return;
	port = ctx->src_port;   /* host order */
	g = bpf_map_lookup_elem(&udp_port_gen, &port);
	if (!g)
		return;
	/* the context is the kernel's struct sock: its reuse options, read only */
	sk = bpf_rdonly_cast(ctx, bpf_core_type_id_kernel(struct sock));
	if (BPF_CORE_READ_BITFIELD(&sk->__sk_common, skc_reuse) ||
	    BPF_CORE_READ_BITFIELD(&sk->__sk_common, skc_reuseport))
		__sync_fetch_and_or(g, SHARED);
	__sync_fetch_and_add(g, 1);
}

/* A UDP socket leaving its port by release, or narrowing its address by connect (another
 * socket may then join the port at another address): a new generation as well. A socket
 * whose port was chosen by the kernel can also leave it by connect(AF_UNSPEC), which no
 * hook sees: user space names a port's receivers only from sockets bound by number
 * (F_PORT_HELD). The release hook runs when no file refers to the socket any more. */
static __always_inline void new_generation(__u32 port)
{
	__u64 *g;
	if (!port)
		return;
	g = bpf_map_lookup_elem(&udp_port_gen, &port);
	if (g)
		__sync_fetch_and_add(g, 1);
}

SEC("cgroup/sock_release")
int udp_released(struct bpf_sock *ctx)
{
	struct sock *sk;
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	/* this hook may not read src_port from its context: the kernel's struct sock */
	sk = bpf_rdonly_cast(ctx, bpf_core_type_id_kernel(struct sock));
	new_generation(sk->__sk_common.skc_num);
	return 1;
}

static __always_inline void connecting(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	/* unbound (port 0): an automatic bind follows, itself no rival of a held port */
	if (sk && ctx->protocol == IPPROTO_UDP)
		new_generation(sk->src_port);
}

SEC("cgroup/connect4")
int udp_connect4(struct bpf_sock_addr *ctx)
{
	connecting(ctx);
	return 1;
}

SEC("cgroup/connect6")
int udp_connect6(struct bpf_sock_addr *ctx)
{
	connecting(ctx);
	return 1;
}

SEC("cgroup/post_bind4")
int udp_bound4(struct bpf_sock *sk)
{
	bump_port(sk);
	return 1;
}

SEC("cgroup/post_bind6")
int udp_bound6(struct bpf_sock *sk)
{
	bump_port(sk);
	return 1;
}
