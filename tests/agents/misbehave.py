"""A test agent that breaks one rule on purpose (runner protocol: cwd is the working dir, artifacts go to out/).

misbehave.py files N [SIZE]      write N files of SIZE bytes (default 10) and succeed
misbehave.py big SIZE            write one file of SIZE bytes
misbehave.py slow SECONDS        sleep, then write one file
misbehave.py until UNIXTIME      sleep until that wall-clock time (a rerun after it finishes at once), write one file
misbehave.py disk BYTES          fill the working directory (tmp/) with BYTES, 20 MiB per second
misbehave.py stubborn PIDFILE    ignore SIGTERM, start a child that ignores it too, record both pids, sleep
misbehave.py slowfiles N PIDFILE write N files, record the pid, then sleep 0.2 s per file (for crash tests)
misbehave.py symlink | subdir    leave a symlink / a directory in out/
misbehave.py swapout TARGET      replace out/ itself with a symlink to TARGET (exit 1 if it is not allowed to)
misbehave.py fail                print a line and exit 3
misbehave.py env                 write the environment it sees to out/env.json
misbehave.py chatty LINES        print LINES long lines, then a final JSON report
misbehave.py escape PIDFILE [clean]  a grandchild calls setsid() and sleeps (with ``clean``: after exec'ing with
                                 an empty environment); records its pid and exits at once
misbehave.py peek                try to read the parent's (the worker's) /proc environ; write what happened to
                                 out/peek.json
misbehave.py connect PORT        try to connect to 127.0.0.1:PORT; write the outcome to out/connect.json
misbehave.py whoami              write uid, gid, groups, RLIMIT_NPROC and the owners of the working dir and out/
                                 to out/whoami.json
misbehave.py pry PATH...         a hostile agent: try to read each PATH, /proc/1/environ and the parent's environ,
                                 list /proc, write outside out/; write what it got to out/pry.json
misbehave.py signal PID          try to SIGKILL PID (the worker); write the outcome to out/signal.json
misbehave.py link PATH           hard-link PATH into out/ (else copy nothing) and exit 0
misbehave.py outfill BYTES       write BYTES into out/ as fast as it can (1 MiB files), then exit 0
misbehave.py forkbomb N          fork up to N sleeping processes, report how many it got, exit 0 (they stay)
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("out")


def write(name: str, size: int) -> None:
    with (OUT / name).open("wb") as handle:
        remaining = size
        while remaining:
            step = min(remaining, 1 << 20)
            handle.write(b"x" * step)
            remaining -= step


def report(summary: str, status: str = "ok") -> None:
    print(json.dumps({"status": status, "summary": summary}), flush=True)


def stubborn(pidfile: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
    )
    Path(pidfile).write_text(json.dumps([os.getpid(), child.pid]))
    time.sleep(600)


def escape(pidfile: str, clean: bool) -> None:
    """Double fork + setsid: the grandchild leaves the agent's process group and session, then sleeps.

    With ``clean`` it first exec's a shell with an empty environment (no AGENT_RUN_ID), which records its pid
    only after that exec; the agent waits for the pid, so the escape is complete before the agent exits.
    """
    target = Path(pidfile)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if clean:
                os.execve("/bin/sh", ["sh", "-c", 'echo $$ > "$0"; exec sleep 600', pidfile], {})
            target.write_text(f"{os.getpid()}\n")
            time.sleep(600)
        os._exit(0)
    deadline = time.monotonic() + 10
    while not (target.exists() and target.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.01)


def peek() -> dict[str, object]:
    try:
        data = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError as exc:
        return {"read": False, "error": type(exc).__name__}
    return {"read": True, "names": sorted(item.split(b"=", 1)[0].decode() for item in data.split(b"\0") if item)}


def connect(port: int) -> dict[str, object]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return {"connected": True}
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__}


def pry(paths: list[str]) -> dict[str, object]:
    read: dict[str, object] = {}
    for path in [*paths, "/proc/1/environ", f"/proc/{os.getppid()}/environ"]:
        try:
            read[path] = Path(path).read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            read[path] = type(exc).__name__
    writes = {}
    for target in ("/pwned", str(Path.cwd() / "pwned"), "/usr/pwned", "/etc/pwned"):
        try:
            Path(target).write_text("x")
            writes[target] = "written"
        except OSError as exc:
            writes[target] = type(exc).__name__
    pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    siblings = sorted(os.listdir(Path.cwd().parent))
    return {"read": read, "writes": writes, "pids": pids, "env": sorted(os.environ), "siblings": siblings}


def main(mode: str, *args: str) -> int:
    OUT.mkdir(exist_ok=True)
    if mode == "files":
        size = int(args[1]) if len(args) > 1 else 10
        for i in range(int(args[0])):
            write(f"file-{i:03d}.txt", size)
        report(f"wrote {args[0]} files")
    elif mode == "big":
        write("big.bin", int(args[0]))
        report("wrote a big file")
    elif mode == "slow":
        time.sleep(float(args[0]))
        write("late.txt", 5)
        report("finished late")
    elif mode == "until":
        while time.time() < float(args[0]):
            time.sleep(0.2)
        write("done.txt", 5)
        report("finished at the given time")
    elif mode == "disk":
        Path("tmp").mkdir(exist_ok=True)
        for i in range(int(args[0]) // (1 << 20) + 1):  # 1 MiB files: the file-size rlimit is not what stops it
            Path(f"tmp/fill-{i:05d}.bin").write_bytes(b"\0" * (1 << 20))
            time.sleep(0.05)
        time.sleep(60)
    elif mode == "stubborn":
        stubborn(args[0])
    elif mode == "slowfiles":
        Path(args[1]).write_text(json.dumps([os.getpid()]))
        for i in range(int(args[0])):
            write(f"part-{i:03d}.txt", 1000)
        time.sleep(0.2 * int(args[0]))
        report("slow files done")
    elif mode == "symlink":
        (OUT / "link.txt").symlink_to("/etc/hostname")
    elif mode == "swapout":
        try:
            OUT.rmdir()
            OUT.symlink_to(args[0])
        except OSError as exc:
            report(f"could not replace out/: {type(exc).__name__}", status="error")
            return 1
        report("replaced out/")
    elif mode == "subdir":
        (OUT / "nested").mkdir()
        write("nested/inner.txt", 3)
    elif mode == "fail":
        print("something went wrong", flush=True)
        return 3
    elif mode == "env":
        (OUT / "env.json").write_text(json.dumps(dict(os.environ)))
        report("env dumped")
    elif mode == "escape":
        escape(args[0], clean="clean" in args[1:])
        report("escaped")
    elif mode == "peek":
        (OUT / "peek.json").write_text(json.dumps(peek()))
    elif mode == "connect":
        (OUT / "connect.json").write_text(json.dumps(connect(int(args[0]))))
    elif mode == "whoami":
        facts = {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
            "workdir_uid": os.stat(".").st_uid,
            "out_uid": os.stat("out").st_uid,
        }
        (OUT / "whoami.json").write_text(json.dumps(facts))
    elif mode == "pry":
        (OUT / "pry.json").write_text(json.dumps(pry(list(args))))
    elif mode == "signal":
        try:
            os.kill(int(args[0]), signal.SIGKILL)
            outcome = "killed"
        except OSError as exc:
            outcome = type(exc).__name__
        (OUT / "signal.json").write_text(json.dumps({"outcome": outcome}))
    elif mode == "link":
        for kind, make in (("hard", os.link), ("sym", os.symlink)):
            try:
                make(args[0], OUT / f"{kind}.txt")
            except OSError as exc:
                print(f"{kind} link refused: {type(exc).__name__}", flush=True)
    elif mode == "outfill":
        for i in range(int(args[0]) // (1 << 20) + 1):
            write(f"fill-{i:05d}.bin", 1 << 20)
        report("filled out/")
    elif mode == "forkbomb":
        count = 0
        try:
            for _ in range(int(args[0])):
                if os.fork() == 0:
                    time.sleep(600)
                    os._exit(0)
                count += 1
        except OSError as exc:
            print(f"fork refused after {count}: {type(exc).__name__}", flush=True)
        (OUT / "forkbomb.json").write_text(json.dumps({"forked": count}))
    elif mode == "chatty":
        for i in range(int(args[0])):
            print(f"line {i} " + "y" * 5000)
        report("chatty done")
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
