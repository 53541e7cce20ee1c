"""The conntrack table's expiry queue against the whole-hash sweep it replaced.

`RefTable` below is the table as it was before the queue (a copy kept here, not in the
package): gc walked every hash entry every GC_INTERVAL seconds, len() and entries() walked
the hash too.  Random sequences of insertions, timeout changes in both directions (plain
assignments, as the trackers and the replay cache's fast lanes make them, and refresh() with
and without IPS_FIXED_TIMEOUT), lookups, deletions, forced and periodic gc and time going
backwards run on both; after every step the same entries must be in the hash, listed in the
same order, counted the same, with the same stats and NAT by-source lists.  A replay of
generated traffic (TCP that opens, closes and resets, UDP, ICMP, long silences), with the
replay cache on, must print the same with the queue as with the old sweep patched in.
"""
from __future__ import annotations

import random

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pathtrace.cli import main
from pathtrace.net.netfilter import nf_conntrack_core as core
from pathtrace.net.netfilter.nf_conntrack_core import (
    GC_INTERVAL, IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY, IPS_CONFIRMED, IPS_DYING, IPS_FIXED_TIMEOUT, IPS_SRC_NAT_DONE,
    ConntrackTable, NfConn,
)
from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple
from pathtrace.packet import build


# ---- the reference: the table before the expiry queue ----------------------------------------
def _sweep_gc(self, now: float, force: bool = False) -> int:
    """The old gc: every hash entry looked at, every GC_INTERVAL seconds."""
    if not force and now - self.last_gc < GC_INTERVAL:
        return 0
    self.last_gc = now
    dead = {id(ct): ct for ct, _ in self.hash.values() if ct.timeout <= now}
    for ct in dead.values():
        self.delete(ct, expired=True)
    return len(dead)


class RefConn:
    __slots__ = ("orig", "reply", "status", "timeout", "seq")

    def __init__(self, orig: Tuple, reply: Tuple, status: int, timeout: float):
        self.orig, self.reply, self.status, self.timeout, self.seq = orig, reply, status, timeout, 0


class RefTable:
    def __init__(self) -> None:
        self.hash: dict = {}
        self.bysource: dict = {}
        self.last_gc = 0.0
        self.next_seq = 0
        self.stats = {"insert": 0, "delete": 0, "expired": 0}

    def find(self, t, now):
        hit = self.hash.get(t)
        if hit is None:
            return None
        ct = hit[0]
        if ct.timeout <= now or ct.status & IPS_DYING:
            self.delete(ct, expired=True)
            return None
        return hit

    def insert(self, ct) -> None:
        self.hash[ct.orig] = (ct, IP_CT_DIR_ORIGINAL)
        self.hash[ct.reply] = (ct, IP_CT_DIR_REPLY)
        ct.seq = self.next_seq
        self.next_seq += 1
        self.stats["insert"] += 1

    def delete(self, ct, expired: bool = False) -> bool:
        if not ct.status & IPS_CONFIRMED:
            ct.status |= IPS_DYING
            return False
        for t in (ct.orig, ct.reply):
            hit = self.hash.get(t)
            if hit is not None and hit[0] is ct:
                del self.hash[t]
        if ct.status & IPS_SRC_NAT_DONE:
            key = (ct.orig.proto, ct.orig.src, ct.orig.sport)
            lst = self.bysource.get(key)
            if lst is not None:
                if ct in lst:
                    lst.remove(ct)
                if not lst:
                    del self.bysource[key]
        ct.status |= IPS_DYING
        self.stats["expired" if expired else "delete"] += 1
        return True

    gc = _sweep_gc

    def entries(self, now=None):
        seen = {}
        for ct, direction in self.hash.values():
            if direction == IP_CT_DIR_ORIGINAL and (now is None or ct.timeout > now):
                seen[id(ct)] = ct
        return sorted(seen.values(), key=lambda c: c.seq)

    def __len__(self) -> int:
        return sum(1 for _, d in self.hash.values() if d == IP_CT_DIR_ORIGINAL)


