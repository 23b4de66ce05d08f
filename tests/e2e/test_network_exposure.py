"""A local study's Ray is reachable from this machine only, and only with its token.

The study runs as a user runs it (`moe-study run`, no `--address`); while it runs, every
listening socket of its process tree (the CLI process and all its descendants: GCS, raylet,
agents, Ray workers) is read from /proc and must be on a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_smoke_study import ROOT

LOOPBACK_SPEC = Path(__file__).resolve().parent / "loopback.yaml"
TCP_LISTEN = "0A"

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/{tcp,udp}{,6}: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def is_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv4 socket of a v6 server
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets(pid: int) -> dict[int, tuple[str, str, int]]:
    """inode -> (protocol, address, port) of the sockets listening in ``pid``'s network
    namespace: TCP in LISTEN state, UDP bound with no peer."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            host, port = local.split(":")
            if proto.startswith("tcp") and state != TCP_LISTEN:
                continue
            if proto.startswith("udp") and int(remote.split(":")[1], 16) != 0:
                continue  # connected UDP: talks to one peer, accepts from no one else
            found[inode] = (proto, str(_address(host)), int(port, 16))
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def watch_listeners(proc: subprocess.Popen, timeout_s: float):
    """Poll the process tree until ``proc`` ends: every (process name, protocol, address, port)
    it listened on, and the RAY_AUTH_MODE each Ray server process ran with."""
    seen: set[tuple[str, str, str, int]] = set()
    auth: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        tree = process_tree(proc.pid)
        table = listening_sockets(proc.pid)
        for pid in tree:
            name = _name(pid)
            for inode in socket_inodes(pid) & table.keys():
                seen.add((name, *table[inode]))
            if name in ("gcs_server", "raylet") and name not in auth:
                auth[name] = _environ(pid).get("RAY_AUTH_MODE")
        time.sleep(0.2)
    return seen, auth


def test_a_local_study_listens_on_loopback_only_with_token_auth(tmp_path):
    # a caller's opt-out is not honoured: a study's Ray always requires its token
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(LOOPBACK_SPEC),
         "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        seen, auth = watch_listeners(proc, timeout_s=600)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    names = {name for name, *_ in seen}
    assert {"gcs_server", "raylet"} <= names, f"Ray's servers were not seen listening: {seen}"
    exposed = sorted(s for s in seen if not is_loopback(ipaddress.ip_address(s[2])))
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert auth == {"gcs_server": "token", "raylet": "token"}
    assert (tmp_path / "runs" / "loopback" / "study.json").exists()


def test_proc_addresses_are_decoded_in_host_order():
    assert str(_address("0100007F")) == "127.0.0.1"
    assert str(_address("00000000000000000000000001000000")) == "::1"
    mapped = _address("0000000000000000FFFF00000100007F")
    assert str(mapped) == "::ffff:7f00:1" and is_loopback(mapped)
    assert not is_loopback(_address("00000000")) and not is_loopback(_address("020200C0"))
