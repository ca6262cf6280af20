"""The seccomp filter of every run, modelled on Docker's default profile.

bwrap loads it (``--seccomp FD``) just before the command starts, with
``no_new_privs`` set, so it holds for every process of the run and cannot be
lifted. It is a deny-list over roscoe's other walls (mount, pid, ipc, uts and
optionally network namespaces; everything outside the staging layer mounted
read-only; no capabilities beyond the four a file job needs, see
cowfs.sandbox): it refuses what those walls leave open or what widens the
kernel's attack surface for no file job.

- **Kernel state that outlives the run**: keyrings (``add_key``, ``keyctl``,
  ``request_key``), module loading, kexec, swap, quotas, the clock, ``acct``,
  ``reboot``, ``syslog``.
- **The mount API and namespaces**: ``mount``, ``umount2``, ``pivot_root``,
  the new mount API (``fsopen`` and friends), ``setns``; ``unshare`` and
  ``clone`` with any namespace flag (no nested user namespace, which would
  hand the command a full set of capabilities over new namespaces); ``clone3``
  answers ENOSYS, as under Docker, so that libc falls back to ``clone``,
  whose flags a filter can read.
- **Kernel attack surface**: ``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``io_uring`` (its ops would also bypass this filter), ``kcmp``,
  ``open_by_handle_at`` and ``name_to_handle_at``, NUMA policy calls,
  ``lookup_dcookie``, ``vhangup``, ``fanotify_init``, ``memfd_secret``, and
  the x86 port I/O calls.
- **Personality flags** other than the ones Docker allows (no turning off
  address space randomisation).
- **Typing into the terminal**: the ``TIOCSTI`` and ``TIOCLINUX`` ioctls. A
  run shares roscoe's terminal and session (so that ^C reaches it); on a kernel
  with ``dev.tty.legacy_tiocsti=1`` those would let it queue a command in the
  shell that started roscoe.
- **With --network off, sockets of families that leave the network
  namespace**: ``socket()`` of any family but ``AF_UNIX``, ``AF_INET``,
  ``AF_INET6`` and ``AF_NETLINK`` fails with EAFNOSUPPORT (as on a kernel
  built without it): no ``AF_VSOCK`` to the hypervisor, for one. Unix
  sockets stay (Chromium will not start without one); the host's are out of
  reach another way (cowfs.sandbox.host_sockets).
- **Other ABIs**: a system call through the 32-bit ABI (``int 0x80`` on
  x86-64, AArch32 on arm64) or the x32 ABI is refused outright, since the
  deny-list names only the native numbers.

Refused calls fail with EPERM unless said otherwise. The program is classic
BPF, assembled here because it is about a hundred instructions and
libseccomp is not a Python dependency worth having. For an architecture
missing from ``_ABIS`` there is no filter: ``program`` says so with None.
"""

from __future__ import annotations

import errno
import os
import struct

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
# struct seccomp_data: nr, arch, instruction_pointer, args[6]; the low word of
# args[i] (little endian) is at 16 + 8 * i. Every argument read here is an
# int or one the kernel truncates to 32 bits.
_NR, _ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i


TIOCSTI, TIOCLINUX = 0x5412, 0x541C
_X32_BIT = 0x40000000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET; unshare also takes NEWTIME.
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
CLONE_NEWTIME = 0x00000080
# Docker's default profile: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16

DENIED = (
    # kernel state that outlives the run
    "add_key", "keyctl", "request_key", "init_module", "finit_module", "delete_module", "create_module",
    "query_module", "get_kernel_syms", "kexec_load", "kexec_file_load", "swapon", "swapoff", "quotactl",
    "quotactl_fd", "acct", "reboot", "syslog", "settimeofday", "clock_settime", "clock_adjtime",
    "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "open_tree", "open_tree_attr", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "setns",
    # kernel attack surface
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kcmp", "open_by_handle_at", "name_to_handle_at", "get_mempolicy", "set_mempolicy",
    "set_mempolicy_home_node", "mbind", "migrate_pages", "move_pages", "lookup_dcookie", "vhangup",
    "fanotify_init", "iopl", "ioperm", "memfd_secret",
)

