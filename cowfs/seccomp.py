"""The seccomp filter of every run: no typing into the terminal.

A run shares roscoe's terminal and session (so that ^C reaches it), which on a
kernel with ``dev.tty.legacy_tiocsti=1`` lets it push keystrokes into the
shell that started roscoe with the ``TIOCSTI`` ioctl: a command typed there
runs outside the sandbox once roscoe returns. ``TIOCLINUX`` can do the same
on a virtual console. bubblewrap's answer is ``--new-session``, which would
take ^C away from the command; flatpak's is a seccomp filter refusing those
two ioctls (EPERM), which is this one.

The filter is a classic BPF program, written out here because it is nine
instructions and libseccomp is not a Python dependency worth having; bwrap
loads it with ``--seccomp FD``. Every other system call is allowed: roscoe's
isolation is the mount, pid, ipc (and optionally network) namespaces and the
dropped capabilities, not a system call allow-list.
"""

from __future__ import annotations

import errno
import os
import struct

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_ARCH_OFFSET, _NR_OFFSET, _ARG1_OFFSET = 4, 0, 24  # struct seccomp_data; low word of args[1] (little endian)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

# machine -> (audit arch, ioctl numbers of that arch's ABIs)
_ARCHES = {
    "x86_64": ((0xC000003E, (16, 0x40000000 | 514)), (0x40000003, (54,))),  # x86-64 and x32; i386
    "aarch64": ((0xC00000B7, (29,)), (0x40000028, (54,))),  # arm64; 32-bit arm
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this one), or None for an
    architecture it does not know (the run then goes without it).

    Per ABI: load the arch, skip the block unless it matches, load the system
    call number, jump to CHECK if it is that ABI's ioctl, else allow. After
    the blocks: allow (an ABI this machine cannot run). CHECK: load the
    ioctl request; TIOCSTI or TIOCLINUX: EPERM; else allow."""
    arches = _ARCHES.get(machine or os.uname().machine)
    if arches is None:
        return None
    sizes = [4 + len(nrs) for _, nrs in arches]
    check_at = sum(sizes) + 1
    deny_at = check_at + 4
    insns: list[bytes] = []
    for (arch, nrs), size in zip(arches, sizes):
        start = len(insns)
        insns.append(_insn(_LD_W_ABS, _ARCH_OFFSET))
        insns.append(_insn(_JEQ_K, arch, 0, size - 2))
        insns.append(_insn(_LD_W_ABS, _NR_OFFSET))
        for nr in nrs:
            insns.append(_insn(_JEQ_K, nr, check_at - (len(insns) + 1), 0))
        insns.append(_insn(_RET_K, _ALLOW))
        assert len(insns) == start + size
    insns.append(_insn(_RET_K, _ALLOW))
    assert len(insns) == check_at
    insns.append(_insn(_LD_W_ABS, _ARG1_OFFSET))
    insns.append(_insn(_JEQ_K, TIOCSTI, deny_at - (len(insns) + 1), 0))
    insns.append(_insn(_JEQ_K, TIOCLINUX, deny_at - (len(insns) + 1), 0))
    insns.append(_insn(_RET_K, _ALLOW))
    assert len(insns) == deny_at
    insns.append(_insn(_RET_K, _ERRNO | errno.EPERM))
    return b"".join(insns)


def memfd() -> int | None:
    """A memfd holding the program, at offset 0, for ``bwrap --seccomp FD``
    (close-on-exec: the caller dups it to the fd it names)."""
    code = program()
    if code is None:
        return None
    fd = os.memfd_create("roscoe-seccomp", os.MFD_CLOEXEC)
    os.write(fd, code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
