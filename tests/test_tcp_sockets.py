"""TCP sockets against what a real 6.18 kernel sent.

Expected values were recorded with a listener (python socket, accept + read until EOF, close
0.2 s later) in one namespace and a Linux client in another over veth, tcpdump on the
server's side, both namespaces with tcp_rmem "4096 131072 6291456" (a new namespace's default
on a stock kernel):

    SYSCTLS="net.ipv4.tcp_rmem=4096 131072 6291456[,net.ipv4.tcp_sack=0...]" python3 lab.py 3:100:0.1 b.pcap
    tcpdump -nn -tt -x -r b.pcap

(`lab.py SEGS:SIZE:GAP` is `_lab_capture` below, kept as the live test.)  Client SYN:
win 64240, [mss 1460,sackOK,TS,nop,wscale 10].
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

from helpers import Rig, fns
from pathtrace.net.ipv4.tcp_output import tcp_sendmsg_from_capture
from pathtrace.net.ipv4.tcp_ipv4 import tcp_observe_sent
from pathtrace.net.core.skbuff import SkBuff
from pathtrace.packet import build
from pathtrace.trace import PacketContext

ME, PEER = "10.9.0.1", "10.9.0.2"


def host(mtu: int = 1500, sysctl: str = "") -> str:
    return f"""
interfaces:
  - name: eth0
    driver: veth
    mac: 02:00:00:00:00:01
    addresses: [{ME}/24]
    mtu: {mtu}
neighbours:
  - {PEER} dev eth0 lladdr 02:aa:aa:aa:aa:01 reachable
sockets:
  - tcp 0.0.0.0:80
{sysctl}"""


def client_syn_options(tsval: int = 1000, mss: int = 1460) -> bytes:
    """The Linux client's SYN options: mss, sackOK, TS, nop, wscale 10."""
    return struct.pack("!BBHBBBBIIBBBB", 2, 4, mss, 4, 2, 8, 10, tsval, 0, 1, 3, 3, 10)


def ts_opt(tsval: int, tsecr: int) -> bytes:
    return struct.pack("!BBBBII", 1, 1, 8, 10, tsval, tsecr)


def tcp_of(frame: bytes) -> bytes:
    ip = frame[14:]
    return ip[(ip[0] & 15) * 4:]


def fields(frame: bytes) -> dict:
    t = tcp_of(frame)
    seq, ack = struct.unpack("!II", t[4:12])
    opts = t[20:(t[12] >> 4) * 4]
    out = {"flags": t[13], "seq": seq, "ack": ack, "win": struct.unpack("!H", t[14:16])[0], "opts": opts,
           "len": len(frame) - 14}
    if len(opts) >= 12 and opts[2] == 8:
        out["tsval"], out["tsecr"] = struct.unpack("!II", opts[4:12])
    return out


def synack(sysctl: str = "", mtu: int = 1500, mss: int = 1460):
    import tempfile
    from pathlib import Path
    rig = Rig(Path(tempfile.mkdtemp()), host(mtu, sysctl))
    rec = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "S", seq=5000, window=64240,
                                            options=client_syn_options(mss=mss)))
    assert rec.verdict == "LOCAL_DELIVER"
    return rig, rec, fields(rec.emitted[0].frame)


# (sysctls, IP length, window, option bytes with TSval/TSecr zeroed) as the kernel sent them
KERNEL_SYNACKS = [
    ("", 60, 65160, "020405b4" "0402080a" "00000000" "000003e8" "01030307"),
    ("net.ipv4.tcp_sack: 0", 60, 65160, "020405b4" "0101080a" "00000000" "000003e8" "01030307"),
    ("net.ipv4.tcp_timestamps: 0", 52, 64240, "020405b4" "01010402" "01030307"),
    ("net.ipv4.tcp_window_scaling: 0", 56, 65160, "020405b4" "0402080a" "00000000" "000003e8"),
    ("net.ipv4.tcp_sack: 0\n  net.ipv4.tcp_timestamps: 0", 48, 64240, "020405b4" "01030307"),
]


