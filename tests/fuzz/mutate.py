"""Long fuzzing runs: mutate the repository's own captures, host files, rulesets, flow specs and
expectation files and feed them to tests/fuzz/targets.py, counting inputs and crashes.

    python tests/fuzz/mutate.py --seed 1 capture=10000 host=5000 ruleset=2000 expect=1000 flowspec=1000

Deterministic for a seed.  A crash is written to tests/data/fuzz/<target>/crash-<sha1>.bin (keep it:
tests/test_hostile_regressions.py replays every file there) and printed with its first lines.
Exit status 1 when anything crashed.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import TARGETS, Crash  # noqa: E402

CRASH_DIR = ROOT / "tests" / "data" / "fuzz"

# tokens hostile users type: non-ASCII digits, huge and edge numbers, YAML syntax, quotes, NUL, bad UTF-8
TOKENS = [b"\xc2\xb2", "\u0663".encode(), b"9" * 5000, b"-1", b"0", b"65536", b"4294967296", b"256",
          b"0x", b"/33", b"'", b'"', b"&a ", b"*a", b"!!python/object/apply:os.system ['true']", b"[", b"{",
          b"\x00", b"\xff\xfe", b"\x01", b"\t", b"\r\n", b":", b"- ", b"--", b"!", b"#", b"\\", b" peer ",
          b"%", b"1e9", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"COMMIT\n", b"*filter\n", b"-j ", b"-m recent --name ",
          b"a" * 300, b"<<: *a\n"]


def seeds(target: str) -> list[bytes]:
    """The repository's own inputs of each kind (small ones: a mutation run should be quick)."""
    if target == "capture":
        files = sorted(p for p in [*ROOT.glob("samples/*.pcap*"), *ROOT.glob("tests/data/**/*.pcap*")]
                       if p.stat().st_size < 300_000)
        import gzip
        out = [p.read_bytes()[:60_000] for p in files]
        return out + [gzip.compress(data, mtime=0) for data in out[:3]]     # .gz captures are read too
    if target == "host":
        return [p.read_bytes() for p in sorted([*ROOT.glob("rulesets/*.yaml"), *ROOT.glob("tests/data/**/*.yaml")])
                if not p.name.endswith(".expect.yaml") and "fuzz" not in p.parts and p.stat().st_size < 100_000]
    if target == "ruleset":
        out = []
        for p in sorted(ROOT.glob("rulesets/*.yaml")):
            text = p.read_text()
            if "iptables: |" in text:
                block = text.split("iptables: |", 1)[1]
                out.append("\n".join(l[2:] for l in block.splitlines() if l.startswith("  ")).encode())
        return out
    if target == "nftables":
        out = [p.read_bytes() for p in sorted([*ROOT.glob("tests/data/nftables/*.nft"),
                                                *ROOT.glob("tests/data/nftables/*.json")])]
        for p in sorted(ROOT.glob("rulesets/*-nft.yaml")):
            block = p.read_text().split("nftables: |", 1)[-1]
            out.append("\n".join(l[2:] for l in block.splitlines() if l.startswith("  ")).encode())
        return out
    if target == "expect":
        return [p.read_bytes() for p in sorted(ROOT.glob("rulesets/*.expect.yaml"))]
    if target == "flowspec":
        return [b"tcp 198.51.100.7:40000 203.0.113.2:22 --in eth0 --flags S --state established",
                b"icmp 1.2.3.4 5.6.7.8 --type 8 --code 0", b"udp 192.168.1.10:5000 8.8.8.8:53 --in lan",
                b"47 10.0.0.1 10.0.0.2 --ttl 1 --tos 0x10 --mark 0x1 --len 100 --df"]
    raise ValueError(target)


def mutate(rng: random.Random, data: bytes, pool: list[bytes], text: bool) -> bytes:
    """One to three random edits: byte flips, cuts, duplications, splices and hostile tokens; text
    mostly gets a word replaced (by a hostile token or a word of another seed), which keeps the file
    well-formed enough to reach the parsers behind the YAML."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        if text and rng.random() < 0.6:
            b = bytearray(_replace_word(rng, bytes(b), pool))
            continue
        op = rng.randrange(9 if text else 7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:                                   # flip bits
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:                                 # set a byte to an edge value
            b[min(pos, len(b) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:                                       # delete a run
            del b[pos:pos + rng.randint(1, 64)]
        elif op == 3:                                       # duplicate a run
            end = min(len(b), pos + rng.randint(1, 256))
            b[pos:pos] = b[pos:end] * rng.randint(1, 4)
        elif op == 4:                                       # truncate
            del b[pos:]
        elif op == 5 and len(b) >= 4:                       # an edge 32-bit value (lengths, magics)
            p = min(pos, len(b) - 4)
            b[p:p + 4] = rng.choice([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x0c\0\0\0", b"\x10\0\0\0",
                                     b"\0\0\0\x0c", rng.randbytes(4)])
        elif op == 6:                                       # splice another seed in
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            b[pos:pos] = other[start:start + rng.randint(1, 512)]
        elif op == 7:                                       # a hostile token
            b[pos:pos] = rng.choice(TOKENS)
        elif op == 8:                                       # shuffle or repeat whole lines
            lines = bytes(b).split(b"\n")
            if len(lines) > 1:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines.insert(j, lines[i]) if rng.random() < 0.5 else lines.__setitem__(i, lines[j])
                b = bytearray(b"\n".join(lines))
    return bytes(b)


def _replace_word(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One whitespace-separated word of one line replaced by a hostile token or another seed's word."""
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    words = lines[i].split(b" ")
    j = rng.randrange(len(words))
    if rng.random() < 0.5:
        new = rng.choice(TOKENS)
    else:
        other = rng.choice(rng.choice(pool).split(b"\n") or [b""]).split(b" ")
        new = rng.choice(other)
    if words[j].endswith(b":") and rng.random() < 0.7:
        new += b":"                                 # keep a YAML key a key
    words[j] = new
    lines[i] = b" ".join(words)
    return b"\n".join(lines)


def run(target: str, count: int, rng: random.Random, keep: bool) -> tuple[int, int, list[Path]]:
    """`count` mutated inputs through the target: (inputs, inputs taken rather than refused, crashes)."""
    pool = seeds(target)
    fn = TARGETS[target]
    crashes: list[Path] = []
    taken = 0
    for i in range(count):
        data = mutate(rng, rng.choice(pool), pool, target != "capture")
        try:
            taken += bool(fn(data))
        except Crash as exc:
            digest = hashlib.sha1(data).hexdigest()[:16]
            path = CRASH_DIR / target / f"crash-{digest}.bin"
            if keep:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            crashes.append(path)
            print(f"{target} #{i}: CRASH {path.name}: {str(exc).splitlines()[0]}", flush=True)
    return count, taken, crashes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=["capture=10000", "host=5000", "expect=1000", "flowspec=1000"],
                    help="TARGET=COUNT (targets: " + ", ".join(TARGETS) + ")")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-keep", action="store_true", help="do not write crashing inputs to tests/data/fuzz/")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    total_crashes = 0
    for spec in args.runs:
        target, _, n = spec.partition("=")
        start = time.monotonic()
        count, taken, crashes = run(target, int(n or 1000), rng, not args.no_keep)
        total_crashes += len(crashes)
        print(f"{target}: {count} mutated inputs ({taken} taken, {count - taken - len(crashes)} refused with a "
              f"one-line error), {len(crashes)} crashes, {time.monotonic() - start:.0f} s", flush=True)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
