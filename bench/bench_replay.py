"""Benchmark: every speed and memory figure of issue 6 from one command.

    python bench/bench_replay.py            # all figures (10M-packet memory run included: ~1 hour)
    python bench/bench_replay.py --quick    # smaller captures, same figures, a few minutes

Workload (bench/workload.py): a NAT router (conntrack, MASQUERADE, stateful FORWARD) with
about 1,000 rules, and a capture of 2,000 interleaved TCP conversations with handshakes and
in-window data both ways.  Each replay runs in a child process (`pathtrace replay`), timed
from the parent's side without Python start-up, with its peak RSS; dpkt's bare pcap read
loop on the same file gives the reference ratio.  Figures:

  summary   replay --summary, 1M packets: packets/s and ratio to dpkt's read loop
  jsonl     replay --format jsonl (full paths) to /dev/null, on the summary's capture and a short one;
            --format text on the summary's capture
  python    the summary run with the C accelerator off (PATHTRACE_PURE_PYTHON=1)
  rules     the same capture through 10 and 10,000 rules (--summary): slowdown factor
  memory    peak RSS at 1M and 10M packets
  jobs      --jobs 2 against --jobs 1 (--summary)
  cache     --no-cache against the cache (--summary)
  bidir     the summary capture as the router would capture it (each received frame followed by the
            frames the model sent for it; workload.write_bidir) against the one-way capture: time
            per packet, best of 3 each (issue 11: at least as fast per packet)
  workloads issue 14: the traffic a per-flow cache cannot serve, next to the conversations above, on the
            same router - `scan` (every packet a new flow: SYNs to ever new server:port pairs),
            `udpflood` (every datagram a new flow: DNS queries from ever new source ports), `midstream` (one-way TCP picked up mid-stream, 2,000 uploads), `udp` (one-way UDP from
            2,000 clients), `ping` (unanswered echo requests, 2,000 clients).  Each: --summary three
            times (--runs) and --format jsonl and --format text once each (--format-runs; the scan's and
            the flood's first 20,000 packets: each runs the whole model, ~1 ms with its JSON path), packets/s and the
            ratio to dpkt's read loop timed in the same run, peak RSS; and the first --identical
            packets replayed with and without the cache (--format jsonl, then --summary --counters)
            must give the same bytes.  Run alone with --only workloads [--workloads scan,udp].
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workload  # noqa: E402

CHILD = """
import resource, sys, time, json
sys.argv = ['pathtrace', 'replay'] + {args!r}
from pathtrace.cli import main
start = time.perf_counter()
try:
    main(standalone_mode=False)
except SystemExit:
    pass
