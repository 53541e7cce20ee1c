"""recent (xt_recent.c): per-name address lists with timestamps, in the namespace.

Defaults as the module parameters: ip_list_tot=100 entries per table (LRU
eviction), ip_pkt_list_tot=20 timestamps per entry; HZ=1000 jiffies from ctx.now.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathtrace.lib.inet import prefix_mask
from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_limit import HZ, jiffies
from pathtrace.net.netfilter.xt_util import parse_addr, parse_int

IP_LIST_TOT = 100
IP_PKT_LIST_TOT = 20


@dataclass(slots=True)
class RecentEntry:
    addr: int
    ttl: int
    stamps: list[int]
    index: int = 1


@dataclass(slots=True)
class RecentTable:
    name: str
    entries: dict[int, RecentEntry] = field(default_factory=dict)   # insertion order = LRU order

    def touch(self, e: RecentEntry, now: int) -> None:
        """recent_entry_update: record a stamp and move to the LRU tail."""
        e.index %= IP_PKT_LIST_TOT
        if e.index < len(e.stamps):
            e.stamps[e.index] = now
        else:
            e.stamps.append(now)
        e.index += 1
        self.entries.pop(e.addr)
        self.entries[e.addr] = e

    def add(self, addr: int, ttl: int, now: int) -> RecentEntry:
        if len(self.entries) >= IP_LIST_TOT:
            self.entries.pop(next(iter(self.entries)))
        e = RecentEntry(addr, ttl, [now])
        self.entries[addr] = e
        return e


XT_RECENT_NAME_LEN = 200         # include/uapi/linux/netfilter/xt_recent.h


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    action = None
    inv = False
    seconds = hitcount = 0
    reap = rttl = False
    name = "DEFAULT"
    side_dst = False
    mask = 0xFFFFFFFF
    for o in opts:
        if o.name in ("--set", "--rcheck", "--update", "--remove"):
            if action is not None:
                raise XtError("recent: only one of --set, --rcheck, --update or --remove may be given")
            action, inv = o.name, o.invert
        elif o.name == "--seconds":
            seconds = parse_int(o.arg, 0, 0xFFFFFFFF, "seconds")
        elif o.name == "--hitcount":
            hitcount = parse_int(o.arg, 0, 0xFFFFFFFF, "hitcount")
        elif o.name == "--reap":
            reap = True
        elif o.name == "--rttl":
            rttl = True
        elif o.name == "--name":
            # libxt_recent copies at most XT_RECENT_NAME_LEN - 1 characters (measured: iptables 1.8.9
            # on 6.18 stores a 250-character --name as its first 199); the kernel refuses an empty one
            name = o.arg[:XT_RECENT_NAME_LEN - 1]
            if not name:
                raise XtError("recent: --name must not be empty (recent_mt_check: EINVAL)")
        elif o.name == "--rsource":
            side_dst = False
        elif o.name == "--rdest":
            side_dst = True
        elif o.name == "--mask":
            mask = parse_addr(o.arg)
    if action is None:
        raise XtError("recent: you must specify one of --set, --rcheck, --update or --remove")
    if (seconds or hitcount or reap) and action in ("--set", "--remove"):
        raise XtError("recent: --seconds/--hitcount/--reap only with --rcheck or --update")
    if reap and not seconds:
        raise XtError("recent: --reap needs --seconds")
    if hitcount > IP_PKT_LIST_TOT:
        raise XtError(f"recent: hitcount ({hitcount}) is larger than allowed maximum ({IP_PKT_LIST_TOT})")

    def check(skb, par) -> bool:
        iph = skb.iph
        addr = (iph.daddr if side_dst else iph.saddr) & mask
        ttl = iph.ttl
        if par.outdev is not None and skb.sk is None:
            ttl += 1                      # TTL as seen before forwarding
        now = jiffies(skb.ctx.now)
        t = par.nf.recent.setdefault(name, RecentTable(name))
        ret = inv
        e = t.entries.get(addr)
        if e is not None and rttl and e.ttl != ttl:
            e = None
        if e is None:
            if action != "--set":
                return ret
            t.add(addr, ttl, now)
            return not ret
        if action == "--set":
            ret = not ret
        elif action == "--remove":
            del t.entries[addr]
            return not ret
        else:
            time = now - seconds * HZ
            hits = 0
            for s in e.stamps:
                if seconds and time > s:
                    continue
                hits += 1
                if not hitcount or hits >= hitcount:
                    ret = not ret
                    break
            if reap:
                oldest = next(iter(t.entries.values()))
                if oldest is not e and time > oldest.stamps[oldest.index - 1]:
                    del t.entries[oldest.addr]
        if action == "--set" or (action == "--update" and ret):
            t.touch(e, now)
            e.ttl = ttl
        return ret

    def why(skb, par) -> str:
        return f"recent {action} --name {name}: no qualifying entry"
    return XtMatch("recent", check, why)


MATCHES = {"recent": ExtSpec("recent", {"--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1,
                                        "--hitcount": 1, "--reap": 0, "--rttl": 0, "--name": 1, "--rsource": 0,
                                        "--rdest": 0, "--mask": 1}, build)}