@pytest.mark.parametrize("sysctls,length,window,opts", KERNEL_SYNACKS, ids=["default", "no-sack", "no-ts", "no-ws",
                                                                            "no-sack-no-ts"])
def test_synack_options_as_the_kernel_builds_them(sysctls, length, window, opts):
    _, rec, f = synack(f"sysctl:\n  {sysctls}" if sysctls else "")
    got = bytearray(f["opts"])
    if got[4:6] == b"\x08\x0a" or got[6:8] == b"\x08\x0a":
        got[8:12] = b"\0\0\0\0"                # TSval: random per-connection offset
    assert (f["len"], f["win"], got.hex()) == (length, window, opts)
    assert f["flags"] == 0x12 and f["ack"] == 5001


def test_synack_mss_from_own_mtu_window_from_ts_reduced_mss():
    # server MTU 9000, client MTU 1400: the kernel advertised mss 8960, win 62636 (7 x 8948), wscale 7
    _, _, f = synack(mtu=9000, mss=1360)
    assert f["opts"][:4] == bytes.fromhex("02042300") and f["win"] == 62636 and f["opts"][-1] == 7


def _handshake(rig, real_isn: int, t_syn_tsval: int = 905740634):
    """SYN, then the client's ACK of the REAL host's ISN and TSval (as a capture shows them)."""
    rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "S", seq=5000, window=64240,
                                      options=client_syn_options(tsval=1000)))
    return rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "A", seq=5001, ack=real_isn + 1, window=63,
                                             options=ts_opt(1001, t_syn_tsval)), dt=0.0001)


def test_first_ack_of_the_real_isn_completes_the_handshake(tmp_path):
    rig = Rig(tmp_path, host())
    rec = _handshake(rig, 1171821405)
    assert rec.verdict == "LOCAL_DELIVER" and rec.emitted == []
    assert "tcp_child_process" in fns(rec) and "tcp_v4_send_reset" not in fns(rec)
    conn = next(iter(rig.net.tcp_conns.values()))
    assert (conn.state, conn.iss, conn.snd_nxt) == ("ESTABLISHED", 1171821405, 1171821406)


def test_quick_ack_then_delayed_ack_of_fin(tmp_path):
    """Kernel (b.pcap): data at +100 ms ACKed at once (win 509, TSval +100); the FIN 400 ms later
    ACKed 40.7 ms after it (CLOSE_WAIT is interactive mode: the ACK waits ato = 40 ms)."""
    rig = Rig(tmp_path, host())
    isn = 3371953277
    _handshake(rig, isn, t_syn_tsval=4075045606)
    data = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "PA", seq=5001, ack=isn + 1, window=63,
                                             options=ts_opt(1101, 4075045606), payload=b"x" * 100), dt=0.1)
    (ack,) = data.emitted
    f = fields(ack.frame)
    assert (f["flags"], f["seq"], f["ack"], f["win"], f["len"]) == (0x10, isn + 1, 5101, 509, 52)
    assert f["tsecr"] == 1101 and f["tsval"] == 4075045606 + 100
    assert "tcp_send_ack" in fns(data)
    fin = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "FA", seq=5101, ack=isn + 1, window=63,
                                            options=ts_opt(1502, 4075045706)), dt=0.4)
    assert fin.emitted == [] and "tcp_send_delayed_ack" in fns(fin)
    assert rig.net.neigh.clock.earliest == pytest.approx(rig.t + 0.040)
    later = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "A", seq=5102, ack=isn + 1, window=63,
                                              options=ts_opt(1700, 4075045706)), dt=0.2)
    delayed = [fields(e.frame) for e in later.emitted]
    assert delayed and delayed[0]["ack"] == 5102 and delayed[0]["win"] == 509
    assert delayed[0]["tsval"] == 4075045606 + 100 + 400 + 40
    assert "tcp_delack_timer_handler" in fns(later)


