"""Connection tracking core (net/netfilter/nf_conntrack_core.c, nf_conntrack_proto.c).

A packet is classified in PRE_ROUTING / LOCAL_OUT (nf_conntrack_in): its tuple is
looked up in the namespace's table; a miss allocates a new, *unconfirmed* nf_conn
that lives only on the skb until the last hook (nf_confirm -> __nf_conntrack_confirm)
inserts it, so a connection whose first packet is dropped leaves nothing behind.
INVALID is `skb.ct is None` after conntrack ran (the kernel's skb->_nfct == 0).

Time is the capture's (skb.ctx.now, seconds).  Entries expire lazily when a lookup
meets them (____nf_conntrack_find -> nf_ct_gc_expired) and in a periodic sweep
(gc_worker), which keeps memory bounded over long replays.  The sweep deletes exactly the
entries whose timeout has passed, as a walk over the whole hash would, but finds them in an
expiry queue (one-second buckets by a lower bound of each entry's timeout), so its cost follows
the entries that expire, not the size of the table.

nf_conntrack_max is enforced as __nf_conntrack_alloc does: a new entry beyond the limit
first tries early_drop (evict the entries that are not ASSURED from the first of 8 hash
buckets, from the new tuple's on, that has any), else the packet is dropped.
"""
from __future__ import annotations

import random
from math import floor
from operator import attrgetter
from typing import Any, Callable

from pathtrace.net.netfilter.nf_conntrack_tuple import (
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, Tuple, fmt_tuple, nf_ct_invert_tuple,
    tuple_from_skb,
)

# include/uapi/linux/netfilter.h verdicts
NF_DROP = 0
NF_ACCEPT = 1
NF_STOLEN = 2
NF_QUEUE = 3
NF_REPEAT = 4

# hooks (enum nf_inet_hooks)
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4
HOOK_NAMES = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# enum ip_conntrack_info
IP_CT_ESTABLISHED = 0
IP_CT_RELATED = 1
IP_CT_NEW = 2
IP_CT_IS_REPLY = 3
IP_CT_ESTABLISHED_REPLY = 3
IP_CT_RELATED_REPLY = 4
IP_CT_UNTRACKED = 7
CTINFO_NAMES = {0: "ESTABLISHED", 1: "RELATED", 2: "NEW", 3: "ESTABLISHED_REPLY", 4: "RELATED_REPLY",
                7: "UNTRACKED"}

IP_CT_DIR_ORIGINAL = 0
IP_CT_DIR_REPLY = 1

# enum ip_conntrack_status (include/uapi/linux/netfilter/nf_conntrack_common.h)
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
IPS_SEQ_ADJUST = 1 << 6
IPS_SRC_NAT_DONE = 1 << 7
IPS_DST_NAT_DONE = 1 << 8
IPS_NAT_DONE_MASK = IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE
IPS_DYING = 1 << 9
IPS_FIXED_TIMEOUT = 1 << 10
IPS_TEMPLATE = 1 << 11
IPS_UNTRACKED = 1 << 12
IPS_NAT_CLASH = IPS_UNTRACKED      # the kernel reuses the bit for clash entries
IPS_HELPER = 1 << 13
IPS_OFFLOAD = 1 << 14
STATUS_NAMES = ((IPS_EXPECTED, "EXPECTED"), (IPS_SEEN_REPLY, "SEEN_REPLY"), (IPS_ASSURED, "ASSURED"),
                (IPS_CONFIRMED, "CONFIRMED"), (IPS_SRC_NAT, "SRC_NAT"), (IPS_DST_NAT, "DST_NAT"),
                (IPS_SRC_NAT_DONE, "SRC_NAT_DONE"), (IPS_DST_NAT_DONE, "DST_NAT_DONE"),
                (IPS_DYING, "DYING"), (IPS_FIXED_TIMEOUT, "FIXED_TIMEOUT"))

