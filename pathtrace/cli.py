"""Command line: `pathtrace replay`, `pathtrace show` (and the commands of later issues)."""
from __future__ import annotations

import gc
import os
import signal
import sys
import time
from typing import TextIO

import click

from pathtrace.errors import PathtraceError

EXIT_INTERRUPTED = 128 + signal.SIGINT      # 130, as a shell reports a command ended by ^C
EXIT_PIPE = 128 + signal.SIGPIPE            # 141, as a shell reports `tcpdump -r big.pcap | head`


def accelerator_status() -> str:
    """Whether the replay cache's C lane (pathtrace/_fastpath.c) is built and in use."""
    import os
    try:
        from pathtrace import _fastpath  # noqa: F401
    except ImportError:
        return "not built (no C compiler at install time): the same work runs in Python"
    if os.environ.get("PATHTRACE_PURE_PYTHON") == "1":
        return "built, off (PATHTRACE_PURE_PYTHON=1)"
    return "built, in use"


def _version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version
    click.echo(f"pathtrace {version('pathtrace')}\nC accelerator: {accelerator_status()}")
    ctx.exit()


def _fail(exc: PathtraceError) -> None:
    click.echo(f"pathtrace: {exc}", err=True)
    sys.exit(2)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the reader went away, and Python's final flush must not
    report a BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _Commands(click.Group):
    """The command group, with the exit statuses of interruptions (pathtrace(1) EXIT STATUS):
    SIGINT exits 130 (click would say "Aborted!" and exit 1, the status of an internal
    failure), a closed output pipe 141 without a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                _silence_stdout()
            click.echo("pathtrace: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(EXIT_PIPE)


class _Interrupt:
    """SIGINT while replaying: a flag the replay loop's callbacks look at between records, so
    an interrupted replay stops on a record boundary (every line printed complete, its frames
    in --write-pcap, the summary counting exactly what was replayed).  A second ^C interrupts
    at once."""

    def __init__(self) -> None:
        self.hit = False
        self._old = None

    def __enter__(self) -> "_Interrupt":
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:          # not the main thread (tests): leave SIGINT alone
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def _handler(self, signum: int, frame: object) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def write(self, out: "TextIO", text: str) -> None:
        """out.write(text) with SIGINT held back until it returns: a record longer than the stream's
        buffer is written in pieces, and a ^C between two pieces (a write to a full pipe interrupted)
        would leave half a line before the summary."""
        if self._old is None:
            out.write(text)
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT,))
        try:
            out.write(text)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT,))


def _packet_count(text: str | None) -> int:
    """-c/--count N (--limit N): a positive number of packets, 0 for no count given."""
    from pathtrace.inputs import parse_int
    if text is None:
        return 0
    try:
        n = parse_int(text, 10)
    except ValueError:
        n = 0
    if n < 1:
        raise PathtraceError(f"-c/--count {text!r}: the number of packets to replay must be 1 or more")
    return n


class _Progress:
    """Progress on a terminal's stderr: packets, rate, and, when the capture is a plain file, the share
    read and the time left.  Off when stderr is not a terminal, and when per-packet output goes to the
    same terminal on stdout (the line would be written into the middle of it)."""

    def __init__(self, enabled: bool, source=None, total: int = 0):
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = self.start
        self.handle = _file_of(source)
        self.total = total

    def fraction(self) -> float | None:
        if self.handle is None or self.total <= 0:
            return None
        try:
            return min(self.handle.tell() / self.total, 1.0)
        except (OSError, ValueError):
            return None

    def tick(self, count: int) -> None:
        if not self.enabled or count & 1023:
            return
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            rate = count / max(now - self.start, 1e-9)
            line = f"\r{count} packets, {rate:,.0f}/s"
            done = self.fraction()
            if done:
                left = (now - self.start) * (1 - done) / done
                line += f", {done:.0%}, {int(left) // 60}:{int(left) % 60:02d} left"
            sys.stderr.write(line + " \033[K")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _file_of(source):
    """The open capture file under a reader (for its position), if it is a plain seekable file."""
    for obj in (source, getattr(source, "reader", None)):
        f = getattr(obj, "_f", None)
        if f is not None and hasattr(f, "tell") and not hasattr(f, "decompress") and \
                type(f).__name__ in ("BufferedReader", "FileIO"):
            return f
    return None


@click.group(cls=_Commands)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=lambda ctx, _p, v: _version(ctx, v),
              help="Show the version and whether the C accelerator is in use, and exit.")
def main() -> None:
    """Replay captures through a model of the Linux 6.x network stack."""


@main.command()
@click.argument("host", type=click.Path(dir_okay=False))
@click.argument("capture", type=click.Path(dir_okay=False))
@click.argument("expression", nargs=-1)
@click.option("--in", "ingress", metavar="IFACE", help="Every frame enters on IFACE (foreign MACs re-addressed).")
@click.option("--strict-mac", is_flag=True, help="With --in, keep foreign destination MACs (kernel drops them).")
@click.option("--format", "fmt", type=click.Choice(["text", "brief", "jsonl", "none"]), default=None,
              help="Per-packet output (default: text on a terminal, with --summary none).")
@click.option("--summary", is_flag=True, help="Print verdict/reason and interface tables at the end.")
@click.option("--verbose", "-v", is_flag=True, help="Show rules evaluated that did not match.")
@click.option("--write-pcap-dir", type=click.Path(file_okay=False),
              help="Write the frames that left the host to DIR/IFACE.pcap, one pcap per egress interface.")
@click.option("--write-pcapng", type=click.Path(dir_okay=False),
              help="Write every input frame and every frame the host sent to a pcapng, with the model's decision "
                   "as each packet's comment (tshark -Y 'frame.comment contains \"NETFILTER_DROP\"').")
@click.option("--conntrack", "conntrack", type=click.Choice(["text", "json"]), is_flag=False, flag_value="text",
              default=None, help="Print the conntrack table at the end: as conntrack -L does (text), or JSON lines.")
@click.option("--counters", "counters", type=click.Choice(["list", "save"]), is_flag=False, flag_value="list",
              default=None, help="Print per-rule counters at the end: as iptables -L -v -n (list, the default) "
                                 "or in iptables-save syntax (save).")
@click.option("--write-pcap", type=click.Path(dir_okay=False), help="Write every frame that left the host to a pcap.")
@click.option("-c", "--count", "--limit", "count", metavar="N", help="Stop after N packets (as tcpdump -c; --limit is an alias).")
@click.option("-t", "tstamp", count=True,
              help="Time stamps as tcpdump's: -t none, -tt epoch (the default), -ttt delta, -tttt date, -ttttt since the first.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto",
              help="Colour verdicts in text and brief output (auto: on a terminal).")
@click.option("--no-progress", is_flag=True, help="No progress line on the terminal.")
@click.option("--no-cache", is_flag=True, help="Run every packet through the whole model (same output, slower).")
@click.option("--ifindex", "ifindex", metavar="MAP",
              help="Interface indexes of a LINUX_SLL2 capture (tcpdump -i any): 2=eth0,3=eth1.")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=1,
              help="Split the capture by flow over N processes (same output; see pathtrace(1)).")
def replay(host: str, capture: str, ingress: str | None, strict_mac: bool, fmt: str | None, summary: bool,
           verbose: bool, counters: bool, write_pcap: str | None, count: str | None, no_progress: bool,
           no_cache: bool, ifindex: str | None, jobs: int, expression: tuple[str, ...],
           conntrack: str | None, tstamp: int, color: str, write_pcapng: str | None,
           write_pcap_dir: str | None) -> None:
    """Replay CAPTURE (pcap/pcapng) through the host described in HOST (YAML).  EXPRESSION, as
    tcpdump takes it ('tcp port 22'), selects the records to replay (libpcap compiles it)."""
    from pathtrace.capture import read_frames
    from pathtrace.capture.filter import compile_filter
    from pathtrace.capture.ifmap import ifindex_map_for
    from pathtrace.host.loader import load_host
    from pathtrace.render.summary import SummaryCounter
    from pathtrace.replay import Replayer, ReplayOptions, create_namespace

    if fmt is None:
        fmt = "none" if summary or counters else ("text" if sys.stdout.isatty() else "jsonl")
    gc.set_threshold(100_000, 50, 100)   # loading builds long-lived objects; per-packet garbage is freed by refcount
    try:
        limit = _packet_count(count)
        cfg = load_host(host)
        if ingress and ingress not in {i.name for i in cfg.interfaces} | {"lo"}:
            raise PathtraceError(f"--in {ingress}: no such interface in {host}")
        net = create_namespace(cfg)
        frames = source = read_frames(capture, ordered="auto")
        selector = compile_filter(expression)
        if selector is not None:       # selection before the model; records keep their capture indexes
            frames = selector.select(source)
        index_map, map_warnings = ifindex_map_for(cfg, capture, ifindex)
        writer = _pcap_writer(write_pcap)
        pcapng = _pcapng_writer(write_pcapng, [i.name for i in cfg.interfaces])
        if write_pcap_dir is not None:
            pcapng = _Writers(pcapng, _pcap_dir_writer(write_pcap_dir))
    except PathtraceError as exc:
        _fail(exc)
        return
    for w in map_warnings:
        click.echo(f"pathtrace: warning: {w}", err=True)
    gc.freeze()     # the host's objects live for the whole run: keep the cyclic collector off them
    need_frames = fmt != "none" or write_pcap is not None or pcapng is not None
    replayer = Replayer(net, ReplayOptions(ingress=ingress, strict_mac=strict_mac,
                                           record=fmt != "none" or pcapng is not None,
                                           emit_frames=need_frames, cache=not no_cache,
                                           sent_frames=_shows_sent_frames(capture, net, ingress)))
    replayer.direction.ifindex = index_map
    counter = SummaryCounter()
    out = sys.stdout
    try:
        if jobs > 1 and (conntrack or fmt == "brief" or tstamp or pcapng is not None):
            click.echo(f"pathtrace: --jobs {jobs}: one process (for --conntrack, --format brief, -t, "
                       "--write-pcapng and --write-pcap-dir)", err=True)
            jobs = 1
        if jobs > 1 and conntrack:
            click.echo(f"pathtrace: --jobs {jobs}: one process (--conntrack lists one table)", err=True)
            jobs = 1
        if jobs > 1 and getattr(frames, "cursor", None) is None:
            click.echo(f"pathtrace: --jobs {jobs}: one process (the capture is replayed in timestamp order)", err=True)
            jobs = 1
        if jobs > 1 and not _replay_jobs(host, capture, jobs, ingress, strict_mac, fmt, verbose, limit, no_cache,
                                         write_pcap, net, counter, replayer, out):
            jobs = 1
    except PathtraceError as exc:
        _fail(exc)
        return
    interrupted = False
    if jobs <= 1:
        look = _Look(tstamp, color == "always" or (color == "auto" and out.isatty()))
        shows = not no_progress and not (fmt != "none" and out.isatty())   # never inside the text on a terminal
        progress = _Progress(shows, source, _size(capture))
        interrupted = _replay_one(replayer, frames, fmt, verbose, limit, writer, counter, out, progress, look,
                                  pcapng)
    elif writer is not None:
        writer.close()
    replayer.flush()
    warnings = []
    if replayer.count and replayer.otherhost_drops * 2 > replayer.count:
        warnings.append(f"{replayer.otherhost_drops} of {replayer.count} frames were dropped as PACKET_OTHERHOST: "
                        "the capture was probably taken on another host; try --in IFACE")
    replayer.agreement.finish()
    cursor = getattr(source, "cursor", None) or getattr(getattr(source, "reader", None), "cursor", None)
    if getattr(cursor, "malformed", 0):
        warnings.append(f"{cursor.malformed} pcapng packet blocks too short for their header (first at byte "
                        f"{cursor.first_malformed}): each is one malformed record, later blocks were replayed")
    late = getattr(getattr(source, "stats", None), "late", 0)
    if late:
        warnings.append(f"{late} frames came later than the reorder window (capture/reorder.py) allowed "
                        "and were replayed out of timestamp order")
    if interrupted:
        warnings.append(f"interrupted (SIGINT) after {counter.packets} packets: the output is partial")
    if summary:
        out.write(counter.render(net, warnings, partial=interrupted))
        out.write("\n" + replayer.agreement.summary_text() + "\n")
    else:
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
    if counters and net.nf is not None:
        out.write(_rule_listing(net.nf) if counters == "list" else net.nf.format_listing(counters=True))
        unhit = net.nf.unhit_rules()
        out.write(f"\nrules no packet hit: {len(unhit)}\n")
        for c in unhit:
            out.write(f"  {c['table']}/{c['chain']} rule {c['rule']}: {c['text']}\n")
    if conntrack:
        _print_conntrack(net, conntrack, out)
    if interrupted:
        out.flush()
        sys.exit(EXIT_INTERRUPTED)


def _size(path: str) -> int:
    import os
    try:
        return os.path.getsize(path) if path != "-" else 0
    except OSError:
        return 0


def _pcap_writer(path: str | None):
    """The --write-pcap file, opened before the replay so a bad path is a one-line error."""
    from pathtrace.packet.pcapwriter import PcapWriter
    if path is None:
        return None
    try:
        return PcapWriter(path)
    except OSError as exc:
        raise PathtraceError(f"--write-pcap {path}: cannot write: {exc.strerror or exc}") from None


class _Writers:
    """Per-record file outputs that need the record (pcapng, per-interface pcaps), written together."""

    def __init__(self, pcapng, pcap_dir):
        self.pcapng, self.pcap_dir = pcapng, pcap_dir

    def write_record(self, record, frame) -> None:
        if self.pcapng is not None:
            self.pcapng.write_record(record, frame)
        for e in record.emitted:
            if e.frame:
                self.pcap_dir.write_emitted(e.dev, e.frame, record.time)

    def close(self) -> None:
        if self.pcapng is not None:
            self.pcapng.close()
        self.pcap_dir.close()


def _pcap_dir_writer(path: str):
    from pathtrace.packet.pcapwriter import PcapDirWriter
    try:
        return PcapDirWriter(path)
    except OSError as exc:
        raise PathtraceError(f"--write-pcap-dir {path}: cannot write: {exc.strerror or exc}") from None


def _pcapng_writer(path: str | None, interfaces: list[str]):
    """The --write-pcapng file, opened before the replay so a bad path is a one-line error."""
    from pathtrace.packet.pcapngwriter import PcapngWriter
    if path is None:
        return None
    try:
        return PcapngWriter(path, interfaces)
    except OSError as exc:
        raise PathtraceError(f"--write-pcapng {path}: cannot write: {exc.strerror or exc}") from None


def _rule_listing(nf) -> str:
    """Every loaded table as iptables -t TABLE -L -v -n prints it (render/iptables_list.py); nftables
    rulesets in their own listing."""
    from pathtrace.net.netfilter.x_tables import TABLE_ORDER
    from pathtrace.render.iptables_list import format_table
    parts = [f"# iptables -t {name} -L -v -n\n" + format_table(nf.tables[name])
             for name in TABLE_ORDER if name in nf.tables]
    if nf.nft is not None and nf.nft.tables:
        parts.append(nf.nft.format_listing())
    return "\n".join(parts)


def _print_conntrack(net, form: str, out) -> None:
    """--conntrack: the table as the replay left it, at the last packet's time (conntrack -L form, whose
    summary line goes to stderr as conntrack's does, or one JSON object per entry)."""
    import json
    from pathtrace.net.netfilter.nf_conntrack_list import (
        conntrack_entry_json, conntrack_summary_line, format_conntrack_list,
    )
    table = net.nf.conntrack if net.nf is not None else None
    if table is None:
        click.echo("pathtrace: --conntrack: the host loads no conntrack (no rule needs it): the table is empty",
                   err=True)
        return
    if form == "json":
        for ct in table.entries(table.now):
            out.write(json.dumps({"conntrack": conntrack_entry_json(ct, table.now)}) + "\n")
        return
    listing = format_conntrack_list(table, table.now)
    if listing:
        out.write(listing + "\n")
    click.echo(conntrack_summary_line(table, table.now), err=True)


