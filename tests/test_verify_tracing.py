"""verify's drop tracer sees only the lab's namespace: same answers five runs in a row while
another process churns namespaces and drops UDP in them (live: root and PATHTRACE_LIVE=1)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import live_skip_reason
from pathtrace.verify.record import load_scenarios
from pathtrace.verify.tracing import BpfDropTracer, reason_table

HERE = Path(__file__).resolve().parent / "differential"

CHURN = textwrap.dedent("""\
    n=0
    while true; do
      n=$((n+1)); a=ptchurn$$a$n; b=ptchurn$$b$n
      ip netns add $a; ip netns add $b; ip -n $a link set lo up
      ip -n $a link add va type veth peer name vb netns $b
      ip -n $a addr add 10.99.0.1/24 dev va; ip -n $b addr add 10.99.0.2/24 dev vb
      ip -n $a link set va up; ip -n $b link set vb up
      timeout 2 ip netns exec $a PYTHON -c "
    import socket, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.time() + 1.0
    while time.time() < end:
        s.sendto(b'x', ('127.0.0.1', 9)); s.sendto(b'y', ('10.99.0.2', 9)); time.sleep(0.002)
    " 2>/dev/null
      ip netns del $a; ip netns del $b
    done
    """).replace("PYTHON", sys.executable)


def test_bpf_line_parser_keeps_only_the_lab_namespace() -> None:
    tracer = BpfDropTracer(reasons=reason_table('{ 3, "NO_SOCKET" }, { 119, "BRIDGE_INGRESS_STP_STATE" }'),
                           proc=None)  # type: ignore[arg-type]
    tracer.limit_to(4026532389)
    for line in ("D ffff1 2048 4026532389 3 __udp4_lib_rcv+0x1f0",      # kept
                 "D ffff2 2048 4026532178 3 __udp4_lib_rcv+0x1f0",      # another namespace
                 "D ffff3 34525 4026532389 3 ip6_mc_input",            # not IPv4/ARP
                 "D ffff4 2048 4026532389 119 br_handle_frame"):       # the wire side's bridge
        tracer._parse(line)
    assert [(e.skbaddr, e.reason, e.location) for e in tracer._events] == [("ffff1", "NO_SOCKET", "__udp4_lib_rcv")]


def test_bpf_drops_of_other_skbs_than_the_injected_one_are_not_its_fate() -> None:
    tracer = BpfDropTracer(reasons=reason_table('{ 12, "NETFILTER_DROP" }, { 3, "NO_SOCKET" }'),
                           proc=None)  # type: ignore[arg-type]
    tracer.limit_to(77)
    tracer.fence = lambda timeout=0: None  # type: ignore[method-assign]
    for line in ("R aaaa 55",                              # another namespace's receive
                 "R ffff1 77",                             # the injected frame
                 "R ffff9 77",                             # a later receive (loopback)
                 "D ffff2 2048 77 12 nf_hook_slow",         # the redirect it caused, dropped by NAT
                 "D ffff1 2048 77 3 __udp4_lib_rcv"):
        tracer._parse(line)
    assert [(e.skbaddr, e.reason) for e in tracer.read()] == [("ffff1", "NO_SOCKET")]


def test_same_answers_five_times_while_namespaces_churn() -> None:
    why = live_skip_reason("bpftrace")
    if why:
        pytest.skip(why)
    from pathtrace.verify.runner import run_kernel
    scenarios = {s.name: s for s in load_scenarios(str(HERE / "scenarios.py"))}
    churn = subprocess.Popen(["bash", "-c", CHURN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        for name in ("forward_enabled", "icmp_echo", "route_unreachable"):
            sc = scenarios[name]
            recorded = json.loads((HERE / "expected" / f"{name}.json").read_text())
            want = [p["kernel"] for p in recorded["packets"]]
            for _ in range(5):
                assert [o.to_json() for o in run_kernel(sc.host(), sc.injections())] == want, name
    finally:
        os.killpg(churn.pid, signal.SIGTERM)
        churn.wait()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for ns in names:
            if ns.startswith(f"ptchurn{churn.pid}"):
                subprocess.run(["ip", "netns", "del", ns], check=False)