# net.netfilter.nf_conntrack_* defaults of a 6.x kernel (seconds)
SYSCTL_DEFAULTS: dict[str, int] = {
    "nf_conntrack_checksum": 1,
    "nf_conntrack_tcp_loose": 1,
    "nf_conntrack_tcp_be_liberal": 0,
    "nf_conntrack_tcp_ignore_invalid_rst": 0,
    "nf_conntrack_tcp_max_retrans": 3,
    "nf_conntrack_tcp_timeout_syn_sent": 120,
    "nf_conntrack_tcp_timeout_syn_recv": 60,
    "nf_conntrack_tcp_timeout_established": 432000,
    "nf_conntrack_tcp_timeout_fin_wait": 120,
    "nf_conntrack_tcp_timeout_close_wait": 60,
    "nf_conntrack_tcp_timeout_last_ack": 30,
    "nf_conntrack_tcp_timeout_time_wait": 120,
    "nf_conntrack_tcp_timeout_close": 10,
    "nf_conntrack_tcp_timeout_max_retrans": 300,
    "nf_conntrack_tcp_timeout_unacknowledged": 300,
    "nf_conntrack_udp_timeout": 30,
    "nf_conntrack_udp_timeout_stream": 120,
    "nf_conntrack_icmp_timeout": 30,
    "nf_conntrack_generic_timeout": 600,
    # __nf_conntrack_alloc's limit and the hash size: both 262144 on a 64-bit machine with more than
    # 4 GiB of memory (nf_conntrack_init_start: buckets = 262144, max = 1 x buckets); 65536 for
    # 1-4 GiB, RAM / 16384 / 8 below that
    "nf_conntrack_max": 262144,
    "nf_conntrack_buckets": 262144,
}

GC_INTERVAL = 5.0   # seconds of capture time between full sweeps
NF_CT_EVICTION_RANGE = 8   # buckets early_drop looks at
_UNQUEUED = float("-inf")  # the expiry-queue key of an entry not in a table: no timeout is below it


class NfConn:
    """struct nf_conn: both tuples, status bits, protocol state, absolute expiry time.

    A plain slotted class rather than a dataclass because `timeout` is a property: any code
    may assign it (the trackers, the replay cache's fast lanes in Python and C), and a timeout
    that moves below the entry's place in its table's expiry queue must move it up there.
    A hot path that wants to skip the property (about 90 ns a packet from C) may read and
    write the `_timeout` slot itself, provided that after writing a value below `_gc_key` it
    calls `ct.table.requeue(ct, value)`, as the setter does."""

    __slots__ = ("orig", "reply", "status", "mark", "_timeout", "proto", "masq_index", "table", "nat_trace",
                 "seq", "zone", "secmark", "labels", "_gc_key")

    def __init__(self, orig: Tuple, reply: Tuple, status: int = 0, mark: int = 0, timeout: float = 0.0,
                 proto: Any = None, masq_index: int = 0, table: Any = None, nat_trace: Any = None,
                 seq: int = 0, zone: int = 0, secmark: int = 0, labels: int = 0):
        self.orig = orig
        self.reply = reply
        self.status = status
        self.mark = mark
        self._timeout = timeout       # capture time at which the entry expires
        self.proto = proto            # TcpState / UdpState, per protocol
        self.masq_index = masq_index  # nf_conn_nat.masq_index (MASQUERADE's out ifindex)
        self.table = table            # nf_ct_net: the ConntrackTable that tracks it
        self.nat_trace = nat_trace    # last binding made by nf_nat_setup_info, for the path
        self.seq = seq                # creation order, for listings
        self.zone = zone
        self.secmark = secmark
        self.labels = labels
        self._gc_key = _UNQUEUED      # its key in the table's expiry queue (never above the timeout)

    def _set_timeout(self, value: float) -> None:
        self._timeout = value
        if value < self._gc_key:
            self.table.requeue(self, value)

    timeout = property(attrgetter("_timeout"), _set_timeout)

    def __repr__(self) -> str:
        return (f"NfConn(orig={self.orig!r}, reply={self.reply!r}, status={self.status:#x}, "
                f"timeout={self._timeout!r}, seq={self.seq})")

    def tuple(self, direction: int) -> Tuple:
        return self.reply if direction else self.orig

    @property
    def protonum(self) -> int:
        return self.orig.proto

    def status_names(self) -> list[str]:
        return [name for bit, name in STATUS_NAMES if self.status & bit]