def _shows_sent_frames(capture: str, net, ingress: str | None, look: int = 2000) -> bool:
    """Whether the first frames of CAPTURE include one the host sent (pathtrace/direction.py): then the
    model's frames are kept from the start to be matched against the capture.  A pipe is not read
    twice: the replay finds out at its first sent frame."""
    import itertools
    import os
    from pathtrace.capture import read_frames
    from pathtrace.direction import Direction
    if capture == "-" or not os.path.isfile(capture):
        return False
    direction = Direction(net, ingress)
    try:
        return any(direction.sent_by_host(f) is not None for f in itertools.islice(read_frames(capture), look))
    except PathtraceError:
        return False


class _Look:
    """How records look on the way out: tcpdump's time stamp style and colour (render/brief.py)."""

    def __init__(self, tstamp: int, color: bool):
        from pathtrace.render.brief import TIME_FORMATS, BriefWriter, Clock
        self.brief = BriefWriter(Clock(TIME_FORMATS.get(tstamp, "since-first")), color)
        self.color = color

    @property
    def plain(self) -> bool:
        """Text as the per-flow templates write it: epoch times, no colour."""
        return self.brief.clock.style == "epoch" and not self.color

    def text(self, block: str) -> str:
        from pathtrace.render.brief import color_text, retime_text
        block = retime_text(block, self.brief.clock)
        return color_text(block) if self.color else block


