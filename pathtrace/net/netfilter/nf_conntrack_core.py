"""Connection tracking core (net/netfilter/nf_conntrack_core.c, nf_conntrack_proto.c).

A packet is classified in PRE_ROUTING / LOCAL_OUT (nf_conntrack_in): its tuple is
looked up in the namespace's table; a miss allocates a new, *unconfirmed* nf_conn
that lives only on the skb until the last hook (nf_confirm -> __nf_conntrack_confirm)
inserts it, so a connection whose first packet is dropped leaves nothing behind.
INVALID is `skb.ct is None` after conntrack ran (the kernel's skb->_nfct == 0).

Time is the capture's (skb.ctx.now, seconds).  Entries expire lazily when a lookup
meets them (____nf_conntrack_find -> nf_ct_gc_expired) and in a periodic sweep
(gc_worker), which keeps memory bounded over long replays.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
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
    "nf_conntrack_max": 262144,
}

GC_INTERVAL = 5.0   # seconds of capture time between full sweeps


@dataclass(slots=True, eq=False)
class NfConn:
    """struct nf_conn: both tuples, status bits, protocol state, absolute expiry time."""

    orig: Tuple
    reply: Tuple
    status: int = 0
    mark: int = 0
    timeout: float = 0.0          # capture time at which the entry expires
    proto: Any = None             # TcpState / UdpState, per protocol
    masq_index: int = 0           # nf_conn_nat.masq_index (MASQUERADE's out ifindex)
    table: Any = None             # nf_ct_net: the ConntrackTable that tracks it
    nat_trace: Any = None         # last binding made by nf_nat_setup_info, for the path
    seq: int = 0                  # creation order, for listings
    zone: int = 0
    secmark: int = 0
    labels: int = 0

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
    """Per-namespace conntrack state: the tuple hash, NAT's by-source index, sysctls, RNG."""

    def __init__(self, net: Any = None, seed: int = 0, **sysctl: int):
        self.net = net
        self.sysctl: dict[str, int] = dict(SYSCTL_DEFAULTS)
        for key, value in {**getattr(net, "nf_sysctl", {}), **sysctl}.items():   # the host file's, then these
            self.set_sysctl(key, value)
        self.hash: dict[Tuple, tuple[NfConn, int]] = {}
        self.bysource: dict[tuple[int, int, int], list[NfConn]] = {}
        self.rng = random.Random(seed)   # get_random_u16 for NAT port search
        self.last_gc = 0.0
        self.now = 0.0               # capture time of the packet being tracked
        self.next_seq = 0
        self.stats: dict[str, int] = {"found": 0, "invalid": 0, "insert": 0, "insert_failed": 0,
                                      "drop": 0, "delete": 0, "expired": 0}

    # ---- sysctls --------------------------------------------------------------------------
    def set_sysctl(self, name: str, value: int) -> None:
        """Apply net.netfilter.<name> (the prefix may be given or omitted); ValueError, with the
        limits, for a value the kernel's handler refuses with EINVAL."""
        key = name.rsplit(".", 1)[-1]
        if key not in self.sysctl:
            raise KeyError(name)
        value = int(value)
        # measured on 6.18 in a new namespace: timeouts are proc_dointvec_jiffies (HZ=250), the
        # switches proc_dou8vec_minmax 0..1, max_retrans a u8; nf_conntrack_max is 0..INT_MAX
        if "timeout" in key:
            low, high = -((2**31 - 1) // 250), (2**31 - 1) // 250
        elif key == "nf_conntrack_tcp_max_retrans":
            low, high = 0, 255
        elif key == "nf_conntrack_max":
            low, high = 0, 2**31 - 1
        else:
            low, high = 0, 1
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high} (kernel: EINVAL)")
        self.sysctl[key] = value

    # ---- lookup / insertion -----------------------------------------------------------------
    def find(self, t: Tuple, now: float) -> tuple[NfConn, int] | None:
        """__nf_conntrack_find_get: confirmed entry holding tuple t, expired ones are reaped."""
        hit = self.hash.get(t)
        if hit is None:
            return None
        ct = hit[0]
        if ct.timeout <= now or ct.status & IPS_DYING:
            self.delete(ct, expired=True)
            return None
        return hit

    def tuple_taken(self, t: Tuple, ignored: NfConn | None, now: float) -> bool:
        """nf_conntrack_tuple_taken: is t in use by a confirmed conntrack other than `ignored`?"""
        hit = self.find(t, now)
        return hit is not None and hit[0] is not ignored

    def insert(self, ct: NfConn) -> None:
        self.hash[ct.orig] = (ct, IP_CT_DIR_ORIGINAL)
        self.hash[ct.reply] = (ct, IP_CT_DIR_REPLY)
        ct.seq = self.next_seq
        self.next_seq += 1
        self.stats["insert"] += 1

    def delete(self, ct: NfConn, expired: bool = False) -> bool:
        """nf_ct_delete: unhash (and drop from NAT's by-source index)."""
        if not ct.status & IPS_CONFIRMED:
            ct.status |= IPS_DYING
            return False
        for t in (ct.orig, ct.reply):
            hit = self.hash.get(t)
            if hit is not None and hit[0] is ct:
                del self.hash[t]
        if ct.status & IPS_SRC_NAT_DONE:
            key = (ct.orig.proto, ct.orig.src, ct.orig.sport)
            lst = self.bysource.get(key)
            if lst is not None:
                if ct in lst:
                    lst.remove(ct)
                if not lst:
                    del self.bysource[key]
        ct.status |= IPS_DYING
        self.stats["expired" if expired else "delete"] += 1
        return True

    def gc(self, now: float, force: bool = False) -> int:
        """gc_worker: sweep expired entries every GC_INTERVAL seconds of capture time."""
        if not force and now - self.last_gc < GC_INTERVAL:
            return 0
        self.last_gc = now
        dead = {id(ct): ct for ct, _ in self.hash.values() if ct.timeout <= now}
        for ct in dead.values():
            self.delete(ct, expired=True)
        return len(dead)

    def entries(self, now: float | None = None) -> list[NfConn]:
        """Live conntracks (conntrack -L), oldest first."""
        seen: dict[int, NfConn] = {}
        for ct, direction in self.hash.values():
            if direction == IP_CT_DIR_ORIGINAL and (now is None or ct.timeout > now):
                seen[id(ct)] = ct
        return sorted(seen.values(), key=lambda c: c.seq)

    def __len__(self) -> int:
        return sum(1 for _, d in self.hash.values() if d == IP_CT_DIR_ORIGINAL)

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
        table.bysource.setdefault((ct.orig.proto, ct.orig.src, ct.orig.sport), []).append(ct)
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
