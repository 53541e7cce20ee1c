"""`pathtrace show`: the loaded host the way iproute2 and iptables would list it."""
from __future__ import annotations

from tabulate import tabulate

from pathtrace.lib.inet import mac_ntoa, ntoa


def render_host(net, rules: str = "list") -> str:
    """`rules`: "list" for the ruleset as iptables -L -v -n prints it (render/iptables_list.py), "save"
    for its options in iptables-save syntax."""
    out = [f"host {net.host.name}", ""]
    rows = [(d.name, d.driver, mac_ntoa(d.mac), d.mtu, "UP" if d.up else "DOWN",
             " ".join(f"{ntoa(a.local)} peer {ntoa(a.peer)}/{a.prefixlen}" if a.peer else f"{ntoa(a.local)}/{a.prefixlen}"
                      for a in d.addrs)) for d in net.devices.values()]
    out.append(tabulate(rows, headers=["interface", "driver", "mac", "mtu", "state", "addresses"]))
    out.append("")
    for tid, table in sorted(net.fib_tables.items(), key=lambda kv: -kv[0]):
        routes = table.routes()
        if not routes:
            continue
        name = {255: "local", 254: "main", 253: "default"}.get(tid, str(tid))
        out.append(f"routing table {name}:")
        out.extend(f"  {fa.describe()}" for fa in routes)
        out.append("")
    out.append("policy rules:")
    out.extend(f"  {r.priority}:\t{r.text}" for r in net.fib_rules)
    out.append("")
    if net.neigh.entries:
        out.append("neighbours:")
        out.extend(f"  {ntoa(n.addr)} dev {n.dev} lladdr {mac_ntoa(n.lladdr) if n.lladdr else '-'} {n.state}"
                   for n in net.neigh.entries.values())
        out.append("")
    if net.sockets:
        out.append("sockets:")
        out.extend(f"  {s.text}" for s in net.sockets)
        out.append("")
    changed = {k: v for k, v in net.host.sysctl.items()}
    if changed:
        out.append("sysctl:")
        out.extend(f"  {k} = {v}" for k, v in changed.items())
        out.append("")
    if net.nf is not None and rules == "list":
        from pathtrace.net.netfilter.x_tables import TABLE_ORDER
        from pathtrace.render.iptables_list import format_table
        for name in TABLE_ORDER:
            if name in net.nf.tables:
                # as iptables -L -v -n prints a ruleset just loaded (counters 0): -v is what shows interfaces
                out.append(f"# iptables -t {name} -L -v -n")
                out.append(format_table(net.nf.tables[name], counters=True))
        if net.nf.nft is not None and net.nf.nft.tables:
            out.append(net.nf.nft.format_listing())
    elif net.nf is not None:
        out.append(net.nf.format_listing(counters=False))
    return "\n".join(out).rstrip("\n") + "\n"