def _replay_one(replayer, frames, fmt: str, verbose: bool, limit: int, writer, counter, out,
                progress: "_Progress | bool", look: "_Look | None" = None, pcapng=None) -> bool:
    """The single-process replay loop: render each record as it comes.  True when SIGINT stopped it
    (on a record boundary: every record printed has its frames in the --write-pcap file)."""
    from pathtrace.packet.decode import describe_frame
    from pathtrace.render.record import render_record
    from pathtrace.replay import LineLane
    look = look or _Look(0, False)
    if not isinstance(progress, _Progress):
        progress = _Progress(bool(progress))
    interrupted = False
    with _Interrupt() as stop:
        def write_record(record, frame) -> None:
            if writer is not None:       # frames first: a record on stdout always has its frames in the pcap
                for e in record.emitted:
                    writer.write(e.frame, record.time)
            if pcapng is not None:
                pcapng.write_record(record, frame)
            if fmt == "brief":
                record.packet = describe_frame(frame)
                stop.write(out, look.brief.line(record))
            elif fmt != "none":
                text = render_record(record, frame, fmt, verbose)
                stop.write(out, look.text(text) if look is not None and fmt == "text" and not look.plain else text)
            stop.check()

        def tick(n: int) -> None:
            progress.tick(n)
            stop.check()
        emit = write_record if fmt != "none" or writer is not None or pcapng is not None else None
        lines = None
        if fmt in ("jsonl", "text") and writer is None and pcapng is None and _utf8(out) and (fmt == "jsonl" or look is None or look.plain):
            # cached frames' output comes from their flows' templates (written by the C lane when built)
            from pathtrace.render.template import FlowTemplate, lane_flat_for
            write_bytes = _bytes_writer(out)

            def write_lines(data: bytes) -> None:
                write_bytes(data)
                stop.check()
            lines = LineLane(FlowTemplate, lane_flat_for(out), write_lines)
        try:
            replayer.stream(frames, counter, limit, tick, emit, lines)
        except PathtraceError as exc:
            progress.done()
            _fail(exc)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if writer is not None:
                writer.close()
            if pcapng is not None:
                pcapng.close()
    progress.done()
    return interrupted


