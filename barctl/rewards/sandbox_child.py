"""The sandboxed process: confine itself, then run the model's code.

Run by ``sandbox.py`` as ``python -I sandbox_child.py WORKDIR CONFINE_FS MEMORY_MB CPU_S
DEADLINE_S``, never imported, so it uses the standard library only. ``WORKDIR/main.py``
holds the code.

The process forks at once and stays behind as a watchdog: it kills the code when
DEADLINE_S have passed or when its stdin (a pipe from barctl) reaches end of file,
which happens as soon as barctl is gone, however it ended. The code's process sets its
own resource limits (address space, CPU time, file size, open files, core dumps) before
anything else.

When barctl runs as root, ``sandbox.py`` first runs ``python -I sandbox_child.py
--as-nobody WORKDIR PATH... -- COMMAND...``, which drops to nobody (uid and gid 65534,
no supplementary groups) and execs COMMAND (``unshare ...`` and the run above). A user
namespace made by root would map the code's user to root outside, which reads
/etc/shadow and every other root-only file; made by nobody, root's files are not mapped
into it. nobody cannot reach an interpreter installed under a directory only root may
enter (``/root``, mode 700, holds pyenv's), and pyenv's python finds its libpython by
an absolute path. So first, in a new private mount namespace, a tmpfs (mode 755) covers
each such directory, with every PATH below it bind-mounted back at its own path: the
interpreter, its libraries and this script keep their paths, nothing else of that
directory is visible, and the host's mounts are untouched. Any failure exits with
SETUP_FAILED before COMMAND runs: model code never runs as root by this path.

With CONFINE_FS=1 the process is root of fresh user, mount, PID and network
namespaces (made by ``unshare``), and the watchdog is the namespace's PID 1: when it
exits, everything in the namespace dies. Its child gives WORKDIR a fresh size-capped
tmpfs, then remounts every other mount read-only, nosuid and nodev (so no file outside
WORKDIR can be written and no device node opened).

Always, before the model's code runs, a seccomp filter denies creating processes
(fork, vfork, clone without CLONE_THREAD; clone3 reports ENOSYS so threads fall back
to clone), socket(2), mount and namespace changes, ptrace, io_uring and memfd_create
(whose memory the address-space limit does not count). The filter is
inherited and cannot be removed, so it also stops the code undoing the mounts.
"""

import ctypes
import os
import platform
import re
import resource
import runpy
import select
import signal
import stat
import struct
import sys
import tempfile
import time

SETUP_FAILED = 125  # exit status when confinement fails; the model's code never ran
KILLED = 128 + signal.SIGKILL  # the watchdog's exit status when it killed the code
WORKDIR_MB = 64
OPEN_FILES = 64

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_MOVE = 1, 2, 4, 8, 32, 4096, 8192
MS_REC, MS_PRIVATE = 16384, 1 << 18
CLONE_NEWNS = 0x20000
NOBODY = 65534

# audit arch, then syscall numbers: denied with EPERM, clone3 (ENOSYS), clone (EPERM unless a thread)
_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        # fork vfork socket ptrace mount umount2 pivot_root chroot unshare setns
        # open_tree..fspick mount_setattr io_uring_setup/enter/register memfd_create
        (57, 58, 41, 101, 165, 166, 155, 161, 272, 308, 428, 429, 430, 431, 432, 433, 442, 425, 426, 427, 319),
        435,
        56,
    ),
    "aarch64": (
        0xC00000B7,
        # socket ptrace mount umount2 pivot_root chroot unshare setns, then as above
        (198, 117, 40, 39, 41, 51, 97, 268, 428, 429, 430, 431, 432, 433, 442, 425, 426, 427, 279),
        435,
        220,
    ),
}
_EPERM, _ENOSYS, _CLONE_THREAD = 1, 38, 0x10000
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_W|BPF_ABS load, jumps on K, return K
_X32_BIT = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None):
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    args = (encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))
    _check(_libc.mount(*args), f"mount {target}")