# ---- random operations on both ---------------------------------------------------------------
OPS = st.lists(st.tuples(st.sampled_from(["new", "new", "new", "set", "set", "refresh", "fix", "find", "kill",
                                          "tick", "tick", "back", "gc", "force"]),
                         st.integers(0, 2**31), st.floats(-20.0, 300.0, allow_nan=False)),
               min_size=1, max_size=120)


def _tuple(r: int) -> Tuple:
    """Few addresses and ports, so that tuples repeat, NAT sources share keys and now and then
    a tuple is its own reply (src == dst, sport == dport)."""
    a, b = 1 + r % 3, 1 + (r >> 2) % 3
    p, q = 1 + (r >> 4) % 3, 1 + (r >> 6) % 3
    return Tuple(a, b, 6 if (r >> 8) & 1 else 17, p, q)


def _compare(table: ConntrackTable, ref: RefTable, now: float, pairs: dict) -> None:
    assert {t: (pairs[id(ct)], d) for t, (ct, d) in table.hash.items()} == \
           {t: (c.seq, d) for t, (c, d) in ref.hash.items()}
    assert len(table) == len(ref)
    for at in (None, now):
        assert [c.seq for c in table.entries(at)] == [c.seq for c in ref.entries(at)]
    assert {k: table.stats[k] for k in ref.stats} == ref.stats
    assert {k: [c.seq for c in v] for k, v in table.bysource.items()} == \
           {k: [c.seq for c in v] for k, v in ref.bysource.items()}
    assert table.last_gc == ref.last_gc


@settings(max_examples=400, deadline=None)
@given(ops=OPS)
def test_expiry_queue_deletes_what_the_sweep_deleted(ops) -> None:
    _run(ops)


@pytest.mark.parametrize("seed", range(40))
def test_long_random_runs(seed) -> None:
    """Longer runs than hypothesis builds: timeouts pushed up past their key and later reached,
    pulled down below it, entries living across many gc instants."""
    rng = random.Random(seed)
    kinds = ["new"] * 4 + ["set"] * 4 + ["refresh"] * 2 + ["fix", "find", "kill"] + ["tick"] * 6 + \
            ["back", "gc", "gc", "force"]
    _run([(rng.choice(kinds), rng.randrange(2**31), rng.uniform(-20.0, 300.0)) for _ in range(600)])


def _run(ops) -> None:
    table, ref = ConntrackTable(), RefTable()
    now = 0.0
    live: list[tuple[NfConn, RefConn]] = []
    pairs: dict[int, int] = {}
    for op, r, x in ops:
        if op == "new":
            t = _tuple(r)
            reply = Tuple(t.dst, t.src, t.proto, t.dport, t.sport)
            if (table.find(t, now) or table.find(reply, now)) is not None:
                ref.find(t, now) or ref.find(reply, now)
                _compare(table, ref, now, pairs)
                continue
            assert (ref.find(t, now) or ref.find(reply, now)) is None
            status = IPS_CONFIRMED | (IPS_SRC_NAT_DONE if r & 1 else 0)
            a = NfConn(t, reply, status=status, timeout=now + x, table=table)
            b = RefConn(t, reply, status, now + x)
            table.insert(a)
            ref.insert(b)
            if status & IPS_SRC_NAT_DONE:
                key = (t.proto, t.src, t.sport)
                table.bysource.setdefault(key, []).append(a)
                ref.bysource.setdefault(key, []).append(b)
            pairs[id(a)] = b.seq
            live.append((a, b))
        elif op in ("set", "refresh", "fix", "kill") and live:
            a, b = live[r % len(live)]
            if op == "set":                        # an assignment, as a fast lane makes it
                a.timeout = b.timeout = now + x
            elif op == "refresh":
                table.refresh(a, now, x)
                if not b.status & IPS_FIXED_TIMEOUT:
                    b.timeout = now + x
            elif op == "fix":
                a.status |= IPS_FIXED_TIMEOUT
                b.status |= IPS_FIXED_TIMEOUT
            else:
                assert table.kill(a) == ref.delete(b)
        elif op == "find" and live:
            a, b = live[r % len(live)]
            t = a.reply if r & 2 else a.orig
            hit, want = table.find(t, now), ref.find(t, now)
            assert (hit is None) == (want is None)
        elif op == "tick":
            now += abs(x) / 10
        elif op == "back":                          # capture timestamps are not always in order
            now -= abs(x) / 50
        elif op in ("gc", "force"):
            assert table.gc(now, force=op == "force") == ref.gc(now, force=op == "force")
        _compare(table, ref, now, pairs)


