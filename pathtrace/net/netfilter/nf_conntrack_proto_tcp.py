"""TCP connection tracking (net/netfilter/nf_conntrack_proto_tcp.c).

The state table, tcp_valid_flags, mid-stream pickup (nf_conntrack_tcp_loose=1) and
window tracking (tcp_in_window, nf_conntrack_tcp_be_liberal=0) follow the 6.x source.
Not modelled: SYN proxy, sequence adjustment by helpers (offset is always 0),
nf_tcp_handle_invalid's timeout shortening for out-of-window FIN/RST.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pathtrace.net.netfilter.nf_conntrack_checksum import nf_ip_checksum
from pathtrace.net.netfilter.nf_conntrack_core import (
    IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY, IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, NF_ACCEPT, NF_DROP,
    NF_INET_PRE_ROUTING, NF_REPEAT, ConntrackTable, NfConn, ctinfo2dir,
)

# enum tcp_conntrack
NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2 = range(10)
TCP_CONNTRACK_MAX = 10
IGNORE = 11
RETRANS, UNACK = 12, 13
STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
               "TIME_WAIT", "CLOSE", "SYN_SENT2")
_TIMEOUT_KEYS = {SYN_SENT: "syn_sent", SYN_RECV: "syn_recv", ESTABLISHED: "established",
                 FIN_WAIT: "fin_wait", CLOSE_WAIT: "close_wait", LAST_ACK: "last_ack",
                 TIME_WAIT: "time_wait", CLOSE: "close", SYN_SENT2: "syn_sent",
                 RETRANS: "max_retrans", UNACK: "unacknowledged"}
_TIMEOUT_SYSCTLS = {state: "nf_conntrack_tcp_timeout_" + key for state, key in _TIMEOUT_KEYS.items()}

# enum tcp_bit_set
SYN_SET, SYNACK_SET, FIN_SET, ACK_SET, RST_SET, NONE_SET = range(6)

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG, TH_ECE, TH_CWR = 1, 2, 4, 8, 16, 32, 64, 128

# ip_ct_tcp_state.flags
FLAG_WINDOW_SCALE = 0x01
FLAG_SACK_PERM = 0x02
FLAG_CLOSE_INIT = 0x04
FLAG_BE_LIBERAL = 0x08
FLAG_DATA_UNACKNOWLEDGED = 0x10
FLAG_MAXACK_SET = 0x20
EXP_CHALLENGE_ACK = 0x40
SIMULTANEOUS_OPEN = 0x80

sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2, sIV, sIG = (
    NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2,
    TCP_CONNTRACK_MAX, IGNORE)

# tcp_conntracks[dir][index][old_state]
TCP_CONNTRACKS = (
    (  # ORIGINAL   sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),   # syn
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),   # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),   # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        (sIV,) * 10,                                           # none
    ),
    (  # REPLY
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        (sIV,) * 10,
    ),
)

# tcp_valid_flags: indexed by FIN|SYN|RST|ACK|URG (PSH, ECE, CWR always allowed)
TCP_VALID_FLAGS = frozenset((TH_SYN, TH_SYN | TH_URG, TH_SYN | TH_ACK, TH_RST, TH_RST | TH_ACK,
                             TH_FIN | TH_ACK, TH_FIN | TH_ACK | TH_URG, TH_ACK, TH_ACK | TH_URG))


@dataclass(slots=True)
class TcpSeen:
    """struct ip_ct_tcp_state: what one direction has sent."""

    td_end: int = 0
    td_maxend: int = 0
    td_maxwin: int = 0
    td_maxack: int = 0
    td_scale: int = 0
    flags: int = 0


@dataclass(slots=True)
class TcpState:
    """struct ip_ct_tcp."""

    seen: list[TcpSeen] = field(default_factory=lambda: [TcpSeen(), TcpSeen()])
    state: int = NONE
    last_dir: int = 0
    retrans: int = 0
    last_index: int = NONE_SET
    last_seq: int = 0
    last_ack: int = 0
    last_end: int = 0
    last_win: int = 0
    last_wscale: int = 0
    last_flags: int = 0


def tcp_can_early_drop(ct: NfConn) -> bool:
    """tcp_can_early_drop: an ASSURED connection that is closing may still be evicted (gc_worker
    when the table is nearly full)."""
    st = ct.proto
    return st is not None and st.state in (FIN_WAIT, LAST_ACK, TIME_WAIT, CLOSE, CLOSE_WAIT)


def get_conntrack_index(flags: int) -> int:
    if flags & TH_RST:
        return RST_SET
    if flags & TH_SYN:
        return SYNACK_SET if flags & TH_ACK else SYN_SET
    if flags & TH_FIN:
        return FIN_SET
    if flags & TH_ACK:
        return ACK_SET
    return NONE_SET


def _after(a: int, b: int) -> bool:
    """after(seq1, seq2): (s32)(seq2 - seq1) < 0."""
    return ((b - a) & 0xFFFFFFFF) >= 0x80000000


def _before(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


class _Th:
    """The fields of the TCP header the tracker reads."""

    __slots__ = ("seq", "ack_seq", "doff", "flags", "window", "options", "datalen")

    def __init__(self, payload: bytearray):
        self.seq, self.ack_seq = struct.unpack_from("!II", payload, 4)
        self.doff = (payload[12] >> 4) * 4
        self.flags = payload[13]
        self.window = struct.unpack_from("!H", payload, 14)[0]
        self.options = bytes(payload[20:self.doff]) if self.doff > 20 else b""
        self.datalen = len(payload) - self.doff

    def end(self) -> int:
        """segment_seq_plus_len."""
        return (self.seq + self.datalen + (1 if self.flags & TH_SYN else 0)
                + (1 if self.flags & TH_FIN else 0)) & 0xFFFFFFFF


def _options(th: _Th, st: TcpSeen) -> None:
    """tcp_options: window scale and SACK-permitted."""
    opts = th.options
    if not opts:
        return
    st.td_scale = 0
    st.flags &= FLAG_BE_LIBERAL
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if n - i < 2:
            return
        size = opts[i + 1]
        if size < 2 or size > n - i:
            return
        if kind == 4 and size == 2:
            st.flags |= FLAG_SACK_PERM
        elif kind == 3 and size == 3:
            st.td_scale = min(opts[i + 2], 14)
            st.flags |= FLAG_WINDOW_SCALE
        i += size


def _sack(th: _Th, sack: int) -> int:
    """tcp_sack: highest right edge among SACK blocks."""
    opts = th.options
    if not opts or (len(opts) == 12 and opts[:4] == b"\x01\x01\x08\x0a"):
        return sack
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:
            return sack
        if kind == 1:
            i += 1
            continue
        if n - i < 2:
            return sack
        size = opts[i + 1]
        if size < 2 or size > n - i:
            return sack
        if kind == 5 and size >= 10 and (size - 2) % 8 == 0:
            for j in range(i + 2, i + size, 8):
                edge = struct.unpack_from("!I", opts, j + 4)[0]
                if _after(edge, sack):
                    sack = edge
            return sack
        i += size
    return sack


def tcp_error(table: ConntrackTable, skb, th: _Th, hook: int) -> str | None:
    """Malformed segments: truncated header, bad checksum (PRE_ROUTING), invalid flag combination."""
    if th.doff < 20 or len(skb.payload) < th.doff:
        return "truncated packet"
    if table.sysctl["nf_conntrack_checksum"] and hook == NF_INET_PRE_ROUTING:
        if nf_ip_checksum(skb, 6):
            return "bad checksum"
    if (th.flags & ~(TH_ECE | TH_CWR | TH_PSH)) not in TCP_VALID_FLAGS:
        return "invalid tcp flag combination"
    return None


def _init_sender(sender: TcpSeen, receiver: TcpSeen, th: _Th, end: int, win: int, direction: int) -> None:
    """tcp_init_sender."""
    sender.td_end = sender.td_maxend = end
    sender.td_maxwin = win or 1
    _options(th, sender)
    if direction == IP_CT_DIR_REPLY and not (sender.flags & FLAG_WINDOW_SCALE
                                             and receiver.flags & FLAG_WINDOW_SCALE):
        sender.td_scale = receiver.td_scale = 0


def tcp_new(table: ConntrackTable, ct: NfConn, th: _Th) -> str | None:
    """First packet of a connection: SYN, or mid-stream pickup when tcp_loose allows it."""
    new_state = TCP_CONNTRACKS[0][get_conntrack_index(th.flags)][NONE]
    if new_state >= TCP_CONNTRACK_MAX:
        return "invalid new"
    st = TcpState()
    s0 = st.seen[0]
    s0.td_end = th.end()
    s0.td_maxwin = th.window or 1
    if new_state == SYN_SENT:
        s0.td_maxend = s0.td_end
        _options(th, s0)
    elif not table.sysctl["nf_conntrack_tcp_loose"]:
        return "not picking up mid-stream (nf_conntrack_tcp_loose=0)"
    else:
        s0.td_maxend = (s0.td_end + s0.td_maxwin) & 0xFFFFFFFF
        s0.flags = st.seen[1].flags = FLAG_SACK_PERM | FLAG_BE_LIBERAL
    ct.proto = st
    return None


def tcp_in_window(table: ConntrackTable, ct: NfConn, direction: int, index: int, th: _Th) -> tuple[str, str]:
    """Window tracking; ('accept'|'ignore'|'invalid', why)."""
    state: TcpState = ct.proto
    sender, receiver = state.seen[direction], state.seen[1 - direction]
    seq = th.seq
    ack = sack = th.ack_seq
    win_raw = win = th.window
    end = th.end()
    if receiver.flags & FLAG_SACK_PERM:
        sack = _sack(th, sack)
    if sender.td_maxwin == 0:
        if th.flags & TH_SYN:
            _init_sender(sender, receiver, th, end, win, direction)
            if not th.flags & TH_ACK:
                return "accept", ""
        else:
            sender.td_end = end
            swin = (win << sender.td_scale) & 0xFFFFFFFF
            sender.td_maxwin = swin or 1
            sender.td_maxend = (end + sender.td_maxwin) & 0xFFFFFFFF
            if receiver.td_maxwin == 0:
                receiver.td_end = receiver.td_maxend = sack
            elif sack == (receiver.td_end + 1) & 0xFFFFFFFF:
                receiver.td_end = (receiver.td_end + 1) & 0xFFFFFFFF
    elif th.flags & TH_SYN and _after(end, sender.td_end) and state.state in (SYN_SENT, SYN_RECV):
        _init_sender(sender, receiver, th, end, win, direction)
        if direction == IP_CT_DIR_REPLY and not th.flags & TH_ACK:
            return "accept", ""
    if not th.flags & TH_ACK:
        ack = sack = receiver.td_end
    elif th.flags & (TH_ACK | TH_RST) == TH_ACK | TH_RST and ack == 0:
        ack = sack = receiver.td_end
    if th.flags & TH_RST and seq == 0 and state.state == SYN_SENT:
        seq = end = sender.td_end
    liberal = sender.flags & FLAG_BE_LIBERAL or table.sysctl["nf_conntrack_tcp_be_liberal"]
    res = tcp_window_update(state, sender, receiver, direction, index, th.flags, seq, ack, sack, end, win_raw)
    if not res:
        return "accept", ""
    res, why = _window_verdict(sender, receiver, seq, end, sack)
    if res == "overshot":
        sender.td_end = end
        sender.flags |= FLAG_DATA_UNACKNOWLEDGED
        res = "ignore"
    return ("accept", "") if liberal else (res, why)


def _window_test(sender: TcpSeen, receiver: TcpSeen, seq: int, end: int, sack: int) -> int:
    """The four in-window tests of tcp_in_window: 0 when all pass, else the number of the first
    that fails.  before(a, b) is ((a - b) & M) >= 2**31 and after(a, b) is ((b - a) & M) >= 2**31,
    written out inline: this runs for every tracked segment of a replay."""
    m = 0xFFFFFFFF
    r_end, r_maxwin = receiver.td_end, receiver.td_maxwin
    maxackwin = sender.td_maxwin if sender.td_maxwin > 66000 else 66000
    if ((seq - sender.td_maxend - 1) & m) < 0x80000000:                # !before(seq, maxend + 1)
        return 1
    if ((sack - r_end - 1) & m) < 0x80000000:                          # !before(sack, r_end + 1)
        return 2
    if r_maxwin and ((sender.td_end - r_maxwin - 1 - end) & m) < 0x80000000:   # !after(end, ...)
        return 3
    if ((r_end - maxackwin - 1 - sack) & m) < 0x80000000:              # !after(sack, ...)
        return 4
    return 0


def _window_verdict(sender: TcpSeen, receiver: TcpSeen, seq: int, end: int, sack: int) -> tuple[str, str]:
    """Why a segment is not in window (_window_test's number as tcp_in_window's result and log)."""
    m = 0xFFFFFFFF
    s_end, s_maxend, r_end, r_maxwin = sender.td_end, sender.td_maxend, receiver.td_end, receiver.td_maxwin
    test = _window_test(sender, receiver, seq, end, sack)
    if test == 1:
        maxackwin = sender.td_maxwin if sender.td_maxwin > 66000 else 66000
        overshot = (end - s_maxend + 1) & m
        ack_ok = _after(sack, (r_end - maxackwin - 1) & m)
        in_recv_win = r_maxwin and _after(end, (s_end - r_maxwin - 1) & m)
        if in_recv_win and ack_ok and overshot <= r_maxwin and _before(sack, (r_end + 1) & m):
            return "overshot", f"{overshot} bytes more than expected"
        return "invalid", f"SEQ is over upper bound {(s_maxend + 1) & m} (over the window of the receiver)"
    if test == 2:
        return "invalid", f"ACK is over upper bound {(r_end + 1) & m} (ACKed data not seen yet)"
    if test == 3:
        return "ignore", "SEQ is under lower bound (already ACKed data retransmitted)"
    if test == 4:
        return "ignore", "ignored ACK under lower bound (possible overly delayed)"
    return "", ""


def tcp_window_update(state: TcpState, sender: TcpSeen, receiver: TcpSeen, direction: int, index: int,
                      flags: int, seq: int, ack: int, sack: int, end: int, win_raw: int) -> bool:
    """The in-window tests of tcp_in_window and, when they pass, its in-window branch that
    advances both directions' window data.  True (nothing changed) when the segment is not
    in window: _window_verdict then says why.  Runs for every tracked segment of a replay,
    so before/after are written out inline on local copies."""
    if _window_test(sender, receiver, seq, end, sack):
        return True
    m = 0xFFFFFFFF
    s_end, s_maxend, s_maxwin = sender.td_end, sender.td_maxend, sender.td_maxwin
    r_end, r_maxend, r_maxwin = receiver.td_end, receiver.td_maxend, receiver.td_maxwin
    win = win_raw if flags & TH_SYN else (win_raw << sender.td_scale) & m
    swin = (win + (sack - ack)) & m
    if s_maxwin < swin:
        sender.td_maxwin = swin
    s_flags = sender.flags
    if ((s_end - end) & m) >= 0x80000000:                             # after(end, td_end)
        sender.td_end = end
        s_flags |= FLAG_DATA_UNACKNOWLEDGED
    if flags & TH_ACK:
        if not s_flags & FLAG_MAXACK_SET:
            sender.td_maxack = ack
            s_flags |= FLAG_MAXACK_SET
        elif ((sender.td_maxack - ack) & m) >= 0x80000000:           # after(ack, td_maxack)
            sender.td_maxack = ack
    sender.flags = s_flags
    if r_maxwin != 0 and ((s_maxend - end) & m) >= 0x80000000:
        receiver.td_maxwin = (r_maxwin + end - s_maxend) & m
    if ((r_maxend - 1 - sack - win) & m) >= 0x80000000:               # after(sack + win, r_maxend - 1)
        receiver.td_maxend = (sack + win + (win == 0)) & m
    if ack == r_end:
        receiver.flags &= ~FLAG_DATA_UNACKNOWLEDGED
    if index == ACK_SET:
        if state.last_seq == seq and state.last_dir == direction and state.last_ack == ack \
                and state.last_end == end and state.last_win == win_raw:
            state.retrans += 1
        else:
            state.last_dir, state.last_seq, state.last_ack = direction, seq, ack
            state.last_end, state.last_win, state.retrans = end, win_raw, 0
    return False


def _timeout(table: ConntrackTable, state: int) -> int:
    return table.sysctl[_TIMEOUT_SYSCTLS[state]]


def tcp_timeout(table: ConntrackTable, st: TcpState, index: int, new_state: int) -> int:
    """The timeout nf_conntrack_tcp_packet refreshes with: the state's, shortened by retransmissions,
    RST, unacknowledged data or a zero window."""
    sysctl = table.sysctl
    timeout = sysctl[_TIMEOUT_SYSCTLS[new_state]]
    retrans = sysctl["nf_conntrack_tcp_timeout_max_retrans"]
    if st.retrans >= sysctl["nf_conntrack_tcp_max_retrans"] and timeout > retrans:
        return retrans
    if index == RST_SET:
        return sysctl["nf_conntrack_tcp_timeout_close"]
    seen = st.seen
    if (seen[0].flags | seen[1].flags) & FLAG_DATA_UNACKNOWLEDGED:
        unack = sysctl["nf_conntrack_tcp_timeout_unacknowledged"]
        if timeout > unack:
            return unack
    if st.last_win == 0 and timeout > retrans:
        return retrans
    return timeout


def nf_conntrack_tcp_packet(table: ConntrackTable, ct: NfConn, skb, ctinfo: int, hook: int) -> int:
    """Advance the TCP state; <= 0 means invalid (-NF_REPEAT: reopen, look up again)."""
    ctx = skb.ctx
    if len(skb.payload) < 20:
        return _log(ctx, -NF_ACCEPT, "truncated packet")
    th = _Th(skb.payload)
    why = tcp_error(table, skb, th, hook)
    if why:
        return _log(ctx, -NF_ACCEPT, why)
    if not ct.status & IPS_CONFIRMED and ct.proto is None:
        why = tcp_new(table, ct, th)
        if why:
            return _log(ctx, -NF_ACCEPT, why)
    st: TcpState = ct.proto
    old_state = st.state
    direction = ctinfo2dir(ctinfo)
    index = get_conntrack_index(th.flags)
    new_state = TCP_CONNTRACKS[direction][index][old_state]
    skip_window = False
    if new_state == SYN_SENT and old_state >= TIME_WAIT:
        if (st.seen[direction].flags | st.seen[1 - direction].flags) & FLAG_CLOSE_INIT or \
                (st.last_dir == direction and st.last_index == RST_SET):
            if table.kill(ct):
                return _log(ctx, -NF_REPEAT, f"reopening closed connection ({STATE_NAMES[old_state]})")
            return NF_DROP
        new_state = IGNORE
    if new_state == IGNORE:
        if (index == SYNACK_SET and st.last_index == SYN_SET and st.last_dir != direction
                and th.ack_seq == st.last_end):
            old_state, new_state = SYN_SENT, SYN_RECV
            ld = st.seen[st.last_dir]
            ld.td_end = ld.td_maxend = st.last_end
            ld.td_maxwin = st.last_win or 1
            ld.td_scale = st.last_wscale
            st.last_flags &= ~EXP_CHALLENGE_ACK
            ld.flags = st.last_flags
            other = st.seen[direction]
            other.td_end = other.td_maxend = other.td_maxwin = other.td_maxack = other.td_scale = 0
            other.flags &= FLAG_BE_LIBERAL
        else:
            st.last_index, st.last_dir, st.last_seq = index, direction, th.seq
            st.last_end, st.last_win = th.end(), th.window
            if index == SYN_SET and direction == IP_CT_DIR_ORIGINAL:
                seen = TcpSeen()
                _options(th, seen)
                st.last_flags = st.last_wscale = 0
                if seen.flags & FLAG_WINDOW_SCALE:
                    st.last_flags |= FLAG_WINDOW_SCALE
                    st.last_wscale = seen.td_scale
                if seen.flags & FLAG_SACK_PERM:
                    st.last_flags |= FLAG_SACK_PERM
                if old_state == LAST_ACK:
                    st.last_flags |= EXP_CHALLENGE_ACK
            if old_state == SYN_SENT and index == ACK_SET and direction == IP_CT_DIR_REPLY:
                st.last_ack = th.ack_seq
            if ctx.record:
                ctx.step("nf_conntrack_tcp_packet", state=STATE_NAMES[old_state], result="ignored",
                         index=index, dir=direction)
            return NF_ACCEPT
    elif new_state == TCP_CONNTRACK_MAX:
        return _log(ctx, -NF_ACCEPT, f"packet (index {index}) in dir {direction} invalid, "
                                     f"state {STATE_NAMES[old_state]}")
    elif new_state == TIME_WAIT:
        if (old_state == LAST_ACK and index == ACK_SET and st.last_dir != direction
                and st.last_index == SYN_SET and st.last_flags & EXP_CHALLENGE_ACK):
            st.last_flags &= ~EXP_CHALLENGE_ACK
            if ctx.record:
                ctx.step("nf_conntrack_tcp_packet", state=STATE_NAMES[old_state], result="challenge-ack ignored")
            return NF_ACCEPT
    elif new_state == SYN_SENT2:
        st.last_flags |= SIMULTANEOUS_OPEN
    elif new_state == SYN_RECV:
        if direction == IP_CT_DIR_REPLY and index == ACK_SET and st.last_flags & SIMULTANEOUS_OPEN:
            new_state = ESTABLISHED
    elif new_state == CLOSE and index == RST_SET:
        res = _rst_checks(table, ct, st, th, direction, old_state)
        if res == "invalid":
            return _log(ctx, -NF_ACCEPT, "invalid rst")
        if res.startswith("keep"):
            new_state = old_state
        skip_window = res.endswith("in_window")
    if not skip_window:
        res, why = tcp_in_window(table, ct, direction, index, th)
        if res == "ignore":
            if ctx.record:
                ctx.step("nf_conntrack_tcp_packet", state=STATE_NAMES[old_state], result="ignored", why=why)
            return NF_ACCEPT
        if res == "invalid":
            return _log(ctx, -NF_ACCEPT, why)
    st.last_index, st.last_dir = index, direction
    st.state = new_state
    if old_state != new_state and new_state == FIN_WAIT:
        st.seen[direction].flags |= FLAG_CLOSE_INIT
    timeout = tcp_timeout(table, st, index, new_state)
    now = ctx.now
    if ctx.record:
        ctx.step("nf_conntrack_tcp_packet", state=STATE_NAMES[old_state], new_state=STATE_NAMES[new_state],
                 timeout=timeout)
    if not ct.status & IPS_SEEN_REPLY:
        if th.flags & TH_RST:
            # Only reply is a RST: nf_ct_kill_acct, the packet itself is accepted.
            table.kill(ct)
            if ctx.record:
                ctx.step("nf_ct_kill_acct", reason="RST before any reply")
            return NF_ACCEPT
        if index == SYN_SET and old_state == SYN_SENT:
            return NF_ACCEPT      # SYN retransmit does not renew the timeout
        if new_state == ESTABLISHED and timeout > _timeout(table, UNACK):
            timeout = _timeout(table, UNACK)
        if old_state == new_state == ESTABLISHED and index == ACK_SET and ctx.learn is not None:
            ctx.learn.tracker = "tcp"     # picked up mid-stream, [UNREPLIED]: the cache clamps as above
    elif not ct.status & IPS_ASSURED and old_state in (SYN_RECV, ESTABLISHED) and new_state == ESTABLISHED:
        ct.status |= IPS_ASSURED
    elif old_state == new_state == ESTABLISHED and index == ACK_SET and ctx.learn is not None:
        ctx.learn.tracker = "tcp"     # the steady state the replay cache re-runs (pathtrace/flowcache.py)
    table.refresh(ct, now, timeout)
    return NF_ACCEPT


def _rst_checks(table: ConntrackTable, ct: NfConn, st: TcpState, th: _Th, direction: int, old_state: int) -> str:
    """The RST cases of nf_conntrack_tcp_packet.

    Returns 'invalid', 'in_window' (skip window check), 'keep' (stay in the old state,
    window checked), 'keep_in_window' or '' (go to CLOSE after the window check).
    """
    if old_state in (FIN_WAIT, LAST_ACK, TIME_WAIT, CLOSE, CLOSE_WAIT):   # tcp_can_early_drop
        return "in_window"
    keep = False
    other = st.seen[1 - direction]
    if other.flags & FLAG_MAXACK_SET and st.last_index != SYN_SET:
        seq = th.seq
        established = old_state == ESTABLISHED and bool(ct.status & IPS_ASSURED)
        if seq == 0 and not established:
            return ""
        if _before(seq, other.td_maxack) and not table.sysctl["nf_conntrack_tcp_ignore_invalid_rst"]:
            return "invalid"
        if not established or seq == other.td_maxack:
            return ""
        if st.last_index == ACK_SET and st.last_dir == direction and seq == st.last_end:
            return ""
        keep = True
    if ((ct.status & IPS_SEEN_REPLY and st.last_index == SYN_SET)
            or (not ct.status & IPS_ASSURED and st.last_index == ACK_SET)) and th.ack_seq == st.last_end:
        return "keep_in_window" if keep else "in_window"
    if old_state == SYN_SENT and st.last_index == ACK_SET and st.last_dir == IP_CT_DIR_REPLY \
            and th.seq == st.last_ack:
        return "keep_in_window" if keep else "in_window"
    return "keep" if keep else ""


def _log(ctx, ret: int, why: str) -> int:
    """nf_ct_l4proto_log_invalid: the reason is kept in the path."""
    if ctx.record:
        ctx.step("nf_conntrack_tcp_packet", result="invalid" if ret == -NF_ACCEPT else "repeat", reason=why)
    return ret


def tcp_state_name(ct: NfConn) -> str:
    return STATE_NAMES[ct.proto.state] if isinstance(ct.proto, TcpState) else "NONE"


def nf_ct_tcp_shift_seq(ct, direction: int, delta: int) -> None:
    """Move what conntrack remembers of `direction`'s sequence space by `delta`.

    The model's own SYN-ACK carried a placeholder ISN (the host's real one is random); once the
    capture reveals the real ISN, conntrack must have seen the real one, as the kernel's did: the
    sender's td_end/td_maxend, the other side's highest ACK, and the last packet's numbers."""
    state = ct.proto
    if not isinstance(state, TcpState) or not delta:
        return
    mask = 0xFFFFFFFF
    mine, other = state.seen[direction], state.seen[1 - direction]
    mine.td_end = (mine.td_end + delta) & mask
    mine.td_maxend = (mine.td_maxend + delta) & mask
    if other.td_maxack:
        other.td_maxack = (other.td_maxack + delta) & mask
    if state.last_dir == direction:
        state.last_seq = (state.last_seq + delta) & mask
        state.last_end = (state.last_end + delta) & mask
    elif state.last_ack:
        state.last_ack = (state.last_ack + delta) & mask