def _mounts():
    """(mount point, per-mount options) for every mount this process sees."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            yield point, fields[5].split(",")


def confine_filesystem(workdir):
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={WORKDIR_MB}m,mode=700")
    for point, options in _mounts():
        if point != workdir:
            # noexec cannot be dropped from an inherited mount; the atime mode is kept by default
            noexec = MS_NOEXEC if "noexec" in options else 0
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | noexec)


def _closed_ancestor(path):
    """The outermost directory above ``path`` that other users may not enter, or None."""
    parts = path.split(os.sep)[1:-1]
    for depth in range(1, len(parts) + 1):
        directory = os.sep + os.sep.join(parts[:depth])
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def _outermost(paths):
    """``paths`` resolved, without those inside another one."""
    resolved = sorted({os.path.realpath(p) for p in paths})
    return [p for p in resolved if not any(p.startswith(q + os.sep) for q in resolved if q != p)]


def expose(paths, workdir):
    """Make every path in ``paths`` reachable by any user, in a mount namespace of this process's own."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    covered = {}
    for path in _outermost(paths):
        closed = _closed_ancestor(path)
        if closed is not None:
            covered.setdefault(closed, []).append(path)
    for closed, inside in covered.items():
        # built aside while the paths are still reachable, then moved over the closed directory
        cover = tempfile.mkdtemp(dir=workdir)
        _mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for path in inside:
            target = os.path.join(cover, os.path.relpath(path, closed))
            if os.path.isdir(path):
                os.makedirs(target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "x").close()
            _mount(path, target, None, MS_BIND | MS_REC)
        _mount(cover, closed, None, MS_MOVE)
        os.rmdir(cover)


def become_nobody(workdir):
    for name in [workdir, *(os.path.join(workdir, entry) for entry in os.listdir(workdir))]:
        os.chown(name, NOBODY, NOBODY)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _filter_program():
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise OSError(f"no seccomp filter for {machine}")
    arch, denied, clone3, clone = _SYSCALLS[machine]
    ins = lambda code, k, jt=0, jf=0: struct.pack("HBBI", code, jt, jf, k)  # noqa: E731
    program = [
        ins(_LD, 4),  # seccomp_data.arch
        ins(_JEQ, arch, 1, 0),
        ins(_RET, _RET_KILL),
        ins(_LD, 0),  # seccomp_data.nr
        ins(_JGE, _X32_BIT, 0, 1),
        ins(_RET, _RET_ERRNO | _EPERM),
    ]
    for nr in denied:
        program += [ins(_JEQ, nr, 0, 1), ins(_RET, _RET_ERRNO | _EPERM)]
    program += [
        ins(_JEQ, clone3, 0, 1),
        ins(_RET, _RET_ERRNO | _ENOSYS),
        ins(_JEQ, clone, 0, 3),
        ins(_LD, 16),  # low half of seccomp_data.args[0], the clone flags
        ins(_JSET, _CLONE_THREAD, 1, 0),
        ins(_RET, _RET_ERRNO | _EPERM),
        ins(_RET, _RET_ALLOW),
    ]
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp():
    program = _filter_program()
    buffer = ctypes.create_string_buffer(b"".join(program))
    fprog = _SockFprog(len(program), ctypes.addressof(buffer))
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


def watch(deadline_s):
    """Fork; the parent stays behind as the watchdog and exits with the child's status.

    It kills the child at the deadline, or when stdin (barctl's pipe) ends: barctl is gone.
    In a PID namespace it is PID 1; the kernel drops signals that PID 1 sends itself
    (os.abort, signal.alarm, os.kill), so the model's code must not run as PID 1 either.
    """
    pid = os.fork()
    if not pid:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the code cannot hold barctl's pipe open
        os.close(null)
        return
    end = time.monotonic() + deadline_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        remaining = end - time.monotonic()
        readable, _, _ = select.select([0], [], [], max(0.0, min(0.05, remaining)))
        if remaining <= 0 or (readable and not os.read(0, 1)):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os._exit(KILLED)


def set_limits(memory_mb, cpu_s):
    for limit, value in (
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, WORKDIR_MB << 20),
        (resource.RLIMIT_NOFILE, OPEN_FILES),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))


def drop_root(argv):
    """``--as-nobody WORKDIR PATH... -- COMMAND...``: expose the paths, become nobody, exec COMMAND."""
    split = argv.index("--")
    workdir, paths, command = argv[1], argv[2:split], argv[split + 1:]
    try:
        expose(paths, workdir)
        become_nobody(workdir)
    except OSError as exc:
        print(f"sandbox setup failed: cannot run the code as an unprivileged user: {exc!r}", file=sys.stderr)
        sys.exit(SETUP_FAILED)
    os.execvp(command[0], command)


def main():
    if sys.argv[1] == "--as-nobody":
        drop_root(sys.argv[1:])
    workdir, confine_fs = sys.argv[1], sys.argv[2] == "1"
    memory_mb, cpu_s, deadline_s = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    watch(deadline_s)
    set_limits(memory_mb, cpu_s)
    script = os.path.join(workdir, "main.py")
    try:
        with open(script, "rb") as f:
            source = f.read()
        if confine_fs:
            confine_filesystem(workdir)
            with open(script, "wb") as f:
                f.write(source)
        os.chdir(workdir)
        install_seccomp()
    except OSError as exc:
        print(f"sandbox setup failed: {exc!r}", file=sys.stderr)
        sys.exit(SETUP_FAILED)
    sys.argv = ["main.py"]
    runpy.run_path("main.py", run_name="__main__")


if __name__ == "__main__":
    main()
