"""struct tcp_sock (include/linux/tcp.h), reduced to what the modelled TCP paths read and write.

One dataclass serves a request sock (SYN_RECV), a full socket (ESTABLISHED and the
closing states, or SYN_SENT for the host's own connections) and a timewait sock.
Values the kernel draws at random (ISN, timestamp offset, IP ID) start *provisional*
and are replaced by what the capture shows the host sending (tcp_observe_sent) or
what the peer acknowledges.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128

TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_SACK, TCPOPT_TIMESTAMP = 1, 2, 3, 4, 5, 8

TCP_ATO_MIN = 0.040          # HZ/25: delayed-ACK timeout floor (include/net/tcp.h)
TCP_DELACK_MAX = 0.200       # HZ/5
TCP_DELACK_MIN = 0.040
TCP_MAX_QUICKACKS = 16
TCP_TIMEWAIT_LEN = 60.0
TCP_MSS_DEFAULT = 536
TCP_OOW_RATELIMIT = 0.5      # sysctl_tcp_invalid_ratelimit, 500 ms
TCP_RMEM = (4096, 131072, 6291456)   # net.ipv4.tcp_rmem defaults of a new namespace
RMEM_MAX = 212992                    # net.core.rmem_max default
SKB_TRUESIZE_SMALL = 768             # truesize of a small received skb (veth/virtio): sets the first ACK's window


def before(a: int, b: int) -> bool:
    """Sequence-space a < b (include/net/tcp.h before())."""
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


def after(a: int, b: int) -> bool:
    return before(b, a)


def seq_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


@dataclass(slots=True)
class TcpOptions:
    """struct tcp_options_received as tcp_parse_options fills it."""

    mss: int = 0
    sack_ok: bool = False
    wscale: int | None = None
    tsval: int | None = None
    tsecr: int = 0


def tcp_parse_options(tcph: bytes) -> TcpOptions:
    """Walk the option bytes of a TCP header (stops at EOL or a malformed length, as the kernel does)."""
    opts = TcpOptions()
    doff = (tcph[12] >> 4) * 4 if len(tcph) > 12 else 20
    i, end = 20, min(doff, len(tcph))
    while i < end:
        kind = tcph[i]
        if kind == 0:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            break
        size = tcph[i + 1]
        if size < 2 or i + size > end:
            break
        if kind == TCPOPT_MSS and size == 4:
            opts.mss = struct.unpack_from("!H", tcph, i + 2)[0]
        elif kind == TCPOPT_WINDOW and size == 3:
            opts.wscale = min(tcph[i + 2], 14)
        elif kind == TCPOPT_SACK_PERM and size == 2:
            opts.sack_ok = True
        elif kind == TCPOPT_TIMESTAMP and size == 10:
            opts.tsval, opts.tsecr = struct.unpack_from("!II", tcph, i + 2)
        i += size
    return opts


def provisional(key: tuple, what: str, bits: int = 32) -> int:
    """A deterministic stand-in for a value the kernel draws from a secret (secure_tcp_seq, ts_off, inet_id).
    The ISN keeps the derivation earlier versions used, so recorded samples stay consistent."""
    seed = repr(key) if what == "isn" else repr((what, key))
    digest = hashlib.blake2b(seed.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & ((1 << bits) - 1)


@dataclass(slots=True, eq=False)
class TcpConn:
    """A request sock, a full tcp_sock or a timewait sock, keyed by (peer, peer port, local, local port)."""

    state: str
    key: tuple[int, int, int, int]          # (daddr, dport, saddr, sport) from the host's point of view: peer first
    listener: object = None                 # the host file's Socket (None for the host's own connections)
    iss: int = 0
    iss_provisional: bool = True
    snd_una: int = 0
    snd_nxt: int = 0
    write_seq: int = 0                      # end of what the application queued (FIN included)
    snd_wnd: int = 0
    max_window: int = 0
    irs: int = 0
    rcv_nxt: int = 0
    rcv_wup: int = 0
    rcv_wnd: int = 0
    rcv_ssthresh: int = 0
    window_clamp: int = 0
    advmss: int = 1460
    mss_clamp: int = 536
    rcv_mss: int = TCP_MSS_DEFAULT
    rcv_wscale: int = 0
    snd_wscale: int = 0
    tstamp_ok: bool = False
    sack_ok: bool = False
    wscale_ok: bool = False
    ecn_ok: bool = False
    ts_recent: int = 0
    ts_off: int = 0                         # TSval = capture time in ms + ts_off
    ts_provisional: bool = True
    ip_id: int = 0
    ip_id_provisional: bool = True
    tos: int = 0
    mark: int = 0
    # delayed-ACK machine (struct inet_connection_sock icsk_ack)
    quick: int = 0
    ato: float = 0.0
    lrcvtime: float = 0.0
    pingpong: int = 0
    ack_pending: bool = False
    ack_now: bool = False
    delack_timer: float | None = None
    tw_timer: float | None = None           # TIME_WAIT / FIN_WAIT2 timewait expiry
    rsk_timer: float | None = None          # request sock: SYN-ACK retransmit (reqsk_timer_handler)
    num_timeout: int = 0                    # request sock: times its timer fired (sets the back-off)
    num_retrans: int = 0                    # request sock: SYN-ACKs sent again
    last_oow_ack: float = -1.0
    rcv_shutdown: bool = False              # peer's FIN received
    snd_fin: bool = False                   # the application closed (FIN queued or sent)
    ofo: list[tuple[int, int]] = field(default_factory=list)   # out-of-order ranges (seq, end_seq)
    dsack: tuple[int, int] | None = None
    rmem: int = 0                           # truesize of data received but not yet read by the application
    tcp_rmem: tuple = TCP_RMEM              # net.ipv4.tcp_rmem of the namespace (min, default, max)
    seen_sent: bool = False                 # the capture showed the host sending on this connection
    last_window: int | None = None          # raw window field of the host's last captured segment
    dst: object = None                      # cached route (sk_dst_cache)
    synack_at: float = 0.0                  # capture time the SYN-ACK (or SYN) left: its TSval's clock
    last_event: float = 0.0                 # capture time of the last segment in either direction

    def tsval(self, now: float) -> int:
        """tcp_clock_ms() + ts_off, the kernel's TSval at capture time `now` (1 ms clock)."""
        return (int(now * 1000) + self.ts_off) & 0xFFFFFFFF

    def receive_window(self) -> int:
        """tcp_receive_window: what is left of the window last advertised."""
        win = (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & 0xFFFFFFFF
        return 0 if win >= 0x80000000 else win