def _utf8(out) -> bool:
    """Whether `out` writes UTF-8, the encoding of the C lane's output (JSON lines are ASCII)."""
    return (getattr(out, "encoding", None) or "utf-8").lower().replace("-", "").replace("_", "") == "utf8"


def _bytes_writer(out):
    """A write function for UTF-8 bytes on the text stream `out` (its binary buffer when it has one)."""
    raw = getattr(out, "buffer", None)
    if raw is None:
        return lambda data: out.write(data.decode("utf-8"))

    def write(data: bytes) -> None:
        out.flush()
        raw.write(data)
    return write


def _replay_jobs(host: str, capture: str, jobs: int, ingress, strict_mac: bool, fmt: str, verbose: bool, limit: int,
                 no_cache: bool, write_pcap: str | None, net, counter, replayer, out) -> bool:
    """--jobs N; False (with a note on stderr) when the replay has to run in one process."""
    from pathtrace.parallel import Job, replay_parallel, single_process_reasons
    reasons = single_process_reasons(net, write_pcap)
    if replayer.options.sent_frames:
        reasons.append("the capture shows frames the host sent, matched against earlier frames of any flow")
    if reasons:
        click.echo(f"pathtrace: --jobs {jobs}: one process ({'; '.join(reasons[:3])})", err=True)
        return False
    job = Job(host, capture, jobs, ingress, strict_mac, fmt, verbose, limit, not no_cache, "")
    if replay_parallel(job, net, counter, replayer, out):
        return True
    click.echo(f"pathtrace: --jobs {jobs}: flows shared state (neighbours, ICMP rate limits, IP IDs or "
               "NAT port search); replayed again in one process", err=True)
    return False