def test_queue_stays_proportional_to_the_live_entries() -> None:
    """Timeouts that keep moving down leave superseded keys behind; the queue is rebuilt before
    they outnumber the live entries (memory flat in the number of refreshes)."""
    table = ConntrackTable()
    cts = []
    for i in range(200):
        t = Tuple(10, 20 + i, 6, 1000 + i, 80)
        ct = NfConn(t, Tuple(20 + i, 10, 6, 80, 1000 + i), status=IPS_CONFIRMED, timeout=1e6, table=table)
        table.insert(ct)
        cts.append(ct)
    for step in range(20000):
        cts[step % 200].timeout = 1e6 - step       # always lower: a new key each time
    assert table._queued <= 2 * len(table.conns) + 1024
    assert table.gc(1e6 - 19999 + 0.5, force=True) == 1
    assert len(table) == 199


def test_only_confirmed_entries_are_queued(tmp_path) -> None:
    """A new flow's entry gets its timeout before it is confirmed: that is not a queue entry;
    the queue holds one key per entry until a timeout moves down."""
    from helpers import Rig
    rig = Rig(tmp_path, HOST)
    for i in range(50):
        rig.send("lan0", build.tcp_packet(f"192.168.1.{2 + i}", "203.0.113.5", 40000 + i, 80, "S", seq=i,
                                          window=64240))
    table = rig.net.nf.conntrack
    assert len(table) == 50 and table._queued == 50


