"""dist/: the systemd unit that runs ``roscoe serve`` (DESIGN.md "Trust model")."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path


from tests.support.system import REPO, missing

SYSTEMD = REPO / "dist" / "systemd"
SERVICE = SYSTEMD / "roscoe.service"
# Options that would make the live tree, /tmp, /dev/fuse, the run cgroups or
# bwrap's namespaces unusable to the service (the unit's comments say why).
BREAKS_ROSCOE = (
    "ProtectSystem", "ProtectHome", "ReadOnlyPaths", "PrivateTmp", "PrivateDevices", "DevicePolicy",
    "ProtectClock", "ProtectControlGroups", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectProc", "RestrictNamespaces", "SystemCallFilter", "CapabilityBoundingSet",
    "RestrictAddressFamilies", "MemoryDenyWriteExecute", "RestrictSUIDSGID", "LockPersonality",
)


def unit(path: Path, *, strict: bool = True) -> configparser.RawConfigParser:
    """The unit's sections and keys (``strict``: no key twice; a socket unit
    repeats ListenStream=, whose last value this keeps)."""
    parser = configparser.RawConfigParser(strict=strict, comment_prefixes=("#", ";"), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_the_service_runs_roscoe_serve_as_root_owning_its_dirs():
    service = unit(SERVICE)
    assert service.sections() == ["Unit", "Service", "Install"]
    s = service["Service"]
    assert s["ExecStart"] == "/usr/local/bin/roscoe serve"
    assert s["Environment"] == "ROSCOE_HOME=/var/lib/roscoe"
    assert (s["StateDirectory"], s["StateDirectoryMode"]) == ("roscoe", "0700")
    assert (s["RuntimeDirectory"], s["RuntimeDirectoryMode"]) == ("roscoe", "0755")
    assert "User" not in s and "DynamicUser" not in s  # root: it mounts, and owns the state dir
    assert s["NoNewPrivileges"] == "yes"
    assert [key for key in BREAKS_ROSCOE if key in s] == []
    assert service["Install"]["WantedBy"] == "multi-user.target"


def test_the_socket_unit_hands_both_sockets_to_the_service():
    assert sorted(p.name for p in SYSTEMD.iterdir()) == ["roscoe.service", "roscoe.socket"]
    s = unit(SYSTEMD / "roscoe.socket", strict=False)
    assert s.sections() == ["Unit", "Socket", "Install"]
    # (configparser keeps the last of repeated keys: read the pairs in order)
    lines = [line.split("=", 1) for line in (SYSTEMD / "roscoe.socket").read_text().splitlines()
             if line and not line.startswith("#") and "=" in line]
    pairs = [(k, v) for k, v in lines if k in ("ListenStream", "FileDescriptorName")]
    assert pairs == [("ListenStream", "/run/roscoe/roscoe.sock"), ("FileDescriptorName", "roscoe"),
                     ("ListenStream", "/run/roscoe/http.sock"), ("FileDescriptorName", "http")]
    assert s["Socket"]["Service"] == "roscoe.service"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze")
    # verify checks that ExecStart's binary exists: point a copy at one that
    # does (the real path is asserted above); everything else is as shipped
    copy = tmp_path / "roscoe.service"
    copy.write_text(SERVICE.read_text().replace("ExecStart=/usr/local/bin/roscoe ", "ExecStart=/bin/true "))
    shutil.copy(SYSTEMD / "roscoe.socket", tmp_path / "roscoe.socket")
    done = subprocess.run([analyze, "verify", "--man=no", "--generators=no", str(copy), str(tmp_path / "roscoe.socket")],
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
