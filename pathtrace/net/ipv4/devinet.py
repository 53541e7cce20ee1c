"""IPv4 sysctls: global ones and the per-device `conf` with the kernel's combination rules.

The kernel combines conf/all and conf/IFACE differently per setting (IN_DEV_ORCONF,
IN_DEV_ANDCONF, IN_DEV_MAXCONF in include/linux/inetdevice.h); `Sysctl.dev` applies
the same rule so `rp_filter` is max(all, dev) while `accept_local` is all OR dev.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Global net.ipv4.* settings and their kernel defaults.
# sysctls of several numbers: a new namespace copies init_net's, which the kernel sizes from memory
# at boot (tcp_rmem[2] is 6 MiB on small machines, up to 32 MiB: it sets the SYN-ACK's window scale)
VECTOR_DEFAULTS: dict[str, tuple[int, ...]] = {"tcp_rmem": (4096, 131072, 6291456), "tcp_wmem": (4096, 16384, 4194304)}

GLOBAL_DEFAULTS: dict[str, int] = {
    "ip_forward": 0,
    "ip_default_ttl": 64,
    "icmp_ratelimit": 1000,          # ms, per-destination token bucket (inet_peer_xrlim_allow)
    "icmp_ratemask": 0x1818,         # dest unreachable, source quench, time exceeded, parameter problem
    "icmp_msgs_per_sec": 1000,       # global bucket (icmp_global_allow)
    "icmp_msgs_burst": 50,
    "icmp_echo_ignore_all": 0,
    "icmp_echo_ignore_broadcasts": 1,
    "icmp_errors_use_inbound_ifaddr": 0,
    "ip_no_pmtu_disc": 0,
    "tcp_syncookies": 1,
    "tcp_sack": 1,                   # SACK_PERM in SYN-ACKs, SACK blocks in ACKs
    "tcp_timestamps": 1,             # TSval/TSecr (1: with a per-connection random offset)
    "tcp_window_scaling": 1,
    "tcp_dsack": 1,                  # D-SACK blocks in ACKs of duplicate data
    "tcp_ecn": 2,                    # answer ECN-setup SYNs, do not ask for ECN
    "tcp_synack_retries": 5,         # SYN-ACK retransmits before a request sock is dropped (reqsk_timer_handler)
    "tcp_fwmark_accept": 0,          # 1: a request sock (and its child) takes the SYN's fwmark (inet_request_mark)
    "fwmark_reflect": 0,             # 1: replies and errors the stack sends carry the packet's mark (IP4_REPLY_MARK)
    "ipfrag_time": 30,
    "ip_nonlocal_bind": 0,
}

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
JIFFIES_MAX = INT_MAX // 250        # proc_dointvec_jiffies on a HZ=250 kernel: seconds * HZ must fit an int

# Bounds the kernel's proc handler enforces on a write (proc_dointvec_minmax / proc_dou8vec_minmax
# with extra1..extra2, or the u8 and jiffies conversions); anything outside fails with EINVAL.
# Measured on 6.18 by writing to /proc/sys in a new namespace; settings not listed take any int,
# and every conf/* setting is a plain proc_dointvec (devinet_conf_proc): rp_filter=5 is accepted.
GLOBAL_LIMITS: dict[str, tuple[int, int]] = {
    "ip_default_ttl": (1, 255),          # extra1 SYSCTL_ONE, extra2 ip_ttl_max
    "icmp_ratelimit": (0, INT_MAX),
    "icmp_msgs_per_sec": (0, INT_MAX),
    "icmp_msgs_burst": (0, INT_MAX),
    "icmp_echo_ignore_all": (0, 1),
    "icmp_echo_ignore_broadcasts": (0, 1),
    "icmp_errors_use_inbound_ifaddr": (0, 1),
    "ip_no_pmtu_disc": (0, 255),         # u8
    "tcp_syncookies": (0, 255),
    "tcp_sack": (0, 255),
    "tcp_timestamps": (0, 255),
    "tcp_window_scaling": (0, 255),
    "tcp_dsack": (0, 255),
    "tcp_ecn": (0, 2),
    "tcp_synack_retries": (0, 255),
    "tcp_fwmark_accept": (0, 255),       # u8: 256 and -1 refused (measured on 6.18)
    "fwmark_reflect": (0, 255),          # u8: 256 and -1 refused (measured on 6.18)
    "tcp_syn_retries": (1, 127),
    "ipfrag_time": (-JIFFIES_MAX, JIFFIES_MAX),
    "ip_nonlocal_bind": (0, 255),
}


def check_limits(key: str, value: int, limits: tuple[int, int] = (INT_MIN, INT_MAX)) -> None:
    """Refuse a value the kernel's proc handler refuses, naming its limits."""
    low, high = limits
    if not low <= value <= high:
        raise ValueError(f"{key} must be between {low} and {high} (kernel: EINVAL)")