sys.stdout.flush()
elapsed = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (the bench, holding
# captured outputs), VmHWM belongs to this image only; --jobs workers are children (RUSAGE_CHILDREN)
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
usage = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({{'elapsed': elapsed, 'maxrss_kb': usage}}), file=sys.stderr)
"""


def replay(args: list[str], stdout=subprocess.PIPE, pure_python: bool = False) -> dict:
    env = dict(os.environ, PATHTRACE_PURE_PYTHON="1") if pure_python else None
    proc = subprocess.run([sys.executable, "-c", CHILD.format(args=args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, cwd=HERE.parent, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stderr.strip().splitlines()[-1]) | {"stdout": proc.stdout or ""}


def dpkt_read_loop(capture: Path) -> float:
    import dpkt
    start = time.perf_counter()
    n = 0
    with open(capture, "rb") as fh:
        for _ts, _buf in dpkt.pcap.Reader(fh):
            n += 1
    return n / (time.perf_counter() - start)


def capture(out: Path, packets: int, flows: int) -> Path:
    path = out / f"nat-{packets}-{flows}.pcap"
    if not path.exists():
        t0 = time.perf_counter()
        workload.write_capture(path, packets, flows)
        print(f"  generated {path.name} in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def host(out: Path, rules: int) -> Path:
    path = out / f"nat-router-{rules}.yaml"
    path.write_text(workload.host_yaml(rules))
    return path


WORKLOADS = {   # name -> (writer, target packets/s with --summary)
    "conversations": (lambda path, n: workload.write_capture(path, n, 2000), 400_000),
    "scan": (lambda path, n: workload.write_scan(path, n), 100_000),
    "udpflood": (lambda path, n: workload.write_udp_flood(path, n), 100_000),   # also every packet a new flow
    "midstream": (lambda path, n: workload.write_midstream(path, n, 2000), 250_000),
    "udp": (lambda path, n: workload.write_udp(path, n, 2000), 250_000),
    "ping": (lambda path, n: workload.write_ping(path, n, 2000), 250_000),
}
JSONL_TARGET = 50_000


def workload_capture(out: Path, name: str, packets: int) -> Path:
    path = out / f"{name}-{packets}.pcap" if name != "conversations" else out / f"nat-{packets}-2000.pcap"
    if not path.exists():
        t0 = time.perf_counter()
        WORKLOADS[name][0](path, packets)
        print(f"  generated {path.name} in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def bench_workload(name: str, out: Path, host_file: Path, packets: int, runs: int, identical: int,
                   jsonl_packets: int, format_runs: int = 1) -> dict:
    """One issue-14 workload: --summary `runs` times, then --format jsonl and --format text
    `format_runs` times each (their first `jsonl_packets`, to /dev/null), each against dpkt's read
    loop timed just before it; then cache against --no-cache on the first `identical` packets."""
    cap = workload_capture(out, name, packets)
    target = WORKLOADS[name][1]
    res: dict = {"packets": packets, "summary": [], "jsonl": [], "text": []}
    for i in range(runs):
        bare = dpkt_read_loop(cap)
        r = replay([str(host_file), str(cap), "--summary", "--no-progress"])
        pps = packets / r["elapsed"]
        res["summary"].append({"pps": round(pps), "dpkt_read_pps": round(bare), "ratio": round(pps / bare, 3),
                               "peak_rss_mib": round(r["maxrss_kb"] / 1024, 1), "load": load()})
        print(f"{name} summary run {i + 1}: {packets:,} packets in {r['elapsed']:.1f}s = {pps:,.0f} packets/s "
              f"(target >= {target:,}); dpkt {bare:,.0f}/s, ratio {pps / bare:.3f}; "
              f"peak RSS {r['maxrss_kb'] / 1024:.0f} MiB; {load()}", flush=True)
    for fmt in ("jsonl", "text"):
        for i in range(format_runs):
            bare = dpkt_read_loop(cap)
            with open("/dev/null", "w") as null:
                r = replay([str(host_file), str(cap), "--format", fmt, "--no-progress", "--limit", str(jsonl_packets)],
                           stdout=null)
            pps = jsonl_packets / r["elapsed"]
            res[fmt].append({"packets": jsonl_packets, "pps": round(pps), "dpkt_read_pps": round(bare),
                             "ratio": round(pps / bare, 3), "peak_rss_mib": round(r["maxrss_kb"] / 1024, 1),
                             "load": load()})
            aim = f" (target >= {JSONL_TARGET:,})" if fmt == "jsonl" else ""
            print(f"{name} {fmt} run {i + 1} ({jsonl_packets:,} packets): {r['elapsed']:.1f}s = {pps:,.0f} packets/s"
                  f"{aim}; dpkt {bare:,.0f}/s, ratio {pps / bare:.3f}; peak RSS {r['maxrss_kb'] / 1024:.0f} MiB; "
                  f"{load()}", flush=True)
    if identical:
        same = True
        for fmt in (["--format", "jsonl"], ["--summary", "--counters"]):
            args = [str(host_file), str(cap), "--limit", str(identical), "--no-progress", *fmt]
            on, off = replay(args), replay(args + ["--no-cache"])
            same = same and on["stdout"] == off["stdout"] and bool(on["stdout"])
        res["identical_packets"] = identical
        res["identical"] = same
        print(f"{name}: first {identical:,} packets with and without the cache identical: {same}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k/300k packets instead of 1M/10M")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--only", default="summary,jsonl,python,rules,memory,jobs,cache,bidir,workloads")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="which of the issue-14 workloads to run")
    ap.add_argument("--packets", type=int, default=0, help="packets per workload capture (default: 1M, --quick 100k)")
    ap.add_argument("--runs", type=int, default=3, help="--summary runs per workload")
    ap.add_argument("--jsonl-packets", type=int, default=0,
                    help="packets of each workload's capture replayed with --format jsonl (default: all; the "
                         "scan's and the flood's first 20,000 - every packet runs the whole model, its rate does "
                         "not depend on N)")
    ap.add_argument("--format-runs", type=int, default=1,
                    help="--format jsonl and --format text runs per workload (three for the issue's figures)")
    ap.add_argument("--identical", type=int, default=20_000,
                    help="packets compared with and without the cache per workload (0: skip)")
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    only = set(args.only.split(","))
    main_n, big_n, jsonl_n = (100_000, 300_000, 50_000) if args.quick else (1_000_000, 10_000_000, 200_000)
    flows = 2000
    cap = capture(args.out, main_n, flows)
    h1000 = host(args.out, 1000)
    results: dict[str, object] = {}
    if args.quick:
        print(f"note: --quick replays {main_n:,} packets of the same {flows:,} flows, so each flow's first packets "
              "(the handshake and first data, which run the whole model) weigh 10x more than in the full run: "
              "its packets/s are not comparable with the targets", flush=True)
    try:
        from pathtrace import _fastpath  # noqa: F401
        results["accelerator"] = True
    except ImportError:
        results["accelerator"] = False
        print("note: the C accelerator (pathtrace/_fastpath.c) is not built; figures are the Python path's", flush=True)

    if "summary" in only:
        bare = dpkt_read_loop(cap)          # first: it also brings the file into the page cache
        r = replay([str(h1000), str(cap), "--summary", "--no-progress"])
        pps = main_n / r["elapsed"]
        results["summary"] = {"packets": main_n, "pps": round(pps), "dpkt_read_pps": round(bare),
                              "ratio": round(pps / bare, 3), "peak_rss_mib": round(r["maxrss_kb"] / 1024, 1)}
        print(r["stdout"])
        print(f"summary: {main_n:,} packets through ~1000 rules in {r['elapsed']:.1f}s = {pps:,.0f} packets/s; "
              f"dpkt read loop {bare:,.0f}/s; ratio {pps / bare:.3f} (target >= 0.5 and >= 200,000/s)", flush=True)
    if "jsonl" in only:
        # the same workload as `summary`, then a short capture where handshakes weigh 5x more
        for name, n in (("jsonl", main_n), ("jsonl_short", jsonl_n), ("text", main_n)):
            fmt = "text" if name == "text" else "jsonl"
            with open("/dev/null", "w") as null:
                r = replay([str(h1000), str(capture(args.out, n, flows)), "--format", fmt, "--no-progress"],
                           stdout=null)
            pps = n / r["elapsed"]
            results[name] = {"packets": n, "pps": round(pps)}
            target = " (target >= 50,000)" if name == "jsonl" else ""
            print(f"{name}: {n:,} packets of {flows:,} flows with full paths in {r['elapsed']:.1f}s = {pps:,.0f} "
                  f"packets/s{target}", flush=True)
    if "python" in only:
        r = replay([str(h1000), str(cap), "--summary", "--no-progress"], pure_python=True)
        results["python"] = {"packets": main_n, "pps": round(main_n / r["elapsed"])}
        print(f"python: the summary run without the C accelerator (PATHTRACE_PURE_PYTHON=1): "
              f"{main_n / r['elapsed']:,.0f} packets/s", flush=True)
    if "rules" in only:
        times = {}
        for n in (10, 10_000):
            r = replay([str(host(args.out, n)), str(cap), "--summary", "--no-progress"])
            times[n] = r["elapsed"]
        factor = times[10_000] / times[10]
        results["rules"] = {"seconds_10": round(times[10], 2), "seconds_10000": round(times[10_000], 2),
                            "factor": round(factor, 2)}
        print(f"rules: 10 rules {times[10]:.1f}s, 10,000 rules {times[10_000]:.1f}s: {factor:.2f}x (target <= 2x)",
              flush=True)
    if "memory" in only:
        rss = {}
        for n in (main_n, big_n):
            r = replay([str(h1000), str(capture(args.out, n, flows)), "--summary", "--no-progress"])
            rss[n] = r["maxrss_kb"] / 1024
        growth = rss[big_n] / rss[main_n] - 1
        results["memory"] = {f"peak_rss_mib_{n}": round(v, 1) for n, v in rss.items()} | {"growth": round(growth, 3)}
        print(f"memory: peak RSS {rss[main_n]:.1f} MiB at {main_n:,}, {rss[big_n]:.1f} MiB at {big_n:,} packets "
              f"({100 * growth:+.1f}%, target within 10%)", flush=True)
    if "jobs" in only:
        # best of 3 each: two processes on a 2-core machine feel every other load on it
        one = min((replay([str(h1000), str(cap), "--summary", "--no-progress"]) for _ in range(3)),
                  key=lambda r: r["elapsed"])
        two = min((replay([str(h1000), str(cap), "--summary", "--no-progress", "--jobs", "2"]) for _ in range(3)),
                  key=lambda r: r["elapsed"])
        same = one["stdout"] == two["stdout"]
        results["jobs"] = {"seconds_1": round(one["elapsed"], 2), "seconds_2": round(two["elapsed"], 2),
                           "speedup": round(one["elapsed"] / two["elapsed"], 2), "identical": same}
        print(f"jobs: --jobs 1 {one['elapsed']:.1f}s, --jobs 2 {two['elapsed']:.1f}s: "
              f"{one['elapsed'] / two['elapsed']:.2f}x, output identical: {same}", flush=True)
    if "cache" in only:
        on = replay([str(h1000), str(cap), "--summary", "--counters", "--no-progress"])
        off = replay([str(h1000), str(cap), "--summary", "--counters", "--no-progress", "--no-cache"])
        results["cache"] = {"seconds_cache": round(on["elapsed"], 2), "seconds_no_cache": round(off["elapsed"], 2),
                            "identical": on["stdout"] == off["stdout"]}
        print(f"cache: on {on['elapsed']:.1f}s, off {off['elapsed']:.1f}s "
              f"({off['elapsed'] / on['elapsed']:.1f}x), output identical: {on['stdout'] == off['stdout']}", flush=True)
    if "bidir" in only:
        bidir = args.out / f"nat-{main_n}-{flows}-bidir.pcap"
        if not bidir.exists():
            workload.write_bidir(cap, h1000, bidir)
        n_bidir = sum(1 for _ in __import__("pathtrace.capture", fromlist=["read_frames"]).read_frames(str(bidir)))
        runs = {}
        for name, path, n in (("oneway", cap, main_n), ("bidir", bidir, n_bidir)):
            best = min((replay([str(h1000), str(path), "--summary", "--no-progress"]) for _ in range(3)),
                       key=lambda r: r["elapsed"])
            runs[name] = (n, best["elapsed"], best["stdout"])
        us = {name: 1e6 * t / n for name, (n, t, _) in runs.items()}
        predicted = "the model predicted" in runs["bidir"][2]
        results["bidir"] = {"packets_oneway": main_n, "packets_bidir": n_bidir,
                            "us_per_packet_oneway": round(us["oneway"], 2), "us_per_packet_bidir": round(us["bidir"], 2),
                            "ratio": round(us["bidir"] / us["oneway"], 3), "agreement_reported": predicted}
        print(f"bidir: one-way {main_n:,} packets {runs['oneway'][1]:.1f}s = {us['oneway']:.2f} us/packet; "
              f"bidirectional {n_bidir:,} packets {runs['bidir'][1]:.1f}s = {us['bidir']:.2f} us/packet "
              f"({us['bidir'] / us['oneway']:.2f}x, target <= 1)", flush=True)
    if "workloads" in only:
        n = args.packets or main_n
        results["workloads"] = {}
        for name in args.workloads.split(","):
            jsonl_n = args.jsonl_packets or (min(n, 20_000) if name in ("scan", "udpflood") else n)
            results["workloads"][name] = bench_workload(name, args.out, h1000, n, args.runs, args.identical, jsonl_n,
                                                        args.format_runs)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
