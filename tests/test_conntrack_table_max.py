"""nf_conntrack_max: __nf_conntrack_alloc's limit, early_drop, and gc_worker's eviction after a
failure (net/netfilter/nf_conntrack_core.c, 6.x).

Offline: the model's behaviour.  Live (root, PATHTRACE_LIVE=1 or CI=true): the same frames in a
throw-away namespace with the machine's nf_conntrack_max lowered for the test (it is global on
6.18: read-only outside the initial namespace; the old value is put back): SYNs beyond a small
limit in a sparse hash table are dropped by the kernel as by the model, and forwarded when
the table is dense enough for early_drop to find SYN_SENT entries near the new tuple's bucket.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from helpers import Rig, fns, live_skip_reason, step
from pathtrace.net.netfilter.nf_conntrack_core import SYSCTL_DEFAULTS, ConntrackTable
from pathtrace.packet import build

HOST = """name: ctmax
interfaces:
  - {{name: lan0, mac: "02:00:00:00:00:01", addresses: [192.168.1.1/24]}}
  - {{name: wan0, mac: "02:00:00:00:01:01", addresses: [192.0.2.10/24]}}
sysctl:
  net.ipv4.ip_forward: 1
  net.netfilter.nf_conntrack_max: {max}
  net.netfilter.nf_conntrack_buckets: {buckets}
routes:
  - default via 192.0.2.1 dev wan0
neighbours:
  - 192.0.2.1 dev wan0 lladdr 02:00:00:00:01:0a permanent
  - 192.168.1.10 dev lan0 lladdr 02:00:00:00:00:0a permanent
iptables: |
  *filter
  :FORWARD ACCEPT [0:0]
  -A FORWARD -m conntrack --ctstate INVALID -j DROP
  COMMIT