def test_duplicate_data_gets_dsack_and_old_data_drop(tmp_path):
    rig = Rig(tmp_path, host())
    isn = 7
    _handshake(rig, isn)
    seg = dict(seq=5001, ack=isn + 1, window=63, options=ts_opt(1101, 905740634), payload=b"y" * 10)
    rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "PA", **seg), dt=0.01)
    dup = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "PA", **seg), dt=0.01)
    assert (dup.verdict, dup.reason) == ("DROP", "TCP_OLD_DATA")
    f = fields(dup.emitted[0].frame)
    assert f["ack"] == 5011 and f["opts"][12:16] == bytes((1, 1, 5, 10))
    assert struct.unpack("!II", f["opts"][16:24]) == (5001, 5011)


def test_rst_to_request_sock_frees_it_not_specified(tmp_path):
    rig = Rig(tmp_path, host())
    rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "S", seq=5000, options=client_syn_options()))
    rst = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "R", seq=5001))
    assert (rst.verdict, rst.reason) == ("DROP", "NOT_SPECIFIED") and rig.net.tcp_conns == {}


def test_retransmitted_syn_gets_the_synack_again(tmp_path):
    rig = Rig(tmp_path, host())
    first = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "S", seq=5000, options=client_syn_options()))
    again = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "S", seq=5000, options=client_syn_options()),
                     dt=1.0)
    assert fields(again.emitted[0].frame)["seq"] == fields(first.emitted[0].frame)["seq"]
    assert "tcp_rtx_synack" in fns(again)


def test_host_sent_fin_moves_to_last_ack_and_final_ack_closes(tmp_path):
    rig = Rig(tmp_path, host())
    isn = 100
    _handshake(rig, isn)
    rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "FA", seq=5001, ack=isn + 1, window=63,
                                      options=ts_opt(1200, 905740634)), dt=0.01)
    hdr = build.tcp_packet(ME, PEER, 80, 51878, "FA", seq=isn + 1, ack=5002, window=509,
                           options=ts_opt(905740900, 1200))[20:]
    tcp_observe_sent(rig.net, 0x0A090001, 80, 0x0A090002, 51878, hdr, 0, now=rig.t + 0.2)
    conn = next(iter(rig.net.tcp_conns.values()))
    assert conn.state == "LAST_ACK" and conn.delack_timer is None     # the FIN carried the owed ACK
    last = rig.send("eth0", build.tcp_packet(PEER, ME, 51878, 80, "A", seq=5002, ack=isn + 2, window=63,
                                             options=ts_opt(1400, 905740900)), dt=0.3)
    assert last.verdict == "LOCAL_DELIVER" and "tcp_done" in fns(last) and rig.net.tcp_conns == {}


def _host_skb(ctx: PacketContext, pkt: bytes) -> SkBuff:
    """An skb for a segment the capture shows the host sending (IP header as captured)."""
    from pathtrace.net.core.skbuff import Iphdr
    v, tos, tot, ident, frag, ttl, proto, check, sa, da = struct.unpack("!BBHHHBBHII", pkt[:20])
    iph = Iphdr(v >> 4, v & 15, tos, tot, ident, frag, ttl, proto, check, sa, da)
    return SkBuff(ctx=ctx, iph=iph, payload=bytearray(pkt[20:]))


def test_outbound_connection_client_side(tmp_path):
    """The host's own SYN enters through tcp_v4_connect; the server's SYN-ACK is ACKed at once."""
    rig = Rig(tmp_path, host())
    ctx = PacketContext(rig.t, net=rig.net)
    skb = _host_skb(ctx, build.tcp_packet(ME, PEER, 40000, 443, "S", seq=777, window=64240, df=True, id=4242,
                                          options=client_syn_options(50)))
    tcp_sendmsg_from_capture(skb)
    names = [s.fn for s in ctx.steps]
    assert names[:3] == ["__sys_connect", "tcp_v4_connect", "tcp_connect"] and "ip_queue_xmit" in names
    assert skb.verdict == "TRANSMIT" and len(ctx.emitted) == 1
    assert next(iter(rig.net.tcp_conns.values())).state == "SYN_SENT"
    rec = rig.send("eth0", build.tcp_packet(PEER, ME, 443, 40000, "SA", seq=9000, ack=778, window=65160,
                                            options=struct.pack("!BBH", 2, 4, 1460) + bytes((4, 2)) +
                                            struct.pack("!BBII", 8, 10, 123, 50) + bytes((1, 3, 3, 7))), dt=0.01)
    assert rec.verdict == "LOCAL_DELIVER" and "tcp_finish_connect" in fns(rec)
    f = fields(rec.emitted[0].frame)
    assert (f["flags"], f["seq"], f["ack"], f["tsecr"]) == (0x10, 778, 9001, 123)
    assert rec.emitted[0].frame[14 + 4:14 + 6] == struct.pack("!H", 4243)    # the socket's IP ID counter


