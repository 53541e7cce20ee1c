"""Shared builders for the netfilter tests: skbs and devices without the capture code."""
from __future__ import annotations

import struct
from types import SimpleNamespace

from pathtrace.lib.checksum import ip_fast_csum, l4_checksum
from pathtrace.lib.inet import aton
from pathtrace.net.core.netdevice import NetDevice
from pathtrace.net.core.skbuff import Iphdr, SkBuff
from pathtrace.net.netfilter import Netfilter
from pathtrace.trace import PacketContext

ETH0 = NetDevice("eth0", 2, b"\x02\0\0\0\0\x01")
ETH1 = NetDevice("eth1", 3, b"\x02\0\0\0\0\x02")
WLAN0 = NetDevice("wlan0", 4, b"\x02\0\0\0\0\x03")


def tcp_payload(sport: int, dport: int, flags: int = 0x02, options: bytes = b"", data: bytes = b"") -> bytearray:
    doff = (20 + len(options)) // 4
    return bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, 65535, 0, 0) + options + data)


def udp_payload(sport: int, dport: int, data: bytes = b"x") -> bytearray:
    return bytearray(struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def icmp_payload(typ: int, code: int = 0) -> bytearray:
    return bytearray(struct.pack("!BBHHH", typ, code, 0, 1, 1))


def make_skb(src="10.0.0.1", dst="10.0.0.2", proto=6, payload=None, ttl=64, tos=0, frag_off=0, now=0.0,
             record=True, dev=ETH0, mac_src=b"\x02\xaa\0\0\0\x01", fix_csum=True) -> SkBuff:
    if payload is None:
        payload = tcp_payload(1234, 80) if proto == 6 else udp_payload(1234, 53) if proto == 17 else icmp_payload(8)
    payload = bytearray(payload)
    iph = Iphdr(4, 5, tos, 20 + len(payload), 1, frag_off, ttl, proto, 0, aton(src), aton(dst))
    iph.check = ip_fast_csum(iph.pack())
    if fix_csum and proto in (6, 17) and not frag_off:
        off = 16 if proto == 6 else 6
        payload[off:off + 2] = b"\0\0"
        payload[off:off + 2] = struct.pack("!H", l4_checksum(iph.saddr, iph.daddr, proto, bytes(payload)))
    ctx = PacketContext(now, record=record)
    return SkBuff(ctx, dev=dev, iif=dev, iph=iph, payload=payload, mac_src=mac_src)


def load(text: str, ipsets=None, net=None) -> Netfilter:
    host = SimpleNamespace(ipsets=ipsets or {}, ipsets_line=0, iptables_text=text, iptables_path="rules",
                           iptables_first_line=1, path="host.yaml")
    return Netfilter.from_config(host, net)


def filter_rules(*rules: str, chains: str = "", policy: str = "ACCEPT") -> str:
    body = "\n".join(rules)
    return (f"*filter\n:INPUT {policy} [0:0]\n:FORWARD {policy} [0:0]\n:OUTPUT {policy} [0:0]\n{chains}"
            f"{body}\nCOMMIT\n")


def verdict(nf: Netfilter, skb: SkBuff, hook: int = 1, indev=ETH0, outdev=None) -> int:
    return nf.hook(hook, skb, indev, outdev)


def decided(skb: SkBuff) -> dict:
    return skb.ctx.verdicts[-1]
