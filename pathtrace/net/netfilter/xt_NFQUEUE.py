"""NFQUEUE, TRACE and AUDIT targets.

NFQUEUE returns the kernel's encoded verdict NF_QUEUE | queue << 16 | bypass flag.
A replay has no userspace listener, so nf_queue fails with -ESRCH: with
--queue-bypass the packet continues with the next hook entry, otherwise it is
freed (kfree_skb) — the hook code in core.py applies that.
"""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import NF_QUEUE, XT_CONTINUE, ExtSpec, Opt, RuleCtx, XtError, XtTarget
from pathtrace.net.netfilter.xt_util import parse_int

NF_VERDICT_FLAG_QUEUE_BYPASS = 0x8000
NF_VERDICT_QBITS = 16


def build_nfqueue(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    qnum = 0
    bypass = False
    for o in opts:
        if o.name == "--queue-num":
            qnum = parse_int(o.arg, 0, 65535, "queue number")
        elif o.name == "--queue-balance":
            lo, _, hi = o.arg.partition(":")
            qnum = parse_int(lo, 0, 65535, "queue number")
            if hi and parse_int(hi, 0, 65535, "queue number") < qnum:
                raise XtError("NFQUEUE: --queue-balance range must be ascending")
        elif o.name == "--queue-bypass":
            bypass = True
    verdict = NF_QUEUE | (qnum << NF_VERDICT_QBITS) | (NF_VERDICT_FLAG_QUEUE_BYPASS if bypass else 0)

    def fn(skb, par) -> int:
        if skb.ctx.record:
            skb.ctx.step("nfqueue_tg_v3", queue=qnum, bypass=bypass)
        return verdict
    return XtTarget("NFQUEUE", "ext", fn=fn)


def build_trace(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    def fn(skb, par) -> int:
        skb.nf_trace = True
        skb.ctx.step("trace_tg", note="nf_trace set: later rules are traced (this path already shows them)")
        return XT_CONTINUE
    return XtTarget("TRACE", "ext", fn=fn, table="raw")


def build_audit(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    kind = opts[-1].arg if opts else "accept"
    if kind not in ("accept", "drop", "reject"):
        raise XtError(f"AUDIT: bad --type {kind!r}")

    def fn(skb, par) -> int:
        if skb.ctx.record:
            skb.ctx.step("audit_tg", type=kind)
        return XT_CONTINUE
    return XtTarget("AUDIT", "ext", fn=fn)


TARGETS = {
    "NFQUEUE": ExtSpec("NFQUEUE", {"--queue-num": 1, "--queue-balance": 1, "--queue-bypass": 0, "--fail-open": 0,
                                   "--queue-cpu-fanout": 0}, build_nfqueue),
    "TRACE": ExtSpec("TRACE", {}, build_trace),
    "AUDIT": ExtSpec("AUDIT", {"--type": 1}, build_audit),
}