@main.command()
@click.argument("host", type=click.Path(dir_okay=False))
@click.option("--rules", type=click.Choice(["list", "save"]), default="list",
              help="The ruleset as iptables -L -v -n lists it (list), or in iptables-save syntax (save).")
def show(host: str, rules: str) -> None:
    """Print the loaded HOST: interfaces, routes, rules, neighbours, sockets, ruleset."""
    from pathtrace.host.loader import load_host
    from pathtrace.render.show import render_host
    from pathtrace.replay import create_namespace
    try:
        net = create_namespace(load_host(host))
    except PathtraceError as exc:
        _fail(exc)
        return
    click.echo(render_host(net, rules), nl=False)


from pathtrace.verify.command import verify as _verify; main.add_command(_verify)
from pathtrace.commands.snapshot import snapshot as _snapshot; main.add_command(_snapshot)  # noqa: E402


from pathtrace.commands.explain import explain as _explain; main.add_command(_explain)  # noqa: E402
from pathtrace.commands.check import check as _check; main.add_command(_check)  # noqa: E402
from pathtrace.commands.lint import lint as _lint; main.add_command(_lint)  # noqa: E402
from pathtrace.commands.diff import diff as _diff; main.add_command(_diff)  # noqa: E402


if __name__ == "__main__":  # pragma: no cover
    main()
