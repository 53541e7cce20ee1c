"""`pathtrace snapshot`: a host file written from the machine it runs on, or from a network namespace.

It reads what the kernel reports through the tools an engineer would use (`ip -j` for links,
addresses, routes, rules and neighbours, `ss` for listeners, `sysctl` for net.ipv4, `iptables-save`
and `ipset save`), keeps what the host format describes and the model uses, and checks that the
result loads: a snapshot that pathtrace cannot read back is an error, not a file.  Settings equal to
the kernel's defaults are left out, so the file says what is special about the machine.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field

import click

from pathtrace.errors import PathtraceError

# the kernel's own routes for its addresses (fib_add_ifaddr) and the default policy rules: the
# loader adds them again, so a snapshot leaves them out
KERNEL_PROTOS = {"kernel"}
DEFAULT_RULES = {(0, "local"), (32766, "main"), (32767, "default")}
TABLE_IDS = {"local": 255, "main": 254, "default": 253}


class SnapshotError(PathtraceError):
    """A tool failed or its output could not be read."""


@dataclass
class Runner:
    """Runs the reading tools, inside `netns` when one is named (ip netns exec)."""

    netns: str | None = None
    missing: list[str] = field(default_factory=list)

    def run(self, *argv: str, optional: bool = False) -> str:
        if shutil.which(argv[0]) is None:
            if optional:
                self.missing.append(argv[0])
                return ""
            raise SnapshotError(f"snapshot needs {argv[0]!r}, which is not installed")
        cmd = list(argv) if self.netns is None else ["ip", "netns", "exec", self.netns, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            if optional:
                self.missing.append(" ".join(argv))
                return ""
            why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise SnapshotError(f"{' '.join(cmd)}: {why}")
        return proc.stdout

    def json(self, *argv: str) -> list:
        text = self.run(*argv)
        try:
            return json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise SnapshotError(f"{' '.join(argv)}: unreadable JSON ({exc.msg})") from None


# ---- the pieces -----------------------------------------------------------------------------
def interfaces(run: Runner) -> list[dict]:
    """Links with their IPv4 addresses, MAC, MTU, state and index; lo is implicit in host files."""
    out = []
    for link in run.json("ip", "-j", "addr", "show"):
        name = link.get("ifname", "")
        if name == "lo" or link.get("link_type") not in ("ether", "none", None):
            continue
        addrs = []
        for a in link.get("addr_info", []):
            if a.get("family") != "inet":
                continue
            text = f"{a['local']}/{a['prefixlen']}"
            if a.get("address") and a["address"] != a["local"]:      # point-to-point: local peer PEER/len
                text = f"{a['local']} peer {a['address']}/{a['prefixlen']}"
            addrs.append(text)
        up = "UP" in link.get("flags", []) and link.get("operstate") != "DOWN"
        entry = {"name": name.split("@")[0], "mac": link.get("address"), "addresses": addrs,
                 "mtu": link.get("mtu", 1500), "ifindex": link.get("ifindex")}
        if not up:
            entry["state"] = "down"
        out.append(entry)
    return out


def route_text(r: dict, locked: bool = False) -> str:
    """One route as `ip route add` takes it (the parser's syntax, pathtrace-host(5)); `locked`: the
    text output said `mtu lock` (ip -j drops the lock)."""
    parts = [] if r.get("type", "unicast") == "unicast" else [r["type"]]
    parts.append(r["dst"])
    if "nexthops" in r:
        for nh in r["nexthops"]:
            parts += ["nexthop"] + (["via", nh["gateway"]] if nh.get("gateway") else []) \
                + (["dev", nh["dev"]] if nh.get("dev") else []) + ["weight", str(nh.get("weight", 1))]
    else:
        if r.get("gateway"):
            parts += ["via", r["gateway"]]
        if r.get("dev"):
            parts += ["dev", r["dev"]]
    table = r.get("table", "main")
    if table != "main":
        parts += ["table", str(table)]
    for key, word in (("prefsrc", "src"), ("metric", "metric"), ("scope", "scope")):
        if key in r and not (key == "scope" and r[key] in ("global", "universe")):
            parts += [word, str(r[key])]
    if r.get("protocol") and r["protocol"] not in ("boot", "static"):
        parts += ["proto", str(r["protocol"])]
    if "onlink" in r.get("flags", []):
        parts.append("onlink")
    for metric in r.get("metrics", []):
        for key, value in metric.items():
            if key == "mtu":
                parts += ["mtu", "lock", str(value)] if locked else ["mtu", str(value)]
            elif key == "advmss":
                parts += ["advmss", str(value)]
    return " ".join(parts)


def routes(run: Runner) -> list[str]:
    locked = {ln.split()[0] + (" table " + ln.split("table ")[1].split()[0] if " table " in ln else "")
              for ln in run.run("ip", "-4", "route", "show", "table", "all").splitlines() if " mtu lock " in ln}
    out = []
    for r in run.json("ip", "-j", "-4", "-d", "route", "show", "table", "all"):
        key = r.get("dst", "") + ("" if r.get("table", "main") == "main" else f" table {r['table']}")
        if r.get("protocol") in KERNEL_PROTOS:
            continue                        # the kernel's routes for the addresses: the loader adds them
        if r.get("type") in ("local", "broadcast") and r.get("table") == "local" and r.get("protocol") == "kernel":
            continue
        out.append(route_text(r, key in locked))
    return out


def rules(run: Runner) -> list[str]:
    out = []
    for r in run.json("ip", "-j", "-4", "rule", "show"):
        table = r.get("table", "main")
        if (r.get("priority"), table) in DEFAULT_RULES and r.get("src") in (None, "all") and len(r) <= 3:
            continue
        parts = []
        if r.get("src") and r["src"] != "all":
            parts += ["from", f"{r['src']}/{r.get('srclen', 32)}"]
        if r.get("dst"):
            parts += ["to", f"{r['dst']}/{r.get('dstlen', 32)}"]
        if "fwmark" in r:
            parts += ["fwmark", str(r["fwmark"]) + (f"/{r['fwmask']}" if "fwmask" in r else "")]
        if r.get("iif"):
            parts += ["iif", r["iif"]]
        if r.get("oif"):
            parts += ["oif", r["oif"]]
        action = r.get("action", "lookup" if "table" in r else None)
        parts += ["lookup", str(table)] if action in (None, "lookup") else [action]
        parts += ["priority", str(r.get("priority"))]
        out.append(" ".join(parts))
    return out


def neighbours(run: Runner) -> list[str]:
    out = []
    for n in run.json("ip", "-j", "-4", "neigh", "show"):
        state = [s.lower() for s in n.get("state", [])]
        if not n.get("lladdr") or not state or state[0] in ("failed", "incomplete", "none"):
            continue
        out.append(f"{n['dst']} dev {n['dev']} lladdr {n['lladdr']} {state[0]}")
    return out


def sockets(run: Runner) -> list[str]:
    """Listening TCP sockets and bound UDP ones (ss -H -ltun), IPv4 and wildcard."""
    out = []
    for line in run.run("ss", "-H", "-ltun").splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        proto, local = f[0], f[4]
        host, _, port = local.rpartition(":")
        dev = None
        if "%" in host:
            host, _, dev = host.partition("%")
        if host in ("*", "[::]", "0.0.0.0"):
            host = "0.0.0.0"
        elif host.startswith("[") or ":" in host:
            continue                        # IPv6 is not modelled
        text = f"{proto} {host}:{port}" + (f" dev {dev}" if dev else "")
        if text not in out:
            out.append(text)
    return out


def sysctls(run: Runner, names: list[str]) -> dict[str, str]:
    """net.ipv4 settings the model knows, where they differ from the kernel's defaults."""
    from pathtrace.net.ipv4.devinet import CONF_DEFAULTS, GLOBAL_DEFAULTS, VECTOR_DEFAULTS
    seen: dict[str, str] = {}
    for line in run.run("sysctl", "-a", "--pattern", r"^net\.ipv4\.").splitlines():
        key, _, value = line.partition(" = ")
        seen[key.strip()] = " ".join(value.split())
    out: dict[str, str] = {}
    for name, default in GLOBAL_DEFAULTS.items():
        value = seen.get(f"net.ipv4.{name}")
        if value is not None and value != str(default):
            out[f"net.ipv4.{name}"] = value
    for name, default in VECTOR_DEFAULTS.items():
        value = seen.get(f"net.ipv4.{name}")
        if value is not None and value != " ".join(map(str, default)):
            out[f"net.ipv4.{name}"] = value
    for scope in ["all", "default"] + names:
        for name, (default, _) in CONF_DEFAULTS.items():
            value = seen.get(f"net.ipv4.conf.{scope}.{name}")
            if value is not None and value != str(default):
                out[f"net.ipv4.conf.{scope}.{name}"] = value
    return out


def iptables(run: Runner) -> tuple[str, str | None]:
    """iptables-save's text (without its comments) and the backend it came from."""
    version = run.run("iptables", "-V", optional=True)
    backend = "legacy" if "legacy" in version else "nft" if "nf_tables" in version else None
    text = run.run("iptables-save", optional=True)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return ("\n".join(lines) + "\n" if any(ln.startswith("-A") for ln in lines) else ""), backend


def ipsets(run: Runner) -> str:
    return run.run("ipset", "save", optional=True) if shutil.which("ipset") else ""


# ---- the file ---------------------------------------------------------------------------------
def _block(text: str) -> list[str]:
    return ["  " + ln if ln else "" for ln in text.rstrip("\n").splitlines()]


def render(name: str, ifaces: list[dict], sysctl: dict[str, str], route_list: list[str], rule_list: list[str],
           neigh: list[str], socks: list[str], ipt: str, backend: str | None, sets: str) -> str:
    out = [f"name: {json.dumps(name)}", "interfaces:"]
    for i in ifaces:
        fields = [f"name: {json.dumps(i['name'])}"]
        if i.get("mac"):
            fields.append(f'mac: "{i["mac"]}"')
        fields.append("addresses: [" + ", ".join(json.dumps(a) for a in i["addresses"]) + "]")
        fields.append(f"mtu: {i['mtu']}")
        if i.get("state"):
            fields.append(f"state: {i['state']}")
        if i.get("ifindex"):
            fields.append(f"ifindex: {i['ifindex']}")
        out.append("  - {" + ", ".join(fields) + "}")
    if sysctl:
        out.append("sysctl:")
        out += [f"  {k}: {json.dumps(v) if ' ' in v else v}" for k, v in sysctl.items()]
    for key, items in (("routes", route_list), ("rules", rule_list), ("neighbours", neigh), ("sockets", socks)):
        if items:
            out.append(f"{key}:")
            out += [f"  - {json.dumps(x)}" for x in items]
    if sets:
        out.append("ipsets: |")
        out += _block(sets)
    if ipt:
        if backend:
            out.append(f"iptables-backend: {backend}")
        out.append("iptables: |")
        out += _block(ipt)
    return "\n".join(out) + "\n"


def take_snapshot(netns: str | None = None, name: str | None = None) -> tuple[str, list[str]]:
    """The host file's text and the tools that were missing (their parts are left out)."""
    run = Runner(netns)
    ifaces = interfaces(run)
    ipt, backend = iptables(run)
    text = render(name or netns or _hostname(run), ifaces, sysctls(run, [i["name"] for i in ifaces]), routes(run),
                  rules(run), neighbours(run), sockets(run), ipt, backend, ipsets(run))
    return text, run.missing


def _hostname(run: Runner) -> str:
    return run.run("hostname", optional=True).strip() or "snapshot"


@click.command()
@click.option("--netns", metavar="NAME", help="Read the named network namespace (ip netns exec) instead of this one.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the host file here (default: stdout).")
@click.option("--name", help="The host's name in the file (default: the namespace or the hostname).")
def snapshot(netns: str | None, output: str | None, name: str | None) -> None:
    """Write a host file (pathtrace-host(5)) from the running machine or a network namespace."""
    import os
    import tempfile
    from pathtrace.host.loader import load_host
    try:
        text, missing = take_snapshot(netns, name)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            fh.write(text)
        try:
            load_host(fh.name)             # a snapshot pathtrace cannot read back is not written
        except PathtraceError as exc:
            raise SnapshotError(f"the snapshot does not load: {str(exc).replace(fh.name, '<snapshot>')}") from None
        finally:
            os.unlink(fh.name)
    except PathtraceError as exc:
        click.echo(f"pathtrace: {exc}", err=True)
        raise SystemExit(2) from None
    for tool in missing:
        click.echo(f"pathtrace: warning: {tool} gave nothing; that part of the host is left out", err=True)
    if output:
        with open(output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        click.echo(text, nl=False)
