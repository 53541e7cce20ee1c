"""Which match and target extensions exist: the model's own, and the kernel's it refuses.

The tables are built once from the extension modules' MATCHES / TARGETS dicts
(read-only after import); an extension the kernel has but the model lacks is
refused by name, an unknown one as iptables would ("Couldn't load match").
"""
from __future__ import annotations

from importlib import import_module
from types import MappingProxyType

from pathtrace.net.netfilter.x_tables import ExtSpec

_MODULES = (
    "xt_tcpudp", "xt_multiport", "xt_iprange", "xt_conntrack", "xt_mark", "xt_addrtype", "xt_limit",
    "xt_hashlimit", "xt_recent", "xt_header", "xt_owner", "xt_set", "xt_policy",
    "xt_rpfilter", "xt_connlimit", "ipt_REJECT", "xt_LOG", "xt_MARK", "xt_CT", "xt_nat", "xt_mangle", "xt_NFQUEUE",
)

# Kernel extensions that exist but the model does not implement (refused by name).
KNOWN_MATCHES = {
    "physdev": "bridge netfilter (br_netfilter) is not modelled",
    "devgroup": "device groups are not modelled", "helper": "conntrack helpers are not modelled",
    "socket": "socket lookup from netfilter is not modelled", "cgroup": "cgroups are not modelled",
    "string": "payload string search is not implemented",
    "bpf": "BPF programs are not modelled", "connbytes": "not implemented",
    "quota": "not implemented", "statistic": "not implemented", "time": "wall-clock time match is not implemented",
    "ecn": "not implemented", "esp": "not implemented", "ah": "not implemented", "sctp": "not implemented",
    "dccp": "not implemented", "realm": "routing realms are not modelled", "cluster": "not implemented",
    "cpu": "CPUs are not modelled", "ipvs": "IPVS is not modelled", "nfacct": "not implemented",
    "osf": "not implemented", "rateest": "not implemented", "connlabel": "not implemented",
    "tcpmss": "not implemented", "udplite": "not implemented", "u32": "not implemented", "l2tp": "not implemented",
    "ipcomp": "not implemented", "state6": "IPv6-only", "icmp6": "IPv6-only (ip6tables)",
    "ipv6header": "IPv6-only (ip6tables)", "hbh": "IPv6-only", "rt": "IPv6-only", "frag": "IPv6-only",
    "mh": "IPv6-only", "eui64": "IPv6-only", "hl": "IPv6-only", "dst": "IPv6-only", "ipvs6": "IPv6-only",
}
KNOWN_TARGETS = {
    "SECMARK": "SELinux labels are not modelled", "CONNSECMARK": "SELinux labels are not modelled",
    "TEE": "packet duplication is not modelled", "TPROXY": "transparent proxy is not modelled",
    "SYNPROXY": "not implemented", "HMARK": "not implemented", "IDLETIMER": "not implemented",
    "LED": "not implemented", "RATEEST": "not implemented", "ECN": "not implemented",
    "CLUSTERIP": "removed from Linux 6.x", "ULOG": "removed from the kernel (use NFLOG)",
    "MIRROR": "removed from the kernel", "SAME": "removed from the kernel",
    "CONNLABEL": "not implemented", "NOTRACK6": "IPv6-only", "HL": "IPv6-only", "SNPT": "IPv6-only",
    "DNPT": "IPv6-only", "ip6t_REJECT": "IPv6-only",
}


def _collect(attr: str) -> MappingProxyType:
    out: dict[str, ExtSpec] = {}
    for mod in _MODULES:
        try:
            m = import_module(f"pathtrace.net.netfilter.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"pathtrace.net.netfilter.{mod}":
                raise
            continue
        out.update(getattr(m, attr, {}))
    return MappingProxyType(out)


_MATCHES: MappingProxyType | None = None
_TARGETS: MappingProxyType | None = None


def match(name: str) -> ExtSpec | None:
    return _tables()[0].get(name)


def target(name: str) -> ExtSpec | None:
    return _tables()[1].get(name)


def _tables() -> tuple[MappingProxyType, MappingProxyType]:
    global _MATCHES, _TARGETS  # read-only registry, built lazily once (imports are circular otherwise)
    if _MATCHES is None:
        _MATCHES = _collect("MATCHES")
        _TARGETS = _collect("TARGETS")
    return _MATCHES, _TARGETS


def unknown_match(name: str) -> str:
    if name in KNOWN_MATCHES:
        return f"match '{name}' is not supported by pathtrace: {KNOWN_MATCHES[name]}"
    return f"Couldn't load match `{name}': No such file or directory (unknown match extension)"


def unknown_target(name: str) -> str:
    if name in KNOWN_TARGETS:
        return f"target '{name}' is not supported by pathtrace: {KNOWN_TARGETS[name]}"
    return f"Couldn't load target `{name}': no such chain or target extension"
