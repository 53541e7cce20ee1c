"""`pathtrace verify HOST CAPTURE`: the model against the real kernel, packet by packet.

Exit status: 0 every packet agrees, 1 some disagree, 2 bad input (as other commands),
77 skipped because this machine cannot run the kernel side (no root, no network
namespaces, no tracefs, a missing tool) — 77 is the usual "skipped" code of test harnesses.
"""
from __future__ import annotations

import json
import sys

import click

from pathtrace.errors import PathtraceError

EXIT_DISAGREE = 1
EXIT_ERROR = 2
EXIT_SKIPPED = 77


@click.command()
@click.argument("host", type=click.Path(dir_okay=False))
@click.argument("capture", type=click.Path(dir_okay=False))
@click.option("--in", "ingress", metavar="IFACE", help="Every frame enters on IFACE (foreign MACs re-addressed).")
@click.option("--strict-mac", is_flag=True, help="With --in, keep foreign destination MACs.")
@click.option("--wait", type=float, default=0.15, show_default=True,
              help="Seconds to watch for the kernel's reaction to each packet.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per packet instead of the table.")
def verify(host: str, capture: str, ingress: str | None, strict_mac: bool, wait: float, as_json: bool) -> None:
    """Replay CAPTURE through the model and through a real kernel built from HOST (needs root)."""
    from pathtrace.capture import read_frames
    from pathtrace.host.loader import load_host
    from pathtrace.verify.compare import agreements, render
    from pathtrace.verify.netns import LabError, Unavailable
    from pathtrace.verify.runner import plan, run_kernel, run_model

    try:
        cfg = load_host(host)
        if ingress and ingress not in {i.name for i in cfg.interfaces}:
            raise PathtraceError(f"--in {ingress}: no such interface in {host}")
        injections = plan(cfg, list(read_frames(capture, ordered="auto")), ingress, strict_mac)
        model = run_model(load_host(host), injections, ingress, strict_mac, wait=max(0.01, min(wait, 5.0)))
        kernel = run_kernel(load_host(host), injections, wait=max(0.01, min(wait, 5.0)))
    except Unavailable as exc:
        click.echo(f"pathtrace verify: skipped: {exc}", err=True)
        sys.exit(EXIT_SKIPPED)
    except (PathtraceError, LabError) as exc:
        click.echo(f"pathtrace verify: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    rows = agreements([i.text for i in injections], kernel, model, [i.expected_summaries() for i in injections])
    if as_json:
        for r in rows:
            click.echo(json.dumps({"index": r.index, "packet": r.packet, "kernel": r.kernel.to_json(),
                                   "model": r.model.to_json(), "differences": r.differences,
                                   "capture_out": r.expected or [], "capture_matches": r.capture_matches}, sort_keys=True))
    else:
        click.echo(render(rows), nl=False)
    sys.exit(0 if all(r.agrees for r in rows) else EXIT_DISAGREE)
