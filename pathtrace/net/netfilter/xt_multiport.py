"""multiport (xt_multiport.c, revision 1): up to 15 ports/ranges, src, dst or either."""
from __future__ import annotations

import struct

from pathtrace.net.netfilter.x_tables import ExtSpec, Opt, RuleCtx, XtError, XtMatch
from pathtrace.net.netfilter.xt_util import parse_port_range

XT_MULTI_PORTS = 15
_PROTOS = {6: "tcp", 17: "udp", 136: "udplite", 132: "sctp", 33: "dccp"}


def build(opts: list[Opt], ctx: RuleCtx) -> XtMatch:
    if ctx.proto not in _PROTOS or ctx.inv_proto:
        raise XtError("multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'")
    if len(opts) != 1:
        raise XtError("multiport: exactly one of --sports, --dports, --ports")
    o = opts[0]
    ranges = [parse_port_range(p) for p in o.arg.split(",")]
    if sum(1 if lo == hi else 2 for lo, hi in ranges) > XT_MULTI_PORTS:
        raise XtError(f"multiport: too many ports specified (max {XT_MULTI_PORTS})")
    inv = o.invert
    which = o.name
    rs = tuple(ranges)

    def hit(port: int) -> bool:
        for lo, hi in rs:
            if lo <= port <= hi:
                return True
        return False

    def check(skb, par) -> bool:
        if par.fragoff:
            return False
        p = skb.payload
        if len(p) < 4:
            par.hotdrop = True
            return False
        sport, dport = struct.unpack_from("!HH", p, 0)
        if which == "--sports":
            r = hit(sport)
        elif which == "--dports":
            r = hit(dport)
        else:
            r = hit(sport) or hit(dport)
        return r != inv

    def why(skb, par) -> str:
        return f"multiport {which} {'! ' if inv else ''}{o.arg}: sport {skb.sport} dport {skb.dport}"
    # info: for the chain index (xt_chain_index); --ports (either side) is not indexable
    return XtMatch("multiport", check, why, info={"proto": ctx.proto, "which": which, "ranges": rs, "inv": inv})


MATCHES = {"multiport": ExtSpec("multiport", {"--sports": 1, "--dports": 1, "--ports": 1}, build,
                                {"--source-ports": "--sports", "--destination-ports": "--dports",
                                 "--source-port": "--sports", "--destination-port": "--dports"})}
