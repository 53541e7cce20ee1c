"""Host file loading: derived routes, sysctl semantics, and one-line errors with line numbers."""
from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from pathtrace.cli import main
from pathtrace.errors import HostFileError
from pathtrace.host.loader import load_host
from pathtrace.net.core.net_namespace import build_net

GOOD = """
interfaces:
  - name: eth0
    mac: 02:00:00:00:00:01
    addresses: [10.0.0.1/24, 10.0.1.1/24]
sysctl:
  net.ipv4.conf.all.rp_filter: 2
  net.ipv4.conf.eth0.rp_filter: 1
  net.ipv4.ip_forward: 1
routes:
  - default via 10.0.0.254
rules:
  - fwmark 0x1 lookup 100
"""


def write(tmp_path, text):
    p = tmp_path / "h.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_kernel_derived_routes_and_rules(tmp_path):
    net = build_net(load_host(write(tmp_path, GOOD)))
    local = [fa.describe() for fa in net.fib_tables[255].routes()]
    assert "local 10.0.0.1 dev eth0 proto kernel scope host src 10.0.0.1" in local
    assert "broadcast 10.0.0.255 dev eth0 proto kernel scope link src 10.0.0.1" in local
    assert "local 127.0.0.0/8 dev lo proto kernel scope host src 127.0.0.1" in local
    main_routes = [fa.describe() for fa in net.fib_tables[254].routes()]
    assert "10.0.1.0/24 dev eth0 proto kernel scope link src 10.0.1.1" in main_routes
    assert [r.priority for r in net.fib_rules] == [0, 32765, 32766, 32767]


def test_sysctl_combination_rules(tmp_path):
    net = build_net(load_host(write(tmp_path, GOOD)))
    assert net.sysctl.dev("eth0", "rp_filter") == 2       # max(all, dev)
    assert net.sysctl.dev("eth0", "forwarding") == 1      # ip_forward propagates to devices
    assert net.sysctl.dev("eth0", "send_redirects") == 1  # kernel default


@pytest.mark.parametrize("text,line,fragment", [
    ("bogus: 1\n", 1, "unknown key 'bogus'"),
    ("interfaces:\n  - name: eth0\n    addresses: [10.0.0.300/24]\n", 3, "bad address"),
    ("interfaces:\n  - name: eth0\n    addresses: [10.0.0.1/24]\nroutes:\n  - default via 10.9.9.9\n", 5,
     "gateway is not reachable"),
    ("interfaces:\n  - name: eth0\nroutes:\n  - 10.0.0.0/8 dev eth9\n", 4, "unknown interface 'eth9'"),
    ("interfaces:\n  - name: eth0\n    colour: red\n", 3, "unknown interface key 'colour'"),
    ("sysctl:\n  net.ipv4.nope: 1\n", 2, "unknown sysctl"),
    ("interfaces:\n  - name: eth0\nneighbours:\n  - 10.0.0.2 dev eth0 lladdr zz:00:00:00:00:00\n", 4, "bad MAC"),
    ("interfaces: [\n", 2, "YAML syntax error"),
])
def test_errors_name_the_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(HostFileError) as err:
        load_host(path)
    assert err.value.line == line
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_cli_bad_host_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, "bogus: 1\n")
    result = CliRunner().invoke(main, ["show", path])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and f"{path}:1:" in result.output
    assert "Traceback" not in result.output


def test_cli_bad_capture_exit_2(tmp_path):
    host = write(tmp_path, GOOD)
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"not a capture at all")
    result = CliRunner().invoke(main, ["replay", host, str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