"""
CLIENT = "192.168.1.10"


def _rig(tmp_path: Path, limit: int, buckets: int = 262144) -> Rig:
    return Rig(tmp_path, HOST.format(max=limit, buckets=buckets))


def _syn(i: int) -> bytes:
    return build.tcp_packet(CLIENT, f"198.51.100.{1 + i % 200}", 20000 + i, 80, "S", seq=1000 * i, window=64240)


def _table(rig: Rig) -> ConntrackTable:
    return rig.net.nf.conntrack


def test_defaults_are_a_64_bit_machine_with_more_than_4_gib() -> None:
    """nf_conntrack_init_start: 262144 buckets above 4 GiB on 64-bit, max = 1 x buckets."""
    assert SYSCTL_DEFAULTS["nf_conntrack_max"] == 262144 == SYSCTL_DEFAULTS["nf_conntrack_buckets"]


def test_bucket_count_is_rounded_to_a_page_of_heads() -> None:
    """Measured on 6.18: 1000 reads back 1024, 1 reads 512, 0 is EINVAL."""
    table = ConntrackTable()
    table.set_sysctl("net.netfilter.nf_conntrack_buckets", 1000)
    assert table.sysctl["nf_conntrack_buckets"] == 1024
    table.set_sysctl("nf_conntrack_buckets", 1)
    assert table.sysctl["nf_conntrack_buckets"] == 512
    with pytest.raises(ValueError):
        table.set_sysctl("nf_conntrack_buckets", 0)


def test_sparse_table_full_drops_new_flows(tmp_path) -> None:
    """20 SYN_SENT entries in 262144 buckets: early_drop looks at 8 buckets from the new tuple's
    and finds nothing to evict, so the packet is dropped (NF_DROP from the conntrack hook)."""
    rig = _rig(tmp_path, 20)
    for i in range(20):
        assert rig.send("lan0", _syn(i)).verdict == "FORWARD"
    for i in range(20, 25):
        rec = rig.send("lan0", _syn(i))
        assert (rec.verdict, rec.reason) == ("DROP", "NETFILTER_DROP")
        detail = step(rec, "__nf_conntrack_alloc")
        assert detail["result"] == "nf_conntrack: table full, dropping packet"
        assert (detail["count"], detail["max"]) == (21, 20)
    table = _table(rig)
    assert len(table) == 20 and table.stats["drop"] == 5 and table.stats["early_drop"] == 0
    # packets of the flows already tracked still pass
    assert rig.send("lan0", _syn(3)).verdict == "FORWARD"


def test_dense_table_evicts_unassured_entries(tmp_path) -> None:
    """With 300 SYN_SENT entries in 512 buckets every chain early_drop looks at has entries that
    are not ASSURED: a new flow evicts those of the first non-empty one and passes."""
    rig = _rig(tmp_path, 300, buckets=512)
    for i in range(300):
        rig.send("lan0", _syn(i))
    table = _table(rig)
    for i in range(300, 340):
        full = len(table) == 300
        rec = rig.send("lan0", _syn(i))
        assert rec.verdict == "FORWARD"
        assert ("early_drop" in fns(rec)) == full
    assert len(table) <= 300 and table.stats["drop"] == 0
    assert table.stats["early_drop"] == 340 - len(table) >= 40 and table.stats["expired"] == 0
    rec = rig.send("lan0", _syn(340)) if len(table) == 300 else None
    if rec is not None and "early_drop" in fns(rec):
        assert step(rec, "early_drop")["evicted"].startswith("tcp 192.168.1.10:")


def _handshake(rig: Rig, i: int) -> None:
    server = f"198.51.100.{1 + i % 200}"
    rig.send("lan0", build.tcp_packet(CLIENT, server, 30000 + i, 443, "S", seq=100, window=64240))
    rig.send("wan0", build.tcp_packet(server, CLIENT, 443, 30000 + i, "SA", seq=500, ack=101, window=64240),
             src_mac="02:00:00:00:01:0a")
    rig.send("lan0", build.tcp_packet(CLIENT, server, 30000 + i, 443, "A", seq=101, ack=501, window=64240))


def test_assured_entries_are_never_early_dropped(tmp_path) -> None:
    """A table full of ASSURED connections refuses new flows even when dense; after the failure
    the next gc run evicts what gc_worker_can_early_drop allows while the table holds 95% of the
    limit: here the connections a FIN moved to FIN_WAIT (ASSURED, but closing)."""
    rig = _rig(tmp_path, 100, buckets=512)
    for i in range(100):
        _handshake(rig, i)
    table = _table(rig)
    assert len(table) == 100 and all(ct.status & 4 for ct in table.entries())    # IPS_ASSURED
    rec = rig.send("lan0", _syn(900))
    assert (rec.verdict, rec.reason) == ("DROP", "NETFILTER_DROP")
    assert "early_drop" not in fns(rec) and table.early_drop_pending
    for i in range(10):                      # ten connections start closing
        server = f"198.51.100.{1 + i % 200}"
        rig.send("lan0", build.tcp_packet(CLIENT, server, 30000 + i, 443, "FA", seq=101, ack=501, window=64240))
    assert len(table) == 100
    # the next gc instant: kills while the count is at least 95 (100 / 100 * 95), so six of the
    # ten closing ones go (100 -> 94); then the SYN that ran the gc gets its entry
    assert rig.send("lan0", _syn(901), dt=6.0).verdict == "FORWARD"
    assert not table.early_drop_pending
    assert len(table) == 95
    closing = [ct for ct in table.entries() if 30000 <= ct.orig.sport < 30010]
    assert len(closing) == 4


def test_zero_means_no_limit(tmp_path) -> None:
    rig = _rig(tmp_path, 0)
    for i in range(50):
        assert rig.send("lan0", _syn(i)).verdict == "FORWARD"
    assert len(_table(rig)) == 50


# ---- live ------------------------------------------------------------------------------------
MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
BUCKETS = "/proc/sys/net/netfilter/nf_conntrack_buckets"


def _live_run(tmp_path: Path, limit: int, buckets: int, syns: int) -> tuple[list[bool], list[str]]:
    """Inject `syns` SYNs with the machine's limit at `limit` and hash at `buckets`: which left on
    wan0 (kernel) and the model's verdicts."""
    from pathtrace.host.loader import load_host
    from pathtrace.verify.lab import Lab
    host = tmp_path / "h.yaml"
    host.write_text(HOST.format(max=limit, buckets=buckets))
    rig = Rig(tmp_path, HOST.format(max=limit, buckets=buckets))
    model = [rig.send("lan0", _syn(i)).verdict for i in range(syns)]
    frames = [build.ether("02:00:00:00:00:01", "02:00:00:00:00:0a", 0x0800, _syn(i)) for i in range(syns)]
    old_max, old_buckets = Path(MAX).read_text().strip(), Path(BUCKETS).read_text().strip()
    seen: set[int] = set()
    with Lab(load_host(str(host)), tag=f"ptmx{os.getpid()}") as lab:
        try:
            Path(BUCKETS).write_text(str(buckets))
            Path(MAX).write_text(str(limit))
            out = []
            for n, frame in enumerate(frames, 1):
                lab.inject("lan0", frame)
                time.sleep(0.002)
                if n % 50 == 0:                  # the tap's receive buffer holds a few hundred
                    out += lab.drain(0.02)
            out += lab.drain(0.5)
        finally:
            Path(MAX).write_text(old_max)
            Path(BUCKETS).write_text(old_buckets)
    for dev, data in out:
        if dev == "wan0" and len(data) >= 54 and data[23] == 6:
            seen.add(int.from_bytes(data[34:36], "big") - 20000)
    return [i in seen for i in range(syns)], model


