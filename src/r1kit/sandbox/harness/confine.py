"""What confines the sandbox's processes from inside: the seccomp filter, capabilities, uids, rlimits, /tmp.

Part of the shipped harness (see r1kit.sandbox.harness). The judge calls these before and after it forks the
program; the program process calls them before it runs a line of untrusted code. ctypes is imported when first
needed (prctl, capset, mount, the filter).
"""

import os
import resource

SIGKILL = 9
CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN = 5, 6, 7, 21
_libc = None


def libc():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result, what):
    if result != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), f"{what} failed")


def prctl(option, value, what):
    _check(libc().prctl(option, value, 0, 0, 0), f"prctl({what})")


def non_dumpable():
    """PR_SET_DUMPABLE 0: no process without CAP_SYS_PTRACE may ptrace the judge, read its memory or open its
    /proc/PID/{mem,environ,fd/*} (the program runs with no capabilities)."""
    prctl(4, 0, "PR_SET_DUMPABLE, 0")


def die_with_bwrap():
    """PR_SET_PDEATHSIG SIGKILL again: changing uid clears the one bwrap's --die-with-parent set. (Were bwrap gone
    in between, reading the request's second part fails and the judge exits: the namespace goes with it.)"""
    prctl(1, SIGKILL, "PR_SET_PDEATHSIG")


def set_capabilities(caps=()):
    """Effective = permitted = `caps`; inheritable and so ambient empty (capset(2), version 3: two 32-bit words)."""
    import ctypes

    mask = 0
    for cap in caps:
        mask |= 1 << cap
    low, high = mask & 0xFFFFFFFF, mask >> 32
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(low, low, 0, high, high, 0)
    _check(libc().capset(header, data), "capset")


def become(uid, keep=()):
    """Drop to `uid` (fresh per execution when bwrap runs as root: see r1kit.sandbox.bwrap), with no groups and no
    capabilities but `keep` (the judge keeps CAP_KILL, to end the program's processes, whose uid is another)."""
    if keep:
        prctl(8, 1, "PR_SET_KEEPCAPS")  # the uid change below would clear every capability
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    set_capabilities(keep)
    if keep:
        prctl(8, 0, "PR_SET_KEEPCAPS")


def mount_tmp(size_mb, files):
    """The writable /tmp: a tmpfs capped in bytes and in inodes (bwrap's own --tmpfs caps only bytes, and 272,500
    empty files cost 340 MB of kernel memory). Needs CAP_SYS_ADMIN, which the judge then drops."""
    options = f"size={int(size_mb)}m,nr_inodes={int(files)},mode=1777".encode()
    _check(libc().mount(b"tmpfs", b"/tmp", b"tmpfs", 2 | 4, options), "mount /tmp")  # MS_NOSUID | MS_NODEV
    os.chdir("/tmp")


def set_limits(limits):
    """The program's rlimits, hard = soft (nothing without CAP_SYS_RESOURCE raises them)."""
    mb = 1 << 20
    for name, soft, hard in (
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1),
        ("RLIMIT_AS", limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        ("RLIMIT_NPROC", limits["nproc"], limits["nproc"]),
        ("RLIMIT_NOFILE", limits["open_files"], limits["open_files"]),
        ("RLIMIT_FSIZE", limits["file_mb"] * mb, limits["file_mb"] * mb),
        ("RLIMIT_MEMLOCK", 0, 0),
        ("RLIMIT_MSGQUEUE", 0, 0),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))


