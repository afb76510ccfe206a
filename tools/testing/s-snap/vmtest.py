#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Run guest tests in a QEMU (TCG) virtual machine and report each result.

Every test is a shell script in tools/testing/s-snap/guest/.  A comment line
in it may set the VM it needs::

    # vm: disks=268430022s,8G boots=2 timeout=300 memory=1024

``disks`` are sparse image files attached as /dev/vda, /dev/vdb, ...
(sizes in bytes with K/M/G suffixes, or in 512-byte sectors with ``s``);
``boots`` runs the test that many times on the same images (the guest sees
``S_SNAP_BOOT=1,2,...``), which proves persistence across a reboot.

A kernel problem reported while the guest kernel boots, before its init
prints the first marker (so before any test code runs and before the disks
are touched), is the boot's, not the test's: the VM is stopped there, the
logs are kept as ``<test>.boot<N>.early.*.log``, a ``vmtest: NOTE`` line
says so, and the boot is tried once more; a second such failure fails the
test.  (The checking kernel under TCG on a busy host sometimes reports a
KASAN wild-memory-access in the early interrupt path, before any module is
loaded.)

``kunit=1`` lets the kernel run its KUnit tests (the Rust doc tests) at boot;
every other test boots with ``kunit.enable=0``.

``kill=MIN-MAX`` (seconds) cuts every boot but the last off: once the guest
prints ``@@S-SNAP ARMED`` (its workload is running), the host kills QEMU with
SIGKILL at a random moment in that window after it.  The moment is drawn from
``--seed`` and the boot number and written to the boot's console log.  A boot
killed after the marker counts as a success unless its test printed a line
starting with ``FAIL:`` (e.g. an operation that hangs); one whose test ends
first fails.
The last boot runs to completion and verifies.  The disks use cache=unsafe:
whatever QEMU wrote to the image files survives its death, as on a machine
with a write-through disk cache losing power (the loss of unflushed writes is
another test's subject).  The guest kernel prints warnings to the console in
such tests (``loglevel=5``), because a killed boot never dumps its kernel log,
and it sees the seed as ``s_snap.seed=`` on its command line.

Each test gets its own VM.  A test fails if its script exits non-zero, if the
VM times out or dies, or if the guest kernel log shows an Oops, BUG, WARNING,
KASAN, UBSAN, kmemleak or lockdep report.  The console and kernel log of every
boot are kept under the log directory.  The exit code is 0 only if every test
passed.  One line per test is printed: ``vmtest: PASS name`` or
``vmtest: FAIL name: reason``.
"""

import argparse
import os
import random
import re
import select
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GUEST_DIR = REPO / "tools/testing/s-snap/guest"

# What a kernel prints when something went wrong.  Matched against every line
# of the guest kernel log and the console.
KERNEL_PROBLEM = re.compile(
    r"(WARNING: |BUG: |BUG at |kernel BUG|Oops|Kernel panic|general protection fault"
    r"|KASAN|UBSAN|kmemleak: \d+ new suspected|possible circular locking"
    r"|possible recursive locking|inconsistent lock state|rust_panic|panicked at"
    r"|Call Trace:|INFO: task .* blocked)"
)
MARK = "@@S-SNAP "


def parse_size(text):
    """Size of a disk spec in bytes: 8G, 512M, 1024K, 4096 or 268430022s."""
    match = re.fullmatch(r"(\d+)([sKMG]?)", text)
    if not match:
        raise ValueError(f"bad disk size {text!r} (want e.g. 8G, 512M or 268430022s)")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"": 1, "s": 512, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def test_settings(name):
    """The test's '# vm:' settings, with defaults."""
    settings = {"disks": "1G,1G,1G", "boots": "1", "timeout": "300", "memory": "1024",
                "kill": "", "kunit": "0"}
    script = GUEST_DIR / f"{name}.sh"
    if script.exists():
        for line in script.read_text().splitlines():
            if line.startswith("# vm:"):
                for item in line[len("# vm:"):].split():
                    key, _, value = item.partition("=")
                    if key not in settings:
                        raise ValueError(f"{script}: unknown vm setting {key!r}")
                    settings[key] = value
    return settings


def parse_kill(text):
    """The kill=MIN-MAX window in seconds, or None."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)", text)
    if not match or float(match.group(1)) > float(match.group(2)):
        raise ValueError(f"bad kill window {text!r} (want e.g. kill=2-10)")
    return float(match.group(1)), float(match.group(2))


def boot(args, name, number, images, timeout, memory, log_dir, show, kill_after=None,
         extra_cmdline=""):
    """Boot the VM once running test `name`.

    Returns (exit code or None, problems, killed, early): `early` is true when
    the kernel reported a problem before the guest's init printed its first
    marker; the VM is then stopped there, before the test touched the disks.
    With `kill_after` (seconds), QEMU is killed that long after the guest prints
    @@S-SNAP ARMED, unless the test ended first."""
    cmdline = (
        f"console=ttyS0 quiet panic=-1 oops=panic s_snap.tests={name} s_snap.boot={number}"
        + extra_cmdline
    )
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(memory),
        "-smp", "2", "-nodefaults", "-display", "none", "-serial", "stdio",
        "-no-reboot", "-kernel", str(args.kernel), "-initrd", str(args.initrd),
        "-append", cmdline,
    ]
    for image in images:
        qemu += ["-drive", f"file={image},if=virtio,format=raw,cache=unsafe"]

    console_path = log_dir / f"{name}.boot{number}.console.log"
    klog_path = log_dir / f"{name}.boot{number}.dmesg.log"
    problems = []
    rc = None
    in_klog = False
    in_test = False
    kill_at = None
    killed = False
    failed_line = None
    seen_mark = False
    early = False
    deadline = time.monotonic() + timeout
    buffer = b""
    with open(console_path, "w") as console, open(klog_path, "w") as klog:
        proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            while True:
                now = time.monotonic()
                if kill_at is not None and now >= kill_at:
                    proc.kill()
                    killed = True
                    console.write(f"# vmtest: killed QEMU {kill_after:.2f} s after ARMED "
                                  f"(seed {args.seed})\n")
                    break
                left = deadline - now
                if left <= 0:
                    problems.append(f"timeout after {timeout} s")
                    break
                wait = min(left, 1.0, kill_at - now if kill_at is not None else 1.0)
                ready, _, _ = select.select([proc.stdout], [], [], wait)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    console.write(line + "\n")
                    if line.startswith(MARK) and not seen_mark:
                        seen_mark = True
                        early = bool(problems)
                        if early:
                            break
                    if line.startswith(MARK):
                        words = line[len(MARK):].split()
                        if words[0] == "KLOG":
                            in_klog = True
                        elif words[0] == "KLOG-END":
                            in_klog = False
                        elif words[0] == "BEGIN":
                            in_test = True
                        elif words[0] == "END" and len(words) == 3:
                            in_test = False
                            rc = int(words[2])
                            kill_at = None
                        elif words[0] == "ARMED" and kill_after is not None and rc is None:
                            kill_at = time.monotonic() + kill_after
                        continue
                    if in_klog:
                        klog.write(line + "\n")
                    elif show and in_test:
                        print(line, flush=True)
                    if in_test and line.startswith("FAIL:") and failed_line is None:
                        failed_line = line
                    if KERNEL_PROBLEM.search(line):
                        problems.append(f"kernel: {line.strip()}")
                if early:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if early:
        return rc, problems, killed, True
    if rc is None and not problems and not killed:
        problems.append("the VM stopped before the test finished")
    if killed and failed_line:
        problems.append(f"before the kill: {failed_line}")
    return rc, problems, killed, False


def run_test(args, name):
    settings = test_settings(name)
    boots = int(settings["boots"])
    timeout = args.timeout or int(settings["timeout"]) * args.timeout_scale
    memory = int(settings["memory"])
    kill = parse_kill(settings["kill"])
    image_dir = args.out / "images" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for index, size in enumerate(settings["disks"].split(",")):
        image = image_dir / f"vd{chr(ord('a') + index)}.img"
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(parse_size(size))
        images.append(image)

    started = time.monotonic()
    reasons = []
    kills = 0
    for number in range(1, boots + 1):
        kill_after = None
        # The kernel's KUnit tests run at boot only for a test that asks for them.
        extra_cmdline = "" if settings["kunit"] == "1" else " kunit.enable=0"
        if kill:
            extra_cmdline += f" loglevel=5 s_snap.seed={args.seed}"
            if number < boots:
                kill_after = random.Random(f"{args.seed}:{name}:{number}").uniform(*kill)
                if args.show:
                    print(f"vmtest: {name} boot {number}: kill {kill_after:.2f} s after ARMED "
                          f"(seed {args.seed})", flush=True)
        rc, problems, killed, early = boot(args, name, number, images, timeout, memory,
                                           args.log_dir, args.show, kill_after, extra_cmdline)
        if early:
            # The guest kernel failed while booting, before any test code ran
            # and before the disks were touched: not this test's result. Keep
            # the logs, say so, and boot once more; a second failure counts.
            for kind in ("console", "dmesg"):
                log = args.log_dir / f"{name}.boot{number}.{kind}.log"
                log.replace(log.with_name(f"{name}.boot{number}.early.{kind}.log"))
            print(f"vmtest: NOTE {name} boot {number}: the kernel reported a problem while "
                  f"booting, before the test ({problems[0]}); booting again", flush=True)
            rc, problems, killed, early = boot(args, name, number, images, timeout, memory,
                                               args.log_dir, args.show, kill_after,
                                               extra_cmdline)
        kills += killed
        if rc not in (None, 0):
            reasons.append(f"boot {number}: test exited with {rc}")
        elif kill_after is not None and not killed and not problems:
            reasons.append(f"boot {number}: the test ended before the kill")
        reasons += [f"boot {number}: {p}" for p in problems]
        if reasons:
            break
    if not args.keep_images:
        for image in images:
            image.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    if reasons:
        print(f"vmtest: FAIL {name} ({elapsed:.1f} s): " + "; ".join(reasons[:5]), flush=True)
        print(f"vmtest:   logs: {args.log_dir}/{name}.boot*.log", flush=True)
        return False
    kill_note = f", {kills} kills, seed {args.seed}" if kill else ""
    print(f"vmtest: PASS {name} ({elapsed:.1f} s{kill_note})", flush=True)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="*", help="guest tests to run (default: all)")
    parser.add_argument("--kernel", type=Path, required=True, help="bzImage to boot")
    parser.add_argument("--initrd", type=Path, required=True, help="initramfs to boot")
    parser.add_argument("--out", type=Path, default=REPO / "out", help="scratch directory")
    parser.add_argument("--log-dir", type=Path, help="where console and kernel logs go")
    parser.add_argument("--timeout", type=int, help="seconds per boot (overrides the test's)")
    parser.add_argument("--timeout-scale", type=int, default=1,
                        help="multiply the tests' own timeouts (slow checking kernels)")
    parser.add_argument("--show", action="store_true", help="print the tests' output live")
    parser.add_argument("--keep-images", action="store_true", help="keep the disk images")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the kill moments of kill= tests (passed to the guest)")
    args = parser.parse_args()
    args.log_dir = args.log_dir or args.out / "logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)

    # selftest-* prove the harness fails when it should; demo-* are demos;
    # bench-* are benchmarks (`make bench`), profile-* profiles (`make profile`).
    tests = args.tests or sorted(
        p.stem for p in GUEST_DIR.glob("*.sh")
        if not p.stem.startswith(("selftest-", "demo-", "bench-", "profile-"))
    )
    failed = [name for name in tests if not run_test(args, name)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
