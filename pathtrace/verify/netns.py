"""Small, bounded wrappers around `ip`, `ip netns exec` and setns(2).

Every command has a timeout so a wedged tool can never hang a verify run, and errors
carry the command line so a failed host build says which route or rule the kernel refused.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator, Sequence

CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT = 10.0


class LabError(RuntimeError):
    """The kernel (or a tool) refused part of the host; the message names the command."""


class Unavailable(RuntimeError):
    """This machine cannot run the kernel side (no root, no netns, no tool): skip, don't fail."""


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out: {' '.join(argv)}") from None
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip() or proc.returncode}")
    return proc


def ns_exec(ns: str, argv: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", "netns", "exec", ns, *argv], stdin=stdin, check=check)


def write_sysctl(ns: str, key: str, value: str | int, check: bool = True) -> None:
    """Write net.x.y under /proc/sys inside the namespace (sysctl(8) may not be installed)."""
    path = "/proc/sys/" + key.replace(".", "/")
    text = " ".join(str(int(v, 0)) for v in str(value).split())     # tcp_rmem takes three numbers
    ns_exec(ns, ["sh", "-c", f"echo {text} > {path}"], check=check)


def check_available() -> None:
    """Raise Unavailable with a clear reason when the kernel side cannot run here."""
    if os.geteuid() != 0:
        raise Unavailable("verify needs root (network namespaces, AF_PACKET, tracefs)")
    if shutil.which("ip") is None:
        raise Unavailable("verify needs iproute2's `ip` (apt-get install -y iproute2)")
    if not os.path.exists("/proc/self/ns/net"):
        raise Unavailable("this kernel has no network namespaces")
    probe = f"ptv-probe-{os.getpid()}"
    proc = run(["ip", "netns", "add", probe], check=False)
    if proc.returncode != 0:
        raise Unavailable(f"cannot create a network namespace: {proc.stderr.strip()}")
    run(["ip", "netns", "del", probe], check=False)


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the body with this thread inside `ns`; sockets created there stay in `ns`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns({ns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover - would leave us inside the lab
                raise LabError("setns back to the original namespace failed")
    finally:
        os.close(target)
        os.close(home)