# System call numbers (from the kernel's uapi headers: asm/unistd_64.h for
# x86-64, asm-generic/unistd.h for arm64). A name missing from an ABI's table
# does not exist there.
_X86_64 = {
    "ioctl": 16, "clone": 56, "clone3": 435, "unshare": 272, "personality": 135, "socket": 41,
    "add_key": 248, "keyctl": 250, "request_key": 249, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "create_module": 174, "query_module": 178, "get_kernel_syms": 177,
    "kexec_load": 246, "kexec_file_load": 320, "swapon": 167, "swapoff": 168, "quotactl": 179,
    "quotactl_fd": 443, "acct": 163, "reboot": 169, "syslog": 103, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "nfsservctl": 180, "sysfs": 139, "_sysctl": 156,
    "uselib": 134, "ustat": 136,
    "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "open_tree_attr": 467,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "setns": 308,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "kcmp": 312, "open_by_handle_at": 304,
    "name_to_handle_at": 303, "get_mempolicy": 239, "set_mempolicy": 238, "set_mempolicy_home_node": 450,
    "mbind": 237, "migrate_pages": 256, "move_pages": 279, "lookup_dcookie": 212, "vhangup": 153,
    "fanotify_init": 300, "iopl": 172, "ioperm": 173, "memfd_secret": 447,
}
_ARM64 = {
    "ioctl": 29, "clone": 220, "clone3": 435, "unshare": 97, "personality": 92, "socket": 198,
    "add_key": 217, "keyctl": 219, "request_key": 218, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "swapon": 224, "swapoff": 225,
    "quotactl": 60, "quotactl_fd": 443, "acct": 89, "reboot": 142, "syslog": 116, "settimeofday": 170,
    "clock_settime": 112, "clock_adjtime": 266, "nfsservctl": 42,
    "mount": 40, "umount2": 39, "pivot_root": 41, "open_tree": 428, "open_tree_attr": 467,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "setns": 268,
    "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "kcmp": 272, "open_by_handle_at": 265,
    "name_to_handle_at": 264, "get_mempolicy": 236, "set_mempolicy": 237, "set_mempolicy_home_node": 450,
    "mbind": 235, "migrate_pages": 238, "move_pages": 239, "lookup_dcookie": 18, "vhangup": 58,
    "fanotify_init": 262, "memfd_secret": 447,
}
# machine -> (audit arch of the native ABI, its numbers, whether x32 numbers share the arch)
_ABIS = {
    "x86_64": (0xC000003E, _X86_64, True),
    "aarch64": (0xC00000B7, _ARM64, False),
}


class _Assembler:
    """Classic BPF with named jump targets, resolved when the program is done."""

    def __init__(self) -> None:
        self.insns: list[tuple[int, int, str | None, str | None]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def load(self, offset: int) -> None:
        self.insns.append((_LD_W_ABS, offset, None, None))

    def jump(self, code: int, k: int, true: str | None, false: str | None = None) -> None:
        self.insns.append((code, k, true, false))

    def ret(self, value: int) -> None:
        self.insns.append((_RET_K, value, None, None))

    def assemble(self) -> bytes:
        out = []
        for at, (code, k, true, false) in enumerate(self.insns):
            jt = self.labels[true] - at - 1 if true else 0
            jf = self.labels[false] - at - 1 if false else 0
            assert 0 <= jt < 256 and 0 <= jf < 256, "a jump too far for classic BPF"
            out.append(struct.pack("=HBBI", code, jt, jf, k))
        return b"".join(out)


def program(machine: str | None = None, *, network: bool = True) -> bytes | None:
    """The filter for ``machine`` (default: this one), or None for an
    architecture it does not know. ``network=False`` adds the socket rule."""
    abi = _ABIS.get(machine or os.uname().machine)
    if abi is None:
        return None
    arch, numbers, x32 = abi
    asm = _Assembler()
    asm.load(_ARCH)
    asm.jump(_JEQ_K, arch, None, "deny")  # every other ABI of this machine
    asm.load(_NR)
    if x32:
        asm.jump(_JGE_K, _X32_BIT, "deny")
    checked = ("ioctl", "clone", "unshare", "personality") + (() if network else ("socket",))
    for name in checked:  # each jumps to the block of its own name, which reads its arguments
        asm.jump(_JEQ_K, numbers[name], name)
    asm.jump(_JEQ_K, numbers["clone3"], "enosys")
    for name in DENIED:
        if name in numbers:
            asm.jump(_JEQ_K, numbers[name], "deny")
    asm.ret(_ALLOW)

    asm.label("ioctl")
    asm.load(_arg(1))
    asm.jump(_JEQ_K, TIOCSTI, "deny")
    asm.jump(_JEQ_K, TIOCLINUX, "deny", "allow")
    asm.label("clone")
    asm.load(_arg(0))
    asm.jump(_JSET_K, CLONE_NAMESPACES, "deny", "allow")
    asm.label("unshare")
    asm.load(_arg(0))
    asm.jump(_JSET_K, CLONE_NAMESPACES | CLONE_NEWTIME, "deny", "allow")
    asm.label("personality")
    asm.load(_arg(0))
    for persona in PERSONALITIES:
        asm.jump(_JEQ_K, persona, "allow")
    asm.ret(_ERRNO | errno.EPERM)
    if not network:
        asm.label("socket")
        asm.load(_arg(0))
        for family in (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK):
            asm.jump(_JEQ_K, family, "allow")
        asm.ret(_ERRNO | errno.EAFNOSUPPORT)

    asm.label("allow")
    asm.ret(_ALLOW)
    asm.label("deny")
    asm.ret(_ERRNO | errno.EPERM)
    asm.label("enosys")
    asm.ret(_ERRNO | errno.ENOSYS)
    return asm.assemble()


def memfd(*, network: bool = True) -> int | None:
    """A memfd holding the program, at offset 0, for ``bwrap --seccomp FD``
    (close-on-exec: the caller dups it to the fd it names)."""
    code = program(network=network)
    if code is None:
        return None
    fd = os.memfd_create("roscoe-seccomp", os.MFD_CLOEXEC)
    os.write(fd, code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
