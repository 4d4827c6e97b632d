// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
//
// sipedge's kernel fast path for TURN channels (`relay.kernel_offload`): a TC ingress
// program that relays ChannelData <-> UDP for channels user space has installed, so an
// established call's media never leaves the kernel. User space keeps the control plane:
// it installs a channel when the core says the kernel may relay it (a live binding and
// permission, until the first of them ends), removes it when the allocation goes, sets
// the bandwidth meters, and reads the counters back.
//
// What is relayed here, and nothing else: IPv4 UDP without options or fragments, on an
// Ethernet or loopback device, matching an installed channel whose deadline has not
// passed, within its allocation's and its user's byte budgets. Everything else is
// returned to the stack untouched (TC_ACT_UNSPEC: the next program or the socket, where
// the user-space relay decides as it always did); a packet over a budget is dropped and
// counted, as user space would.
//
// The way out is the one user space's own datagram would take (the interface of the
// route, the neighbour subsystem for the Ethernet addresses): the edge keeps IP
// forwarding off, and nothing here routes between its interfaces that a relayed socket
// would not.
//
// Checksums stay right whatever the skb's checksum state: the payload is moved, not the
// headers (so a CHECKSUM_PARTIAL skb's csum_start still points at the UDP header), and the
// UDP checksum is updated incrementally with the helpers that know the state.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define ETH_LEN 14
#define IP_OFF ETH_LEN
#define IP_LEN 20
#define UDP_OFF (IP_OFF + IP_LEN)
#define PAYLOAD_OFF (UDP_OFF + 8)
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)
#define IP_TOT_LEN_OFF (IP_OFF + 2)
#define UDP_SPORT_OFF (UDP_OFF + 0)
#define UDP_DPORT_OFF (UDP_OFF + 2)
#define UDP_LEN_OFF (UDP_OFF + 4)
#define UDP_CSUM_OFF (UDP_OFF + 6)
#define CHANNEL_HEADER 4
// The largest datagram relayed here; larger ones go to user space.
#define MAX_PAYLOAD 1472
// The payload is moved in chunks of this size through the stack.
#define CHUNK 256
#define CHUNKS ((MAX_PAYLOAD + CHUNK - 1) / CHUNK)
#define LOOPBACK_IFINDEX 1
#define NOT_MINE TC_ACT_UNSPEC

// A client's ChannelData: its 5-tuple and channel number (network order, as on the wire).
struct client_key {
	__be32 client_ip;
	__be32 server_ip;
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

// A peer's datagram to a relayed address.
struct peer_key {
	__be32 peer_ip;
	__be32 relay_ip;
	__be16 peer_port;
	__be16 relay_port;
};

// Where a packet goes and what it costs: the new source and destination, the channel
// header to put in front (toward the client), until when (CLOCK_MONOTONIC ns), the meters
// it is charged to (0: none), the counters user space reads back, and the way out: the
// interface the route to the destination leaves by (user space reads the routing table:
// the kernel's FIB lookup helper insists on IP forwarding, which an edge keeps off) and its
// MTU.
struct hop {
	__be32 src_ip;
	__be32 dst_ip;
	__be16 src_port;
	__be16 dst_port;
	__be16 channel;
	__u16 pad;
	__u64 until_ns;
	__u64 allocation_meter;
	__u64 user_meter;
	__u64 packets;
	__u64 bytes;
	__u32 ifindex;
	__u16 mtu;
	// The interface this direction's packets must come in by: the one the route back to
	// their sender leaves by (strict reverse path). A packet from anywhere else claims a
	// source it does not have (a peer's address spoofed from outside to inject into a
	// call); it is left to the stack, whose rp_filter and the relay decide as for any.
	__u16 from_ifindex;
};

// A byte-rate GCRA, as user space's (`core::turn::bandwidth::Meter`): `tat_ns` is when the
// next byte is due; `bytes_per_sec` 0 drops everything, U64_MAX is unlimited.
struct meter {
	__u64 tat_ns;
	__u64 bytes_per_sec;
	__u64 burst_ns;
};

// Sizes are set by user space before loading (`relay.max_allocations` and the caps).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct client_key);
	__type(value, struct hop);
} to_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct hop);
} to_client SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct meter);
} meters SEC(".maps");