def test_gc_visits_only_what_expires() -> None:
    """The sweep's cost: with 20,000 entries that live for 120 s, a gc every 5 s looks at the
    keys that came due, not at the 20,000 entries."""
    table = ConntrackTable()
    for i in range(20000):
        t = Tuple(10, 1000 + i, 6, 1024 + i % 60000, 80)
        table.insert(NfConn(t, Tuple(1000 + i, 10, 6, 80, 1024 + i % 60000), status=IPS_CONFIRMED,
                            timeout=120.0 + i // 1000, table=table))
    class Counting(dict):
        gets = 0

        def get(self, key, default=None):
            Counting.gets += 1
            return super().get(key, default)

    table.conns = Counting(table.conns)
    for now in range(5, 120, 5):
        table.gc(float(now))
    assert Counting.gets == 0 and len(table) == 20000
    # 6,000 entries looked at and deleted (delete() checks the index once more for each)
    assert table.gc(125.0) == 6000 and Counting.gets == 2 * 6000 and len(table) == 14000


# ---- a replay: queue against sweep, with the replay cache on ------------------------------------
HOST = """name: gcnat
interfaces:
  - {name: lan0, mac: "02:00:00:00:00:01", addresses: [192.168.1.1/24]}
  - {name: wan0, mac: "02:00:00:00:01:01", addresses: [192.0.2.10/24]}
sysctl:
  net.ipv4.ip_forward: 1
  net.netfilter.nf_conntrack_tcp_timeout_established: 40
  net.netfilter.nf_conntrack_udp_timeout: 7
  net.netfilter.nf_conntrack_icmp_timeout: 6
routes:
  - default via 192.0.2.1 dev wan0
neighbours:
  - 192.0.2.1 dev wan0 lladdr 02:00:00:00:01:0a permanent
iptables: |
  *filter
  :FORWARD DROP [0:0]
  -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  -A FORWARD -i lan0 -o wan0 -j ACCEPT
  COMMIT
  *nat
  :POSTROUTING ACCEPT [0:0]
  -A POSTROUTING -o wan0 -j MASQUERADE
  COMMIT
"""


def _capture(path, seed: int) -> None:
    """Conversations from 30 LAN hosts: TCP handshakes with data both ways that end in FIN or RST
    or just stop, UDP with and without replies, pings; silences long enough for entries to
    expire between bursts, and some timestamps out of order."""
    import dpkt
    rng = random.Random(seed)
    lan_mac, gw_mac = "02:00:00:00:00:01", "02:00:00:00:01:01"
    frames = []
    t = 100.0
    flows: list[dict] = []
    for _ in range(700):
        t += rng.choice([0.01, 0.2, 1.0, 3.0, 9.0]) if rng.random() < 0.9 else rng.uniform(20, 70)
        if not flows or rng.random() < 0.3:
            h = rng.randrange(2, 32)
            flows.append({"c": f"192.168.1.{h}", "s": f"203.0.113.{rng.randrange(1, 9)}",
                          "sp": rng.randrange(30000, 30040), "dp": rng.choice([80, 443, 53]),
                          "kind": rng.choice(["tcp", "tcp", "udp", "ping"]), "n": 0, "seq": rng.randrange(2**32),
                          "ack": rng.randrange(2**32)})
        f = rng.choice(flows)
        lan = lambda p: build.ether(lan_mac, "02:00:00:00:00:0a", 0x0800, p)   # noqa: E731
        wan = lambda p: build.ether(gw_mac, "02:00:00:00:01:0a", 0x0800, p)   # noqa: E731
        ts = t - (rng.uniform(0, 0.5) if rng.random() < 0.05 else 0)
        if f["kind"] == "udp":
            if f["n"] and rng.random() < 0.4:
                frames.append((ts, wan(build.udp_packet(f["s"], "192.0.2.10", f["dp"], f["sp"], b"r"))))
            else:
                frames.append((ts, lan(build.udp_packet(f["c"], f["s"], f["sp"], f["dp"], b"q"))))
        elif f["kind"] == "ping":
            frames.append((ts, lan(build.icmp_packet(f["c"], f["s"], id=f["sp"], seq=f["n"]))))
        else:
            step = f["n"]
            c, s, sp, dp = f["c"], f["s"], f["sp"], f["dp"]
            if step == 0:
                frames.append((ts, lan(build.tcp_packet(c, s, sp, dp, "S", seq=f["seq"], window=64240))))
            elif step == 1:
                frames.append((ts, wan(build.tcp_packet(s, "192.0.2.10", dp, sp, "SA", seq=f["ack"],
                                                        ack=f["seq"] + 1, window=64240))))
            elif step == 2:
                frames.append((ts, lan(build.tcp_packet(c, s, sp, dp, "A", seq=f["seq"] + 1, ack=f["ack"] + 1,
                                                        window=64240))))
            else:
                end = rng.random()
                flags = "FA" if end < 0.15 else "RA" if end < 0.25 else "PA"
                frames.append((ts, lan(build.tcp_packet(c, s, sp, dp, flags, seq=f["seq"] + 1, ack=f["ack"] + 1,
                                                        window=64240, payload=b"" if flags != "PA" else b""))))
                if flags != "PA":
                    flows.remove(f)
        f["n"] += 1
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_same_with_queue_and_sweep(tmp_path, monkeypatch, seed) -> None:
    host, cap = tmp_path / "h.yaml", tmp_path / "c.pcap"
    host.write_text(HOST)
    _capture(cap, seed)
    args = ["replay", str(host), str(cap), "--summary", "--counters", "--conntrack", "--no-progress"]
    runs = {}
    for name, gc in (("queue", ConntrackTable.gc), ("sweep", _sweep_gc)):
        seen: list = []

        def observed(self, now, force=False, gc=gc, seen=seen):
            """The table as each gc leaves it: entries (expired ones too), stats, NAT sources."""
            n = gc(self, now, force)
            seen.append((now, n, len(self), sorted(ct.seq for ct, _ in self.hash.values()), dict(self.stats),
                         {k: [c.seq for c in v] for k, v in self.bysource.items()}))
            return n

        monkeypatch.setattr(ConntrackTable, "gc", observed)
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        runs[name] = (res.output, seen)
    assert runs["queue"][0] == runs["sweep"][0]
    assert runs["queue"][1] == runs["sweep"][1]
    assert sum(n for _, n, *_ in runs["sweep"][1]) > 0, "the capture never let an entry expire at a gc"
    assert "flow entries have been shown" in runs["sweep"][0]