# The kernel has no nf_conn for untracked packets (_nfct == IP_CT_UNTRACKED); matches
# and targets that want "an object" get this sentinel, which no table ever holds.
UNTRACKED = NfConn(Tuple(0, 0, 0, 0, 0), Tuple(0, 0, 0, 0, 0), status=IPS_UNTRACKED | IPS_CONFIRMED)


def nf_ct_get(skb) -> NfConn | None:
    """nf_ct_get: the packet's conntrack, None for invalid and untracked packets."""
    ct = skb.ct
    if ct is None or ct is UNTRACKED:
        return None
    return ct


def ctinfo2dir(ctinfo: int) -> int:
    return IP_CT_DIR_REPLY if ctinfo >= IP_CT_IS_REPLY else IP_CT_DIR_ORIGINAL


class ConntrackTable:
    """Per-namespace conntrack state: the tuple hash, NAT's by-source index, sysctls, RNG.

    `hash` maps each tuple to (conntrack, direction); `conns` holds every conntrack in the
    hash by creation number (so in creation order); `_wheel` is the gc's queue: one-second
    buckets of entries by their `_gc_key`, a lower bound of their timeout (an entry whose key is
    below the first bucket gc has not finished, `_wheel_pos`, waits in that one)."""

    def __init__(self, net: Any = None, seed: int = 0, **sysctl: int):
        self.net = net
        self.sysctl: dict[str, int] = dict(SYSCTL_DEFAULTS)
        for key, value in {**getattr(net, "nf_sysctl", {}), **sysctl}.items():   # the host file's, then these
            self.set_sysctl(key, value)
        self.hash: dict[Tuple, tuple[NfConn, int]] = {}
        self.bysource: dict[tuple[int, int, int], list[NfConn]] = {}
        self.conns: dict[int, NfConn] = {}
        self._unlisted: set[int] = set()      # seqs whose original tuple's hash entry says REPLY (orig == reply)
        self._wheel: dict[int, list[NfConn]] = {}
        self._wheel_pos: int | None = None   # buckets before it are done (gone)
        self._queued = 0                     # entries in the wheel's lists, superseded ones included
        self._buckets: dict[int, list[NfConn]] | None = None   # early_drop's hash chains, built when first needed
        self.early_drop_pending = False      # conntrack_gc_work.early_drop: an allocation failed
        self.gc_track: Any = None            # set while the megaflow lane's entries are untracked (_megalane.c)
        self.rng = random.Random(seed)   # get_random_u16 for NAT port search
        self.last_gc = 0.0
        self.now = 0.0               # capture time of the packet being tracked
        self.next_seq = 0
        self.stats: dict[str, int] = {"found": 0, "invalid": 0, "insert": 0, "insert_failed": 0,
                                      "drop": 0, "delete": 0, "expired": 0, "early_drop": 0}

    # ---- sysctls --------------------------------------------------------------------------
    def set_sysctl(self, name: str, value: int) -> None:
        """Apply net.netfilter.<name> (the prefix may be given or omitted); ValueError, with the
        limits, for a value the kernel's handler refuses with EINVAL."""
        key = name.rsplit(".", 1)[-1]
        if key not in self.sysctl:
            raise KeyError(name)
        value = int(value)
        # measured on 6.18 in a new namespace: timeouts are proc_dointvec_jiffies (HZ=250), the
        # switches proc_dou8vec_minmax 0..1, max_retrans a u8; nf_conntrack_max is 0..INT_MAX;
        # nf_conntrack_buckets (init_net only) refuses 0 and is rounded up to a page of heads (512)
        if "timeout" in key:
            low, high = -((2**31 - 1) // 250), (2**31 - 1) // 250
        elif key == "nf_conntrack_tcp_max_retrans":
            low, high = 0, 255
        elif key == "nf_conntrack_max":
            low, high = 0, 2**31 - 1
        elif key == "nf_conntrack_buckets":
            low, high = 1, (2**31 - 1) // 8
        else:
            low, high = 0, 1
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high} (kernel: EINVAL)")
        if key == "nf_conntrack_buckets":
            value = -(-value // 512) * 512
            self._buckets = None
        self.sysctl[key] = value

    # ---- lookup / insertion -----------------------------------------------------------------
    def find(self, t: Tuple, now: float) -> tuple[NfConn, int] | None:
        """__nf_conntrack_find_get: confirmed entry holding tuple t, expired ones are reaped."""
        hit = self.hash.get(t)
        if hit is None:
            return None
        ct = hit[0]
        if ct._timeout <= now or ct.status & IPS_DYING:
            self.delete(ct, expired=True)
            return None
        return hit

    def tuple_taken(self, t: Tuple, ignored: NfConn | None, now: float) -> bool:
        """nf_conntrack_tuple_taken: is t in use by a confirmed conntrack other than `ignored`?"""
        hit = self.find(t, now)
        return hit is not None and hit[0] is not ignored

    def insert(self, ct: NfConn) -> None:
        """__nf_conntrack_hash_insert: the caller has checked that neither tuple is in the table.
        (Runs once per new connection - a scan's every packet: locals, and _compact's test inline.)"""
        orig, reply = ct.orig, ct.reply
        h = self.hash
        h[orig] = (ct, IP_CT_DIR_ORIGINAL)
        h[reply] = (ct, IP_CT_DIR_REPLY)
        seq = ct.seq = self.next_seq
        self.next_seq = seq + 1
        self.stats["insert"] += 1
        conns = self.conns
        conns[seq] = ct
        if orig == reply:
            self._unlisted.add(seq)
        key = ct._gc_key = ct._timeout
        self._push(ct, key)
        if self._queued > 2 * len(conns) + 1024:
            self._compact()
        if self._buckets is not None:
            for t in (ct.orig, ct.reply):
                self._buckets.setdefault(self._bucket(t), []).append(ct)

    def delete(self, ct: NfConn, expired: bool = False) -> bool:
        """nf_ct_delete: unhash (and drop from NAT's by-source index)."""
        status = ct.status
        if not status & IPS_CONFIRMED:
            ct.status = status | IPS_DYING
            return False
        if self.gc_track is not None:       # an entry the megaflow lane made leaves the table: the cyclic
            self.gc_track((ct,))            # collector looks after it again (pathtrace/_megalane.c)
        h = self.hash
        orig = ct.orig
        for t in (orig, ct.reply):
            hit = h.get(t)
            if hit is not None and hit[0] is ct:
                del h[t]
        seq = ct.seq
        conns = self.conns
        if conns.get(seq) is ct:
            del conns[seq]
            if self._unlisted:
                self._unlisted.discard(seq)
            ct._gc_key = _UNQUEUED
            if self._buckets is not None:
                for t in (ct.orig, ct.reply):
                    chain = self._buckets.get(self._bucket(t))
                    if chain is not None and ct in chain:
                        chain.remove(ct)
                        if not chain:
                            del self._buckets[self._bucket(t)]
        if status & IPS_SRC_NAT_DONE:
            key = (orig.proto, orig.src, orig.sport)
            bysource = self.bysource
            lst = bysource.get(key)
            if lst is not None:
                if len(lst) == 1:
                    if lst[0] is ct:
                        del bysource[key]
                elif ct in lst:
                    lst.remove(ct)
        ct.status = ct.status | IPS_DYING
        self.stats["expired" if expired else "delete"] += 1
        return True

    # ---- expiry ------------------------------------------------------------------------------
    def _push(self, ct: NfConn, key: float) -> None:
        b = floor(key)
        pos = self._wheel_pos
        if pos is not None and b < pos:
            b = pos
        lst = self._wheel.get(b)
        if lst is None:
            self._wheel[b] = [ct]
        else:
            lst.append(ct)
        self._queued += 1

    def _compact(self) -> None:
        """Superseded and deleted entries' copies outnumber the live entries: rebuild the wheel
        (amortised O(1) a push; never during a gc, which holds the wheel)."""
        if self._queued > 2 * len(self.conns) + 1024:
            self._wheel, self._queued = {}, 0
            for ct in self.conns.values():
                self._push(ct, ct._gc_key)

    def requeue(self, ct: NfConn, timeout: float) -> None:
        """ct.timeout moved below its key: queue it again under the new, lower one."""
        ct._gc_key = timeout
        self._push(ct, timeout)
        self._compact()

    def gc(self, now: float, force: bool = False) -> int:
        """gc_worker: every GC_INTERVAL seconds of capture time, delete every entry whose timeout
        has passed.  The buckets up to now's are emptied: an entry whose key has come is deleted
        if its timeout has too, else queued again under its timeout; a copy whose entry has since
        been queued under another key, or deleted, is dropped."""
        if not force and now - self.last_gc < GC_INTERVAL:
            return 0
        self.last_gc = now
        wheel, conns = self._wheel, self.conns
        last = floor(now)
        pos = self._wheel_pos
        if pos is None:
            pos = min(min(wheel, default=last), last)
        if last < pos:                       # time went back: only the bucket of the early keys
            due = [pos]
        elif last - pos <= len(wheel):
            due = range(pos, last + 1)
        else:                                # a long silence: visit the buckets there are
            due = sorted(b for b in wheel if b <= last)
        dead = 0
        delete = self.delete
        for b in due:
            lst = wheel.pop(b, None)
            if lst is None:
                continue
            self._queued -= len(lst)
            keep = []
            for ct in lst:
                if conns.get(ct.seq) is not ct:
                    continue                 # deleted
                key = ct._gc_key
                if key > now:
                    if b >= last and floor(key) <= b:
                        keep.append(ct)      # its own bucket, not due yet
                    continue                 # else a copy: the entry waits in a later bucket
                timeout = ct._timeout
                if timeout <= now:
                    delete(ct, True)
                    dead += 1
                else:
                    ct._gc_key = timeout
                    self._push(ct, timeout)
            if keep:
                wheel.setdefault(b, []).extend(keep)
                self._queued += len(keep)
        if last > pos:
            pos = last
        self._wheel_pos = pos
        if self.early_drop_pending:
            self._gc_early_drop()
        return dead

    # ---- nf_conntrack_max ---------------------------------------------------------------------
    def _bucket(self, t: Tuple) -> int:
        """The stand-in for hash_conntrack(): the kernel's siphash has a random seed, the model
        takes the tuple's own (deterministic) hash, scaled to the table's bucket count."""
        return ((hash(t) & 0xFFFFFFFF) * self.sysctl["nf_conntrack_buckets"]) >> 32

    def _chains(self) -> dict[int, list[NfConn]]:
        if self._buckets is None:
            buckets: dict[int, list[NfConn]] = {}
            for ct in self.conns.values():
                for t in (ct.orig, ct.reply):
                    buckets.setdefault(self._bucket(t), []).append(ct)
            self._buckets = buckets
        return self._buckets

    def early_drop(self, t: Tuple, now: float) -> list[NfConn]:
        """early_drop: from the new tuple's bucket on, at most NF_CT_EVICTION_RANGE buckets; in the
        first whose chain holds entries that are not ASSURED, all of them are deleted (expired
        entries met on the way are reaped and do not count).  Returns the evicted entries."""
        chains = self._chains()
        size = self.sysctl["nf_conntrack_buckets"]
        bucket = self._bucket(t)
        for i in range(NF_CT_EVICTION_RANGE):
            chain = chains.get((bucket + i) % size)
            if not chain:
                continue
            dropped = []
            for ct in reversed(chain[:]):          # hlist_nulls_add_head: the newest first
                if ct.status & IPS_DYING:
                    continue
                if ct._timeout <= now:
                    self.delete(ct, expired=True)
                    continue
                if ct.status & IPS_ASSURED:
                    continue
                self.delete(ct)
                dropped.append(ct)
            if dropped:
                self.stats["early_drop"] += len(dropped)
                return dropped
        return []

    def _gc_early_drop(self) -> None:
        """gc_worker after an allocation failed: while the table holds 95% of nf_conntrack_max,
        kill the entries gc_worker_can_early_drop allows (not ASSURED, or a TCP connection that is
        closing), in bucket order."""
        self.early_drop_pending = False
        limit = self.sysctl["nf_conntrack_max"] // 100 * 95
        if not limit or len(self.conns) < limit:
            return
        from pathtrace.net.netfilter.nf_conntrack_proto_tcp import tcp_can_early_drop
        chains = self._chains()
        for bucket in sorted(chains):
            for ct in list(chains.get(bucket, ())):
                if len(self.conns) < limit:
                    return
                if ct.status & IPS_DYING:
                    continue
                if not ct.status & IPS_ASSURED or (ct.orig.proto == IPPROTO_TCP and tcp_can_early_drop(ct)):
                    self.delete(ct)

    # ---- listing ------------------------------------------------------------------------------
    def entries(self, now: float | None = None) -> list[NfConn]:
        """Live conntracks (conntrack -L), oldest first."""
        unlisted = self._unlisted
        return [ct for seq, ct in self.conns.items()
                if (now is None or ct._timeout > now) and (not unlisted or seq not in unlisted)]

    def __len__(self) -> int:
        """Entries listed (the hash's original-direction entries)."""
        return len(self.conns) - len(self._unlisted)

    def refresh(self, ct: NfConn, now: float, extra: float) -> None:
        """nf_ct_refresh_acct: extend the expiry unless the timeout is fixed."""
        if not ct.status & IPS_FIXED_TIMEOUT:
            ct.timeout = now + extra

    def kill(self, ct: NfConn) -> bool:
        """nf_ct_kill."""
        return self.delete(ct)


# ---- the hook entry points ------------------------------------------------------------------
def _table(nf) -> ConntrackTable | None:
    return getattr(nf, "conntrack", None)


def ipv4_conntrack_in(nf, skb, hook: int = NF_INET_PRE_ROUTING) -> int:
    """PRE_ROUTING, priority -200."""
    return nf_conntrack_in(nf, skb, hook, "ipv4_conntrack_in")


def ipv4_conntrack_local(nf, skb, hook: int = NF_INET_LOCAL_OUT) -> int:
    """LOCAL_OUT, priority -200; fragments (IP_NODEFRAG sockets) are not tracked."""
    if skb.iph is not None and skb.iph.is_fragment():
        if skb.ctx.record:
            skb.ctx.step("ipv4_conntrack_local", result="fragment not tracked")
        return NF_ACCEPT
    return nf_conntrack_in(nf, skb, hook, "ipv4_conntrack_local")


def nf_conntrack_in(nf, skb, hook: int, entry: str = "ipv4_conntrack_in") -> int:
    """Classify the packet: ESTABLISHED/NEW/RELATED (+REPLY), or INVALID (skb.ct = None)."""
    table = _table(nf)
    ctx = skb.ctx
    if table is None:
        return NF_ACCEPT
    if skb.ct is not None or skb.ctinfo == IP_CT_UNTRACKED:
        # Previously seen (loopback) or untracked (raw table NOTRACK / CT --notrack).
        if ctx.record:
            ctx.step(entry, result="untracked" if skb.ct is UNTRACKED or skb.ctinfo == IP_CT_UNTRACKED
                     else "already tracked")
        return NF_ACCEPT
    now = table.now = ctx.now
    table.gc(now)
    if ctx.record:
        ctx.step(entry, hook=HOOK_NAMES[hook])
    iph = skb.iph
    if iph is None or iph.frag_off & 0x1FFF:
        return _invalid(table, skb, "fragment or no IPv4 header")
    proto = iph.protocol
    if proto == IPPROTO_ICMP:
        from pathtrace.net.netfilter.nf_conntrack_proto_icmp import nf_conntrack_icmpv4_error
        ret = nf_conntrack_icmpv4_error(table, skb, hook)
        if ret <= 0:
            table.stats["invalid"] += 1
            return -ret
        if skb.ct is not None:
            return NF_ACCEPT
    while True:
        t = tuple_from_skb(skb)
        if t is None:
            return _invalid(table, skb, "truncated transport header")
        hit = table.find(t, now)
        if hit is None:
            reply = nf_ct_invert_tuple(t)
            if reply is None:
                return _invalid(table, skb, "cannot invert tuple (no reply type)")
            limit = table.sysctl["nf_conntrack_max"]
            if limit and len(table.conns) >= limit and not _conntrack_alloc_room(table, skb, t, limit):
                return NF_DROP
            ct = NfConn(orig=t, reply=reply, table=table)
            ctinfo = IP_CT_NEW
            direction = IP_CT_DIR_ORIGINAL
        else:
            ct, direction = hit
            table.stats["found"] += 1
            if direction == IP_CT_DIR_REPLY:
                ctinfo = IP_CT_ESTABLISHED_REPLY
            elif ct.status & IPS_SEEN_REPLY:
                ctinfo = IP_CT_ESTABLISHED
            elif ct.status & IPS_EXPECTED:
                ctinfo = IP_CT_RELATED
            else:
                ctinfo = IP_CT_NEW
        skb.ct, skb.ctinfo = ct, ctinfo
        learn = ctx.learn
        if learn is not None:
            learn.conntrack(ct, direction, ctinfo, hit is not None)
        ret = nf_conntrack_handle_packet(table, ct, skb, ctinfo, hook)
        if ret <= 0:
            skb.ct, skb.ctinfo = None, IP_CT_ESTABLISHED
            if ret == -NF_REPEAT:
                continue
            table.stats["invalid"] += 1
            ctx.uncacheable("conntrack: invalid")
            if ret == NF_DROP:
                table.stats["drop"] += 1
            if ctx.record:
                ctx.step("nf_conntrack_in", state="INVALID", tuple=fmt_tuple(t))
            return -ret
        break
    if ctinfo == IP_CT_ESTABLISHED_REPLY:
        ct.status |= IPS_SEEN_REPLY
    if ctx.record:
        ctx.step("nf_conntrack_in", state=CTINFO_NAMES[ctinfo], tuple=fmt_tuple(t),
                 dir="reply" if direction else "original", status=",".join(ct.status_names()) or "-")
    return NF_ACCEPT


def _conntrack_alloc_room(table: ConntrackTable, skb, t: Tuple, limit: int) -> bool:
    """__nf_conntrack_alloc with the table at nf_conntrack_max: room made by early_drop, or the
    allocation fails (-ENOMEM) and nf_conntrack_in drops the packet ("Too stressed to deal")."""
    ctx = skb.ctx
    ctx.uncacheable("conntrack: table full")
    count = len(table.conns) + 1
    evicted = table.early_drop(t, ctx.now)
    if evicted:
        if ctx.record:
            ctx.step("early_drop", count=count, max=limit,
                     evicted="; ".join(fmt_tuple(ct.orig) for ct in evicted))
        return True
    table.early_drop_pending = True
    table.stats["drop"] += 1
    if ctx.record:
        ctx.step("__nf_conntrack_alloc", count=count, max=limit, tuple=fmt_tuple(t),
                 result="nf_conntrack: table full, dropping packet")
    return False


def _invalid(table: ConntrackTable, skb, why: str) -> int:
    skb.ctx.uncacheable("conntrack: invalid")
    table.stats["invalid"] += 1
    skb.ct, skb.ctinfo = None, IP_CT_ESTABLISHED
    if skb.ctx.record:
        skb.ctx.step("nf_conntrack_in", state="INVALID", reason=why)
    return NF_ACCEPT


def nf_conntrack_handle_packet(table: ConntrackTable, ct: NfConn, skb, ctinfo: int, hook: int) -> int:
    """Per-protocol tracker: verdict, or <= 0 for invalid (-verdict tells what to do)."""
    proto = ct.orig.proto
    if proto == IPPROTO_TCP:
        from pathtrace.net.netfilter.nf_conntrack_proto_tcp import nf_conntrack_tcp_packet
        return nf_conntrack_tcp_packet(table, ct, skb, ctinfo, hook)
    if proto in (IPPROTO_UDP, IPPROTO_UDPLITE):
        from pathtrace.net.netfilter.nf_conntrack_proto_udp import nf_conntrack_udp_packet
        return nf_conntrack_udp_packet(table, ct, skb, ctinfo, hook)
    if proto == IPPROTO_ICMP:
        from pathtrace.net.netfilter.nf_conntrack_proto_icmp import nf_conntrack_icmp_packet
        return nf_conntrack_icmp_packet(table, ct, skb, ctinfo, hook)
    # generic_packet (inlined in nf_conntrack_in): SCTP/GRE trackers are not modelled.
    table.refresh(ct, skb.ctx.now, table.sysctl["nf_conntrack_generic_timeout"])
    return NF_ACCEPT


def ipv4_confirm(nf, skb, hook: int = NF_INET_POST_ROUTING) -> int:
    """nf_confirm (POST_ROUTING / LOCAL_IN, priority INT_MAX): insert a new conntrack."""
    ct = nf_ct_get(skb)
    if ct is None or ct.status & IPS_CONFIRMED:
        return NF_ACCEPT
    table = _table(nf)
    if table is None:
        return NF_ACCEPT
    if skb.ctx.record:
        skb.ctx.step("nf_confirm", hook=HOOK_NAMES[hook])
    return __nf_conntrack_confirm(table, skb)


nf_confirm = ipv4_confirm


def __nf_conntrack_confirm(table: ConntrackTable, skb) -> int:
    """Insert the unconfirmed conntrack; a clash with a confirmed entry is resolved or dropped."""
    ct, ctinfo = skb.ct, skb.ctinfo
    ctx = skb.ctx
    if ctinfo2dir(ctinfo) != IP_CT_DIR_ORIGINAL:
        return NF_ACCEPT
    if ct.status & IPS_DYING:
        table.stats["insert_failed"] += 1
        return NF_DROP
    now = ctx.now
    clash = table.find(ct.orig, now) or table.find(ct.reply, now)
    if clash is not None:
        return _resolve_clash(table, skb, clash[0])
    ct.status |= IPS_CONFIRMED
    table.insert(ct)
    if ct.status & IPS_SRC_NAT_DONE:
        key = (ct.orig.proto, ct.orig.src, ct.orig.sport)
        same = table.bysource.get(key)
        if same is None:
            table.bysource[key] = [ct]     # a list of one, not setdefault's over-allocated four
        else:
            same.append(ct)
    # NAT bindings are made before the confirm and never after it: the binding's record (two
    # tuples, for the path's nf_nat_setup_info step) is done with - a quarter of an entry's memory
    ct.nat_trace = None
    if ctx.record:
        ctx.step("__nf_conntrack_confirm", tuple=fmt_tuple(ct.orig), reply=fmt_tuple(ct.reply),
                 timeout=round(ct.timeout - now, 3))
    return NF_ACCEPT


def _resolve_clash(table: ConntrackTable, skb, winner: NfConn) -> int:
    """nf_ct_resolve_clash: UDP/ICMP-less clash of identical entries merges, anything else drops.

    Model limit: nf_ct_resolve_clash_harder (inserting a reply-only NAT_CLASH entry) is
    not modelled; with a sequential replay the only clashes are NAT-made ones.
    """
    loser = skb.ct
    same = (winner.orig == loser.orig and winner.reply == loser.reply) or \
           (winner.orig == loser.reply and winner.reply == loser.orig)
    if loser.orig.proto in (IPPROTO_UDP, IPPROTO_UDPLITE) and same:
        skb.ct = winner
        if skb.ctx.record:
            skb.ctx.step("__nf_conntrack_confirm", clash="merged with existing entry",
                         tuple=fmt_tuple(winner.orig))
        return NF_ACCEPT
    table.stats["insert_failed"] += 1
    table.stats["drop"] += 1
    skb.ctx.uncacheable("conntrack insert failed")      # the statistics above are this packet's own
    if skb.ctx.record:
        skb.ctx.step("__nf_conntrack_confirm", clash="insert failed", tuple=fmt_tuple(loser.orig),
                     reply=fmt_tuple(loser.reply))
    return NF_DROP


def nf_ct_attach(new_skb, old_skb) -> None:
    """nf_conntrack_attach: a REJECT reply (RST / ICMP) joins the conntrack of its trigger."""
    ct = nf_ct_get(old_skb)
    if ct is None:
        return
    ctinfo = IP_CT_RELATED_REPLY if ctinfo2dir(old_skb.ctinfo) == IP_CT_DIR_ORIGINAL else IP_CT_RELATED
    new_skb.ct, new_skb.ctinfo = ct, ctinfo


def nf_ct_set_untracked(skb) -> None:
    """What CT --notrack / NOTRACK do: mark the packet untracked."""
    skb.ct, skb.ctinfo = UNTRACKED, IP_CT_UNTRACKED


def ipv4_conntrack_defrag(nf, skb, hook: int) -> int:  # re-exported for the contract
    from pathtrace.net.netfilter.nf_defrag_ipv4 import ipv4_conntrack_defrag as defrag
    return defrag(nf, skb, hook)


HookFn = Callable[[Any, Any, int], int]