// Drops, by reason: 0 over a budget toward the peer, 1 toward the client.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct headers {
	__u8 eth[ETH_LEN];
	struct iphdr ip;
	struct udphdr udp;
	__be16 channel;
	__be16 channel_len;
} __attribute__((packed));

static __always_inline int charge(__u64 key, __u64 bytes, __u64 now)
{
	if (!key)
		return 1;
	struct meter *m = bpf_map_lookup_elem(&meters, &key);
	if (!m)
		return 0; // installed with the hop: a missing meter is a bug, fail closed
	__u64 rate = m->bytes_per_sec;
	if (rate == ~0ULL)
		return 1;
	if (rate == 0)
		return 0;
	__u64 cost = bytes * 1000000000ULL / rate;
	__u64 limit = now + m->burst_ns;
	for (int i = 0; i < 8; i++) {
		__u64 tat = m->tat_ns;
		__u64 next = (tat > now ? tat : now) + cost;
		if (next > limit)
			return 0;
		if (__sync_val_compare_and_swap(&m->tat_ns, tat, next) == tat)
			return 1;
	}
	return 0;
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);
	if (n)
		*n += 1;
}

// Moves `len` payload bytes from `from` to `to` (offsets in the packet), in chunks, the
// chunk order chosen so that overlapping ranges copy right.
static __always_inline int move_payload(struct __sk_buff *skb, __u32 from, __u32 to, __u32 len)
{
	// Zeroed: a loader with CAP_BPF alone (no CAP_PERFMON) may not pass unwritten stack
	// to a helper, and the verifier cannot tell the load wrote all of a variable length.
	__u8 buf[CHUNK] = {};
	if (to < from) {
		for (int i = 0; i < CHUNKS; i++) {
			__u32 done = (__u32)i * CHUNK;
			if (done >= len)
				break;
			__u32 n = len - done;
			if (n > CHUNK)
				n = CHUNK;
			n &= 0x1ff;
			if (n == 0 || n > CHUNK)
				return -1;
			if (bpf_skb_load_bytes(skb, from + done, buf, n) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, to + done, buf, n, 0) < 0)
				return -1;
		}
	} else {
		for (int i = 0; i < CHUNKS; i++) {
			__u32 done = (__u32)i * CHUNK;
			if (done >= len)
				break;
			__u32 left = len - done;
			__u32 n = left > CHUNK ? CHUNK : left;
			n &= 0x1ff;
			if (n == 0 || n > CHUNK)
				return -1;
			__u32 at = left - n;
			if (bpf_skb_load_bytes(skb, from + at, buf, n) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, to + at, buf, n, 0) < 0)
				return -1;
		}
	}
	return 0;
}