# conf/* settings: default value and how conf/all combines with the device's value.
CONF_DEFAULTS: dict[str, tuple[int, str]] = {
    "forwarding": (0, "dev"),
    "rp_filter": (0, "max"),
    "accept_local": (0, "or"),
    "send_redirects": (1, "or"),
    "accept_redirects": (1, "and"),
    "secure_redirects": (1, "or"),
    "shared_media": (1, "or"),
    "log_martians": (0, "or"),
    "route_localnet": (0, "or"),
    "accept_source_route": (0, "and"),
    "arp_ignore": (0, "max"),
    "arp_announce": (0, "max"),
    "arp_filter": (0, "or"),
    "arp_accept": (0, "max"),
    "proxy_arp": (0, "or"),
    "bootp_relay": (0, "and"),
    "src_valid_mark": (0, "or"),
    "bc_forwarding": (0, "and"),
    "disable_xfrm": (0, "or"),
    "disable_policy": (0, "or"),
    "medium_id": (0, "dev"),
}


@dataclass(slots=True)
class Sysctl:
    """The namespace's sysctl state, written in the order the host file lists them."""

    glob: dict[str, int] = field(default_factory=lambda: dict(GLOBAL_DEFAULTS))
    conf: dict[str, dict[str, int]] = field(default_factory=dict)   # 'all', 'default', iface -> settings
    vectors: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(VECTOR_DEFAULTS))

    def init_devices(self, names: list[str]) -> None:
        for scope in ("all", "default", *names):
            self.conf.setdefault(scope, {k: v for k, (v, _) in CONF_DEFAULTS.items()})
        self.conf["lo"]["forwarding"] = self.conf["lo"].get("forwarding", 0)
        # inetdev_init for the loopback device: no xfrm, no policy, source routes accepted
        for name in ("disable_xfrm", "disable_policy", "accept_source_route"):
            if name in self.conf["lo"]:
                self.conf["lo"][name] = 1

    def write_vector(self, key: str, values: tuple[int, ...]) -> None:
        """net.ipv4.tcp_rmem / tcp_wmem: three numbers, min <= default <= max as proc_dointvec takes them."""
        name = key.split(".")[-1]
        if key.split(".")[:2] != ["net", "ipv4"] or name not in self.vectors:
            raise KeyError(key)
        if len(values) != len(self.vectors[name]) or any(v < 1 for v in values):
            raise ValueError(f"{key} takes {len(self.vectors[name])} positive numbers")
        self.vectors[name] = tuple(values)

    def write(self, key: str, value: int) -> None:
        """Apply one `net.ipv4.*` write with the kernel's side effects (devinet_sysctl_forward)."""
        parts = key.split(".")
        if parts[:2] != ["net", "ipv4"]:
            raise KeyError(key)
        if len(parts) == 3:
            name = parts[2]
            if name not in self.glob:
                raise KeyError(key)
            check_limits(key, value, GLOBAL_LIMITS.get(name, (INT_MIN, INT_MAX)))
            self.glob[name] = value
            if name == "ip_forward":
                self._forward_change(value)
            return
        if len(parts) != 5 or parts[2] != "conf" or parts[4] not in CONF_DEFAULTS:
            raise KeyError(key)
        scope, name = parts[3], parts[4]
        if scope not in self.conf:
            raise LookupError(scope)
        check_limits(key, value)
        self.conf[scope][name] = value
        if name == "forwarding" and scope == "all":
            self._forward_change(value)
        elif scope == "default":
            # devinet_copy_dflt_conf: devices that never set it follow conf/default
            for dev, settings in self.conf.items():
                if dev not in ("all", "default") and not settings.get(f"_set_{name}"):
                    settings[name] = value
        if scope not in ("all", "default"):
            self.conf[scope][f"_set_{name}"] = 1

    def _forward_change(self, value: int) -> None:
        """inet_forward_change: ip_forward and conf/all/forwarding set every device and default."""
        self.glob["ip_forward"] = value
        for settings in self.conf.values():           # every device, lo included, and default
            settings["forwarding"] = value
        self.conf["all"]["accept_redirects"] = int(not value)

    def dev(self, dev: str, name: str) -> int:
        """IN_DEV_CONF_GET combined with conf/all the way the kernel combines this setting."""
        own = self.conf.get(dev, self.conf["default"])[name]
        rule = CONF_DEFAULTS[name][1]
        if rule == "dev":
            return own
        allv = self.conf["all"][name]
        if rule == "max":
            return max(allv, own)
        if rule == "or":
            return 1 if (allv or own) else 0
        return 1 if (allv and own) else 0