def set_judge_limits(limits):
    """The judge's own: its address space (what it decodes is bounded too: see wire.py) and CPU time."""
    memory = max(limits["judge_mb"], limits["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(limits["wall_s"]) * 2 + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


# ---- seccomp: system calls the program never needs, refused ------------------------------------------------

# seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the low 32 bits first: both tables are little-endian).
# Return values and BPF opcodes from linux/seccomp.h and linux/filter.h.
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENY = {  # name: (x86_64, aarch64) syscall numbers
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "unshare": (272, 97),
    "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "acct": (163, 89), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # memory no rlimit sees: SysV shared memory (and message queues, semaphores), memfd files
    "shmget": (29, 194), "msgget": (68, 186), "semget": (64, 190), "memfd_create": (319, 279),
    "memfd_secret": (447, 447),
}
_EPERM, _ENOSYS, _EAFNOSUPPORT = 1, 38, 97
# name: ((x86_64, aarch64), ((arg, value), ...), errno): allowed only when every listed argument has that value
_ONLY_IF = {
    "socket": ((41, 198), ((0, 1),), _EAFNOSUPPORT),  # AF_UNIX only: no inet, netlink, packet, vsock, ...
    "socketpair": ((53, 199), ((0, 1),), _EAFNOSUPPORT),
    "prlimit64": ((302, 261), ((0, 0),), _EPERM),  # on itself (pid 0) only
    # scheduling and I/O class of itself only: not the judge's (which, as non-root, shares the program's uid)
    "sched_setaffinity": ((203, 122), ((0, 0),), _EPERM),
    "sched_setscheduler": ((144, 119), ((0, 0),), _EPERM),
    "sched_setparam": ((142, 118), ((0, 0),), _EPERM),
    "sched_setattr": ((314, 274), ((0, 0),), _EPERM),
    "setpriority": ((141, 140), ((0, 0), (1, 0)), _EPERM),  # PRIO_PROCESS, who = 0
    "ioprio_set": ((251, 30), ((0, 1), (1, 0)), _EPERM),  # IOPRIO_WHO_PROCESS, who = 0
}
_CLONE, _CLONE3 = (56, 220), 435
_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def seccomp_filter(machine):
    """The classic-BPF program as (code, jt, jf, k) tuples; None on an architecture without a table here."""
    if machine not in _ARCH:
        return None
    col = 0 if machine == "x86_64" else 1
    deny = _ERRNO | _EPERM
    prog = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, _ARCH[machine]), (_RET, 0, 0, _KILL), (_LD_ABS, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers would get past the table
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, deny)]
    for numbers in _DENY.values():
        prog += [(_JEQ, 0, 1, numbers[col]), (_RET, 0, 0, deny)]
    prog += [(_JEQ, 0, 1, _CLONE3), (_RET, 0, 0, _ERRNO | _ENOSYS)]  # libc falls back to clone, checked below
    for numbers, conditions, errno in _ONLY_IF.values():
        # per condition: load the argument, on a mismatch jump to the refusal; all matched: allow
        m = len(conditions)
        body = []
        for i, (arg, value) in enumerate(conditions):
            body += [(_LD_ABS, 0, 0, 16 + 8 * arg), (_JEQ, 0, 2 * (m - i) - 1, value)]
        body += [(_RET, 0, 0, _ALLOW), (_RET, 0, 0, _ERRNO | errno)]
        prog += [(_JEQ, 0, len(body), numbers[col])] + body  # another call: skip the block (nr still loaded)
    prog += [(_JEQ, 0, 3, _CLONE[col]), (_LD_ABS, 0, 0, 16), (_JSET, 0, 1, _NEW_NAMESPACES), (_RET, 0, 0, deny),
             (_RET, 0, 0, _ALLOW)]
    return prog


def install_seccomp():
    """Load the filter into this process (inherited by its children and threads); False where there is none."""
    import ctypes

    prog = seccomp_filter(os.uname().machine)
    if prog is None:
        return False

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    array = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), ctypes.cast(array, ctypes.POINTER(SockFilter)))
    prctl(38, 1, "PR_SET_NO_NEW_PRIVS")
    _check(libc().prctl(22, 2, ctypes.byref(fprog), 0, 0), "installing the seccomp filter")  # SECCOMP_MODE_FILTER
    return True