// Rewrites addresses, ports and lengths, with both checksums. `len_delta` is what the UDP
// and IP lengths change by; `removed`/`added` the channel header leaving or entering the
// UDP payload (for the checksum; the bytes themselves are written by the caller).
static __always_inline int rewrite(struct __sk_buff *skb, struct headers *h, struct hop *hop,
				   int len_delta, __be32 removed, __be32 added)
{
	const __u64 l4 = BPF_F_MARK_MANGLED_0;
	__be16 old_tot = h->ip.tot_len;
	__be16 new_tot = bpf_htons(bpf_ntohs(old_tot) + len_delta);
	__be16 old_ulen = h->udp.len;
	__be16 new_ulen = bpf_htons(bpf_ntohs(old_ulen) + len_delta);

	// Addresses: in the IP header and the UDP pseudo-header.
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, h->ip.saddr, hop->src_ip, 4) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, h->ip.daddr, hop->dst_ip, 4) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_tot, new_tot, 2) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, h->ip.saddr, hop->src_ip, l4 | BPF_F_PSEUDO_HDR | 4) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, h->ip.daddr, hop->dst_ip, l4 | BPF_F_PSEUDO_HDR | 4) < 0)
		return -1;
	// The UDP length counts twice: in the pseudo-header and in the header itself.
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_ulen, new_ulen, l4 | BPF_F_PSEUDO_HDR | 2) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_ulen, new_ulen, l4 | 2) < 0)
		return -1;
	// Ports and the channel header: covered by the checksum, not by the pseudo-header (a
	// CHECKSUM_PARTIAL skb's checksum leaves them to the device: the helper knows).
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, h->udp.source, hop->src_port, l4 | 2) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, h->udp.dest, hop->dst_port, l4 | 2) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, removed, added, l4 | 4) < 0)
		return -1;

	if (bpf_skb_store_bytes(skb, IP_SRC_OFF, &hop->src_ip, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_DST_OFF, &hop->dst_ip, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_TOT_LEN_OFF, &new_tot, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, UDP_SPORT_OFF, &hop->src_port, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, UDP_DPORT_OFF, &hop->dst_port, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, UDP_LEN_OFF, &new_ulen, 2, 0) < 0)
		return -1;
	return 0;
}

// Whether the rewritten packet can leave as user space would send it: by the interface
// of its route, within its MTU; or up the stack, when the loopback device carried it to a
// loopback destination. Decided before anything is rewritten: 0 redirect, 1 deliver, -1
// leave the packet to user space.
static __always_inline int way_out(struct __sk_buff *skb, struct hop *hop, __u32 ip_len)
{
	if (hop->ifindex == 0 || ip_len > hop->mtu)
		return -1;
	if (hop->ifindex == LOOPBACK_IFINDEX)
		return skb->ingress_ifindex == LOOPBACK_IFINDEX ? 1 : -1;
	return 0;
}

// Sends the rewritten packet: the neighbour subsystem fills in the Ethernet addresses
// (and resolves them if need be, as for any packet the host sends).
static __always_inline int send(struct __sk_buff *skb, struct hop *hop, int how)
{
	if (how == 1)
		return TC_ACT_OK;
	return bpf_redirect_neigh(hop->ifindex, NULL, 0, 0);
}

