"""Drop reasons from the skb:kfree_skb tracepoint, limited to the lab's host namespace.

With bpftrace installed, a small BPF program on the tracepoint prints every drop with the
network namespace (inode) of the skb's device, else of its socket, else of the tracepoint's
rx_sk; only drops in the lab's host namespace are kept, so busy namespaces elsewhere on the
machine cannot be charged to a packet.  It also prints the skbs received in namespaces other
than verify's own (net:netif_receive_skb): the first one in the lab after clear() is the
injected packet, and only its drops are its fate.  A fence (a getsid(2) call with a counter, which the
same program prints) marks "everything before this point has been read".
Without bpftrace, a tracefs instance of our own with a protocol filter is the fallback
(tracefs filters cannot select a namespace).  The reason enum is mapped through the
tracepoint's own print fmt so the names are the running kernel's, not a copied table.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from pathtrace.verify.netns import Unavailable, run

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
# Frames reaching the wire namespace are dropped by its disabled bridge port: not the host's doing.
IGNORED_REASONS = ("BRIDGE_INGRESS_STP_STATE",)
_LINE = re.compile(r"kfree_skb:.*?skbaddr=(\S+).*?protocol=(\d+) location=(\S+) reason: (\S+)")


@dataclass(slots=True)
class DropEvent:
    skbaddr: str
    protocol: int
    location: str       # function name, offset stripped (stable across runs)
    reason: str


def reason_table(fmt: str) -> dict[int, str]:
    """enum skb_drop_reason value -> name, from the `__print_symbolic` list of the print fmt."""
    return {int(num): name for num, name in re.findall(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}', fmt)}


def _tracefs_root() -> tuple[str, bool]:
    for root in TRACEFS:
        if os.path.exists(os.path.join(root, "instances")):
            return root, False
    root = TRACEFS[0]
    proc = run(["mount", "-t", "tracefs", "nodev", root], check=False)
    if proc.returncode != 0 or not os.path.exists(os.path.join(root, "instances")):
        raise Unavailable(f"tracefs is not available ({proc.stderr.strip() or 'no instances directory'})")
    return root, True


class TracefsDropTracer:
    """One tracing instance with only skb:kfree_skb enabled, filtered to IPv4 and ARP."""

    consumed: str | None = None     # consumption is not traced here: verify falls back on addresses
    tracks_consumption = False

    def __init__(self, tag: str):
        self.root, self.mounted = _tracefs_root()
        self.netns: int | None = None
        self.dir = os.path.join(self.root, "instances", tag)
        event = os.path.join(self.root, "events", "skb", "kfree_skb", "format")
        if not os.path.exists(event):
            raise Unavailable("this kernel has no skb:kfree_skb tracepoint")
        with open(event, encoding="utf-8") as fh:
            self.reasons = reason_table(fh.read())
        os.mkdir(self.dir)
        try:
            by_name = {v: k for k, v in self.reasons.items()}
            clauses = [f"(protocol == {ETH_P_IP} || protocol == {ETH_P_ARP})"]
            clauses += [f"reason != {by_name[r]}" for r in IGNORED_REASONS if r in by_name]
            ev = os.path.join(self.dir, "events", "skb", "kfree_skb")
            self._write(os.path.join(ev, "filter"), " && ".join(clauses))
            self._write(os.path.join(ev, "enable"), "1")
            self._write(os.path.join(self.dir, "tracing_on"), "1")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _write(path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    def clear(self) -> None:
        self._write(os.path.join(self.dir, "trace"), "")

    def limit_to(self, netns_inode: int) -> None:
        """tracefs cannot filter on a namespace: every namespace's drops stay visible."""
        self.netns = netns_inode

    def read(self) -> list[DropEvent]:
        """Events since the last clear(), oldest first."""
        with open(os.path.join(self.dir, "trace"), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        events = []
        for line in text.splitlines():
            m = _LINE.search(line)
            if not m:
                continue
            reason = m.group(4)
            if reason.isdigit():
                reason = self.reasons.get(int(reason), reason)
            if reason in IGNORED_REASONS:
                continue
            events.append(DropEvent(m.group(1), int(m.group(2)), m.group(3).split("+")[0], reason))
        return events

    def close(self) -> None:
        """Disable and remove the instance (rmdir fails while events are enabled)."""
        if not os.path.isdir(self.dir):
            return
        for path, text in ((os.path.join(self.dir, "tracing_on"), "0"),
                           (os.path.join(self.dir, "events", "skb", "kfree_skb", "enable"), "0")):
            try:
                self._write(path, text)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


FENCE_BASE = 1_000_000_000
FENCE_TIMEOUT = 2.0
START_TIMEOUT = 20.0
_BPF_LINE = re.compile(r"^D (\S+) (\d+) (\d+) (\d+) (\S+)$")
_BPF_RECV = re.compile(r"^R (\S+) (\d+)$")
_BPF_CONSUME = re.compile(r"^C (\S+) (\d+) (\S+)$")
_BPF_PROGRAM = """
tracepoint:skb:kfree_skb {
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = (uint32)0;
  if ($skb->dev != 0) { $ns = $skb->dev->nd_net.net->ns.inum; }
  else if ($skb->sk != 0) { $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; }
  else if (args->rx_sk != 0) { $ns = ((struct sock *)args->rx_sk)->__sk_common.skc_net.net->ns.inum; }
  printf("D %llx %u %u %d %s\\n", args->skbaddr, args->protocol, $ns, args->reason, ksym(args->location));
}
tracepoint:skb:consume_skb {
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = (uint32)0;
  if ($skb->dev != 0) { $ns = $skb->dev->nd_net.net->ns.inum; }
  else if ($skb->sk != 0) { $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; }
  if ($ns != HOMENS) { printf("C %llx %u %s\\n", args->skbaddr, $ns, ksym(args->location)); }
}
tracepoint:net:netif_receive_skb /((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum != HOMENS/ {
  printf("R %llx %u\\n", args->skbaddr, ((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum);
}
tracepoint:syscalls:sys_enter_getsid /pid == PID && args->pid < -FENCE/ {
  printf("F %d\\n", -args->pid - FENCE);
}
"""


def netns_inode(name: str) -> int:
    """The inode that identifies a named namespace (struct net's ns.inum)."""
    return os.stat(f"/run/netns/{name}").st_ino


@dataclass
class BpfDropTracer:
    """bpftrace on skb:kfree_skb; keeps drops of IPv4/ARP skbs in one namespace (limit_to)."""

    reasons: dict[int, str]
    proc: subprocess.Popen
    netns: int | None = None
    fences: int = 0
    injected: str | None = None     # address of the first skb received in the lab since clear()
    consumed: str | None = None     # where the injected skb was consumed (consume_skb), if it was
    tracks_consumption = True
    _buf: bytes = b""
    _events: list[DropEvent] = field(default_factory=list)

    @classmethod
    def start(cls) -> "BpfDropTracer":
        root = next((r for r in TRACEFS if os.path.exists(os.path.join(r, "events", "skb", "kfree_skb"))), None)
        if root is None:
            raise Unavailable("this kernel has no skb:kfree_skb tracepoint")
        with open(os.path.join(root, "events", "skb", "kfree_skb", "format"), encoding="utf-8") as fh:
            reasons = reason_table(fh.read())
        program = _BPF_PROGRAM.replace("PID", str(os.getpid())).replace("FENCE", str(FENCE_BASE)) \
            .replace("HOMENS", str(os.stat("/proc/self/ns/net").st_ino))
        proc = subprocess.Popen(["bpftrace", "-B", "none", "-e", program], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        tracer = cls(reasons, proc)
        try:
            tracer._await(lambda line: line.startswith("Attaching"), START_TIMEOUT)
            deadline = time.monotonic() + START_TIMEOUT
            while True:                        # "Attaching" is printed before the probes are live
                try:
                    tracer.fence(0.2)
                    break
                except Unavailable:
                    if tracer.proc.poll() is not None or time.monotonic() > deadline:
                        raise
        except BaseException:
            tracer.close()
            raise
        return tracer

    def limit_to(self, netns_inode: int) -> None:
        self.netns = netns_inode

    def _lines(self, done: "Callable[[str], bool]") -> bool:
        """Parse the complete lines buffered so far; True once `done(line)` was seen."""
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            if done(line):
                return True
            self._parse(line)
        return False

    def _await(self, done: "Callable[[str], bool]", timeout: float) -> None:
        """Read lines until `done(line)`; drop lines are parsed on the way."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not self._lines(done):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise Unavailable("bpftrace did not answer (kfree_skb tracer)")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise Unavailable("bpftrace exited (kfree_skb tracer)")
                self._buf += chunk

    def _parse(self, line: str) -> None:
        c = _BPF_CONSUME.match(line)
        if c:
            # a consumed skb may have lost its device (TCP's receive path) and have no socket: ns 0
            if (self.netns is not None and int(c.group(2)) in (self.netns, 0) and c.group(1) == self.injected
                    and self.consumed is None):
                self.consumed = c.group(3).split("+")[0]
            return
        r = _BPF_RECV.match(line)
        if r:
            if self.netns is not None and int(r.group(2)) == self.netns and self.injected is None:
                self.injected = r.group(1)
            return
        m = _BPF_LINE.match(line)
        if not m or self.netns is None or int(m.group(3)) != self.netns:
            return
        proto, reason = int(m.group(2)), int(m.group(4))
        name = self.reasons.get(reason, str(reason))
        if m.group(1) == self.injected and self.consumed is not None:
            return      # the injected skb was consumed: this is a new skb at the same address (an echo reply)
        if proto in (ETH_P_IP, ETH_P_ARP) and name not in IGNORED_REASONS:
            self._events.append(DropEvent(m.group(1), proto, m.group(5).split("+")[0], name))

    def fence(self, timeout: float = FENCE_TIMEOUT) -> None:
        """Return once every drop traced before this call has been read."""
        self.fences += 1
        marker = f"F {self.fences}"
        try:
            os.getsid(-(FENCE_BASE + self.fences))
        except OSError:
            pass
        self._await(lambda line: line == marker, timeout)

    def clear(self) -> None:
        """Forget what was read so far, without waiting for a fence (read() fences)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
        self._lines(lambda line: False)
        self._events.clear()
        self.injected = None
        self.consumed = None

    def read(self) -> list[DropEvent]:
        """Drops of the injected skb (the first one the lab received since clear()); all the lab's
        drops when no receive was seen.  Other skbs (an ICMP error or redirect the packet caused,
        dropped in OUTPUT) are the packet's consequences, not its fate."""
        self.fence()
        events, self._events = self._events, []
        if self.injected is None:
            return events
        return [e for e in events if e.skbaddr == self.injected]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


DropTracerT = BpfDropTracer | TracefsDropTracer


def DropTracer(tag: str) -> DropTracerT:
    """The namespace-limited BPF tracer when bpftrace is installed, else the tracefs instance
    (PATHTRACE_VERIFY_TRACER=tracefs forces the fallback)."""
    if shutil.which("bpftrace") and os.environ.get("PATHTRACE_VERIFY_TRACER") != "tracefs":
        return BpfDropTracer.start()
    return TracefsDropTracer(tag)
