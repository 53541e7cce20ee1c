"""MARK and CONNMARK targets (xt_mark.c mark_tg, xt_connmark.c connmark_tg)."""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import XT_CONTINUE, ExtSpec, Opt, RuleCtx, XtError, XtTarget
from pathtrace.net.netfilter.xt_util import parse_int, parse_value_mask

M32 = 0xFFFFFFFF


def _xmark(o: Opt) -> tuple[int, int]:
    """The (value, mask) pair xt_mark_tginfo2 stores for each user option."""
    if o.name == "--set-xmark":
        return parse_value_mask(o.arg, "mark")
    if o.name == "--set-mark":
        v, m = parse_value_mask(o.arg, "mark")
        return v, (m | v) if "/" in o.arg else M32
    n = parse_int(o.arg, 0, M32, "mark")
    if o.name == "--and-mark":
        return 0, ~n & M32
    if o.name == "--or-mark":
        return n, n
    return n, 0          # --xor-mark


def build_mark(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    if len(opts) != 1:
        raise XtError("MARK target: exactly one of --set-xmark/--set-mark/--and-mark/--or-mark/--xor-mark")
    value, mask = _xmark(opts[0])
    inv_mask = ~mask & M32

    def fn(skb, par) -> int:
        old = skb.mark
        skb.mark = (old & inv_mask) ^ value
        if skb.ctx.record:
            skb.ctx.step("mark_tg", mark=f"{old:#x} -> {skb.mark:#x}")
        return XT_CONTINUE
    return XtTarget("MARK", "ext", fn=fn)


def build_connmark(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    from pathtrace.net.netfilter.xt_conntrack import untracked_sentinel
    U = untracked_sentinel()
    mode = None
    ctmark = ctmask = 0
    nfmask = ctmask2 = M32
    for o in opts:
        if o.name in ("--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark"):
            mode = "set"
            ctmark, ctmask = _xmark(o)
        elif o.name in ("--save-mark", "--restore-mark"):
            mode = o.name[2:6]
        elif o.name == "--mask":
            nfmask = ctmask2 = parse_int(o.arg, 0, M32, "mask")
        elif o.name == "--nfmask":
            nfmask = parse_int(o.arg, 0, M32, "nfmask")
        elif o.name == "--ctmask":
            ctmask2 = parse_int(o.arg, 0, M32, "ctmask")
    if mode is None:
        raise XtError("CONNMARK target: one of --set-mark, --save-mark or --restore-mark is required")

    def fn(skb, par) -> int:
        ct = skb.ct
        if ct is None or ct is U:
            return XT_CONTINUE
        if mode == "set":
            ct.mark = (ct.mark & ~ctmask & M32) ^ ctmark
        elif mode == "save":
            ct.mark = (ct.mark & ~ctmask2 & M32) ^ (skb.mark & nfmask)
        else:
            skb.mark = (skb.mark & ~nfmask & M32) ^ (ct.mark & ctmask2)
        if skb.ctx.record:
            skb.ctx.step("connmark_tg", mode=mode, ctmark=f"{ct.mark:#x}", mark=f"{skb.mark:#x}")
        return XT_CONTINUE
    return XtTarget("CONNMARK", "ext", fn=fn, conntrack=True)


_MARK_OPTS = {"--set-xmark": 1, "--set-mark": 1, "--and-mark": 1, "--or-mark": 1, "--xor-mark": 1}
TARGETS = {
    "MARK": ExtSpec("MARK", _MARK_OPTS, build_mark),
    "CONNMARK": ExtSpec("CONNMARK", {**_MARK_OPTS, "--save-mark": 0, "--restore-mark": 0, "--mask": 1,
                                     "--nfmask": 1, "--ctmask": 1}, build_connmark),
}