SEC("classifier")
int turn_relay(struct __sk_buff *skb)
{
	struct headers h;

	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->gso_segs > 1)
		return NOT_MINE;
	if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) < 0)
		return NOT_MINE;
	if (h.ip.ihl != 5 || h.ip.version != 4 || h.ip.protocol != IPPROTO_UDP ||
	    (h.ip.frag_off & bpf_htons(0x3fff)) != 0)
		return NOT_MINE;
	__u32 ip_len = bpf_ntohs(h.ip.tot_len);
	__u32 udp_len = bpf_ntohs(h.udp.len);
	// (An Ethernet frame may be longer than its datagram: the minimum frame's padding.)
	if (udp_len < 8 || ip_len != IP_LEN + udp_len || skb->len < ETH_LEN + ip_len)
		return NOT_MINE;
	__u32 payload = udp_len - 8;
	if (payload > MAX_PAYLOAD)
		return NOT_MINE;
	__u64 now = bpf_ktime_get_ns();
	__u8 first = ((__u8 *)&h.channel)[0];

	// A client's ChannelData: to its peer, without the header. Channels 0x4000-0x7FFF, as
	// the core accepts them (RFC 5766's range; RFC 8656 narrowed it to 0x4FFF, and clients
	// such as coturn's still pick numbers above it).
	if ((first & 0xc0) == 0x40 && payload >= CHANNEL_HEADER) {
		struct client_key key = {
			.client_ip = h.ip.saddr,
			.server_ip = h.ip.daddr,
			.client_port = h.udp.source,
			.server_port = h.udp.dest,
			.channel = h.channel,
		};
		struct hop *hop = bpf_map_lookup_elem(&to_peer, &key);
		if (hop && hop->from_ifindex == skb->ingress_ifindex) {
			__u32 data = bpf_ntohs(h.channel_len);
			if (data > payload - CHANNEL_HEADER || hop->until_ns <= now)
				return NOT_MINE;
			// Over UDP the data may be padded to 4 (RFC 8656 §12.5): the padding goes
			// with the header, and must be zero (as it SHOULD), or it would still be in
			// the checksum; anything else goes to user space.
			__u32 pad = payload - CHANNEL_HEADER - data;
			if (pad > 3)
				return NOT_MINE;
			if (pad > 0) {
				__u32 tail = 0;
				__u32 n = pad & 3;
				if (n == 0 ||
				    bpf_skb_load_bytes(skb, PAYLOAD_OFF + CHANNEL_HEADER + data, &tail, n) < 0 ||
				    tail != 0)
					return NOT_MINE;
			}
			int how = way_out(skb, hop, IP_LEN + 8 + data);
			if (how < 0)
				return NOT_MINE;
			if (!charge(hop->allocation_meter, data, now) || !charge(hop->user_meter, data, now)) {
				count_drop(0);
				return TC_ACT_SHOT;
			}
			__be32 header;
			__builtin_memcpy(&header, &h.channel, 4);
			// Padding goes too: the lengths become the data's.
			int delta = (int)data - (int)payload;
			if (rewrite(skb, &h, hop, delta, header, 0) < 0)
				return TC_ACT_SHOT;
			if (move_payload(skb, PAYLOAD_OFF + CHANNEL_HEADER, PAYLOAD_OFF, data) < 0 ||
			    bpf_skb_change_tail(skb, PAYLOAD_OFF + data, 0) < 0)
				return TC_ACT_SHOT;
			__sync_fetch_and_add(&hop->packets, 1);
			__sync_fetch_and_add(&hop->bytes, data);
			return send(skb, hop, how);
		}
	}

	// A peer's datagram to a relayed address with a channel: to the client, behind the
	// channel header.
	struct peer_key pkey = {
		.peer_ip = h.ip.saddr,
		.relay_ip = h.ip.daddr,
		.peer_port = h.udp.source,
		.relay_port = h.udp.dest,
	};
	struct hop *hop = bpf_map_lookup_elem(&to_client, &pkey);
	if (!hop || hop->until_ns <= now || payload + CHANNEL_HEADER > MAX_PAYLOAD ||
	    hop->from_ifindex != skb->ingress_ifindex)
		return NOT_MINE;
	int how = way_out(skb, hop, ip_len + CHANNEL_HEADER);
	if (how < 0)
		return NOT_MINE;
	if (!charge(hop->allocation_meter, payload, now) || !charge(hop->user_meter, payload, now)) {
		count_drop(1);
		return TC_ACT_SHOT;
	}
	__be16 header[2] = {hop->channel, bpf_htons(payload)};
	__be32 added;
	__builtin_memcpy(&added, header, 4);
	if (bpf_skb_change_tail(skb, ETH_LEN + ip_len + CHANNEL_HEADER, 0) < 0 ||
	    move_payload(skb, PAYLOAD_OFF, PAYLOAD_OFF + CHANNEL_HEADER, payload) < 0 ||
	    bpf_skb_store_bytes(skb, PAYLOAD_OFF, header, CHANNEL_HEADER, 0) < 0 ||
	    rewrite(skb, &h, hop, CHANNEL_HEADER, 0, added) < 0)
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&hop->packets, 1);
	__sync_fetch_and_add(&hop->bytes, payload);
	return send(skb, hop, how);
}

// The kernel is told GPL (the helpers a relay needs are GPL-only); this file is offered
// under either licence, as its header says.
char LICENSE[] SEC("license") = "GPL";