def test_tcp_timer_survives_neighbour_recomputation(tmp_path):
    rig = Rig(tmp_path, host())
    from pathtrace.net.ipv4.tcp_timer import arm_delack
    from pathtrace.net.ipv4.tcp_sock import TcpConn
    conn = TcpConn(state="ESTABLISHED", key=(1, 2, 3, 4))
    rig.net.tcp_conns[conn.key] = conn
    arm_delack(rig.net, conn, 50.0)
    assert rig.net.neigh.clock.earliest == 50.0
    rig.net.neigh.pending_timers(60.0)         # recomputes the neighbour minimum
    assert rig.net.neigh.clock.earliest == 50.0


# ---- live: the same experiment against this machine's kernel -------------------------------------------

SERVER_PY = r'''
import socket, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("0.0.0.0", 80)); l.listen(8)
c, _ = l.accept()
while c.recv(65536):
    pass
time.sleep(0.2)
c.close()
time.sleep(0.5)
'''
CLIENT_PY = r'''
import socket, time
s = socket.create_connection(("10.9.0.1", 80))
time.sleep(0.1)
for i in range(3):
    s.send(b"x" * 100); time.sleep(0.1)
time.sleep(0.3)
s.shutdown(socket.SHUT_WR)
time.sleep(0.5)
s.close()
'''


def _live_skip() -> str | None:
    if os.environ.get("PATHTRACE_LIVE") != "1" and os.environ.get("CI") != "true":
        return "live kernel checks run with PATHTRACE_LIVE=1 or CI=true"
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("ip"):
        return "needs root, ip and tcpdump"
    return None