def test_live_sparse_table_drops_like_the_model(tmp_path) -> None:
    why = live_skip_reason()
    if why:
        pytest.skip(why)
    # 300 entries (600 hash nodes) in 262144 buckets: the kernel's early_drop (random seed) finds
    # one in the 8 buckets it looks at for about 1.8% of new tuples
    passed, model = _live_run(tmp_path, 300, 262144, 310)
    assert all(passed[:300]) and model[:300] == ["FORWARD"] * 300
    assert model[300:] == ["DROP"] * 10
    assert sum(passed[300:]) <= 2, passed[300:]


def test_live_dense_table_evicts_like_the_model(tmp_path) -> None:
    why = live_skip_reason()
    if why:
        pytest.skip(why)
    # 400 SYN_SENT entries in 512 buckets: every new SYN finds some to evict, in the kernel as in
    # the model (which ones differs: the kernel's hash is seeded at random)
    passed, model = _live_run(tmp_path, 400, 512, 450)
    assert all(passed) and model == ["FORWARD"] * 450


def test_early_drop_reaps_expired_entries_without_counting_them() -> None:
    """early_drop_list: an expired entry met in a chain is reaped (nf_ct_gc_expired) and does not
    count as a drop; an ASSURED one is skipped; the non-ASSURED ones of that chain all go."""
    from pathtrace.net.netfilter.nf_conntrack_core import IPS_ASSURED, IPS_CONFIRMED, NfConn
    from pathtrace.net.netfilter.nf_conntrack_tuple import Tuple
    table = ConntrackTable(nf_conntrack_buckets=512)
    new = Tuple(1, 2, 6, 1000, 80)
    home = table._bucket(new)
    same = []                                      # tuples whose original direction lands in `home`
    port = 1
    while len(same) < 4:
        t = Tuple(10, 20, 17, port, 53)
        if table._bucket(t) == home and table._bucket(Tuple(20, 10, 17, 53, port)) != home:
            same.append(t)
        port += 1
    cts = []
    for t, (status, timeout) in zip(same, [(0, 50.0), (IPS_ASSURED, 500.0), (0, 500.0), (0, 600.0)]):
        ct = NfConn(t, Tuple(t.dst, t.src, t.proto, t.dport, t.sport), status=IPS_CONFIRMED | status,
                    timeout=timeout, table=table)
        table.insert(ct)
        cts.append(ct)
    evicted = table.early_drop(new, 100.0)
    assert evicted == [cts[3], cts[2]]             # newest first, as the chain is walked
    assert table.stats["early_drop"] == 2 and table.stats["expired"] == 1
    assert table.entries() == [cts[1]]
    # nothing left to evict near `new`: the caller drops the packet
    assert table.early_drop(new, 100.0) == [] and table.stats["early_drop"] == 2
