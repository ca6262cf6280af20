"""cowfs.seccomp: the filter assembles for every ABI it knows, and names
every system call it refuses on x86-64 (the attacks themselves are in
tests/test_escape.py)."""

from __future__ import annotations

import pytest

from cowfs import seccomp


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("network", [True, False])
def test_the_filter_assembles(machine: str, network: bool) -> None:
    code = seccomp.program(machine, network=network)
    assert code is not None and len(code) % 8 == 0 and len(code) // 8 < 4096  # BPF_MAXINSNS


def test_every_refused_call_has_a_number_on_x86_64() -> None:
    assert [name for name in seccomp.DENIED if name not in seccomp._X86_64] == []


def test_an_unknown_architecture_gets_no_filter() -> None:
    assert seccomp.program("riscv64") is None