def _lab_capture(path: str) -> list[tuple[float, bytes]]:
    """Server in h1s (10.9.0.1, listener :80), client in h1c; tcpdump on the server's veth."""
    def sh(cmd: str, check: bool = True) -> None:
        subprocess.run(cmd, shell=True, check=check, capture_output=True)
    sh("ip netns del h1s; ip netns del h1c", check=False)
    try:
        sh("ip netns add h1s && ip netns add h1c && ip link add h1a netns h1s type veth peer name h1b netns h1c")
        sh(f"ip -n h1s addr add {ME}/24 dev h1a && ip -n h1s link set h1a up && ip -n h1s link set lo up")
        sh(f"ip -n h1c addr add {PEER}/24 dev h1b && ip -n h1c link set h1b up && ip -n h1c link set lo up")
        sh("ip netns exec h1s sysctl -qw 'net.ipv4.tcp_rmem=4096 131072 6291456'")
        dump = subprocess.Popen(["ip", "netns", "exec", "h1s", "tcpdump", "-i", "h1a", "-U", "-w", path, "tcp"],
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        srv = subprocess.Popen(["ip", "netns", "exec", "h1s", sys.executable, "-c", SERVER_PY])
        time.sleep(0.3)
        subprocess.run(["ip", "netns", "exec", "h1c", sys.executable, "-c", CLIENT_PY], check=True)
        srv.wait(timeout=20)
        time.sleep(0.3)
        dump.terminate()
        dump.wait()
    finally:
        sh("ip netns del h1s; ip netns del h1c", check=False)
    data = open(path, "rb").read()
    out, off = [], 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, off)
        out.append((sec + frac / 1e6, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return out


def _fix_tcp_checksum(ip: bytes) -> bytes:
    """veth leaves the client's TCP checksum partial (offloaded): complete it as the NIC would."""
    from pathtrace.lib.checksum import l4_checksum
    hl = (ip[0] & 15) * 4
    seg = bytearray(ip[hl:])
    seg[16:18] = b"\0\0"
    struct.pack_into("!H", seg, 16, l4_checksum(struct.unpack("!I", ip[12:16])[0], struct.unpack("!I", ip[16:20])[0],
                                                6, bytes(seg)))
    return ip[:hl] + bytes(seg)


def test_model_predicts_the_live_kernels_acks(tmp_path):
    why = _live_skip()
    if why:
        pytest.skip(why)
    frames = _lab_capture(str(tmp_path / "lab.pcap"))
    rig = Rig(tmp_path, host())
    kernel, model = [], []
    me = bytes(map(int, ME.split(".")))
    for ts, frame in frames:
        ip = frame[14:]
        seg = tcp_of(frame)
        if ip[12:16] == me:
            if seg[13] == 0x10 and len(ip) == (ip[0] & 15) * 4 + (seg[12] >> 4) * 4:
                kernel.append(fields(frame))           # a bare ACK: the model must predict it
                continue
            ctx = PacketContext(ts, net=rig.net)
            rig.replayer._run_timers(ctx)
            model += [fields(e.frame) for e in ctx.emitted]
            tcp_observe_sent(rig.net, struct.unpack("!I", ip[12:16])[0], struct.unpack("!H", seg[:2])[0],
                             struct.unpack("!I", ip[16:20])[0], struct.unpack("!H", seg[2:4])[0],
                             seg[:(seg[12] >> 4) * 4], len(seg) - (seg[12] >> 4) * 4, now=ts)
            continue
        rig.t = ts - 0.001
        rec = rig.send("eth0", _fix_tcp_checksum(ip), dt=0.001)
        model += [fields(e.frame) for e in rec.emitted if fields(e.frame)["flags"] == 0x10]
    key = ("flags", "seq", "ack", "win", "tsecr")
    assert [tuple(m[k] for k in key) for m in model] == [tuple(k[x] for x in key) for k in kernel]
    # TSval: the kernel's 1 ms clock against capture timestamps agrees within a tick for immediate ACKs;
    # a delayed ACK leaves when the kernel's timer wheel runs it, up to a few jiffies after ato
    drift = [k["tsval"] - m["tsval"] for m, k in zip(model, kernel)]
    assert all(abs(d) <= 1 for d in drift[:-1]) and 0 <= drift[-1] <= 12, drift


def test_synack_keeps_df_on_a_locked_route_mtu_and_with_ip_no_pmtu_disc(tmp_path) -> None:
    """Measured with pathtrace verify on 6.18: a listener's SYN-ACK carries DF even when the route
    back has `mtu lock` and with net.ipv4.ip_no_pmtu_disc=1 (a reading of ip_dont_fragment alone
    would clear it); the model keeps DF as the kernel does."""
    from helpers import Rig
    from pathtrace.packet import build
    base = """
    name: t
    interfaces:
      - {name: eth0, mac: "02:00:00:00:00:01", addresses: [10.1.0.1/24]}
    neighbours:
      - 10.1.0.2 dev eth0 lladdr 02:00:00:00:00:0a permanent
    sockets:
      - tcp 0.0.0.0:22
    """
    for extra in ("", "routes:\n  - 10.1.0.2/32 dev eth0 mtu lock 1400\n", "sysctl:\n  net.ipv4.ip_no_pmtu_disc: 1\n"):
        rig = Rig(tmp_path, base.rstrip(" ") + "".join(f"    {ln}\n" for ln in extra.splitlines()), emit_frames=True)
        rec = rig.send("eth0", build.tcp_packet("10.1.0.2", "10.1.0.1", 40000, 22, "S", seq=1, window=64240))
        frame = rec.emitted[0].frame
        assert frame[14 + 6] & 0x40, extra
