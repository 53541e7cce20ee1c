"""CT and NOTRACK targets (xt_CT.c), raw table only.

--notrack marks the packet untracked (NF-B's nf_ct_set_untracked).  --zone,
--helper, --ctevents, --expevents and --timeout are accepted but have no effect in
the model (no zones, helpers or event listeners): the path notes that.  NOTRACK and
CT --notrack do not load conntrack themselves (xt_ct_tg_check, notrack_chk): only another
conntrack user in the ruleset turns it on.
"""
from __future__ import annotations

from pathtrace.net.netfilter.x_tables import XT_CONTINUE, ExtSpec, Opt, RuleCtx, XtTarget


def _set_untracked(skb) -> None:
    from pathtrace.net.netfilter.nf_conntrack_core import nf_ct_set_untracked
    nf_ct_set_untracked(skb)


def build_ct(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    notrack = any(o.name == "--notrack" for o in opts)
    ignored = [f"{o.name} {' '.join(o.args)}".strip() for o in opts if o.name != "--notrack"]

    def fn(skb, par) -> int:
        if skb.ct is not None:            # already has a conntrack: CT does nothing
            return XT_CONTINUE
        if notrack:
            _set_untracked(skb)
        if skb.ctx.record:
            skb.ctx.step("xt_ct_target_v1", notrack=notrack,
                         **({"ignored": ", ".join(ignored) + " (not modelled)"} if ignored else {}))
        return XT_CONTINUE
    # xt_ct_tg_check: --notrack jumps past nf_ct_netns_get, so it loads no conntrack by itself
    return XtTarget("CT", "ext", fn=fn, table="raw", conntrack=not notrack)


def build_notrack(opts: list[Opt], ctx: RuleCtx) -> XtTarget:
    def fn(skb, par) -> int:
        if skb.ct is None:
            _set_untracked(skb)
            skb.ctx.step("notrack_tg")
        return XT_CONTINUE
    return XtTarget("NOTRACK", "ext", fn=fn, table="raw", conntrack=False)    # notrack_chk: no netns_get


TARGETS = {
    "CT": ExtSpec("CT", {"--notrack": 0, "--zone": 1, "--zone-orig": 1, "--zone-reply": 1, "--helper": 1,
                         "--ctevents": 1, "--expevents": 1, "--timeout": 1}, build_ct),
    "NOTRACK": ExtSpec("NOTRACK", {}, build_notrack),
}
