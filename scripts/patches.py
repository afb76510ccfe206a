#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The kernel work of this repository as a patch series for Linux 6.12.

  patches.py lint                check patches/series alone: every patch
                                 listed in order, every kernel file of this
                                 repository added by one patch
  patches.py write [--out DIR]   write the series (patches/series) with a
                                 cover letter into DIR (out/patches)
  patches.py check [--out DIR]   write it, then apply it with git am to a
                                 fresh 6.12 tree, build the kernel and run
                                 checkpatch.pl --strict at every patch, and
                                 boot the final kernel for the posting's
                                 transcript; ends with "N passed, N failed"

The 6.12 tree is a git repository made once from Debian's linux-source-6.12
tarball (the one scripts/build-kernel.sh builds), kept in the cache directory
beside the build tree. The series is built on it without a work tree (a
private index, git apply --cached, git commit-tree), so writing it takes
seconds once that repository exists.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "patches"
TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
# The trailer and identity of every commit: the people who send the series
# put their own (git rebase --exec 'git commit --amend --reset-author -s').
AUTHOR = ("Your Name", "you@example.org")
SIGNOFF = f"Signed-off-by: {AUTHOR[0]} <{AUTHOR[1]}>"
BASE_TAG = "linux-source-6.12"
# checkpatch.pl --strict findings accepted in the series, with the reason.
CHECKPATCH_ACCEPTED = {
    # Each new file belongs to a subsystem with MAINTAINERS entries already
    # (DEVICE-MAPPER, RUST); who maintains the new files is for those
    # maintainers to decide when they take the series.
    "FILE_PATH_CHANGES",
}


def env_paths():
    """The cache paths of scripts/env.sh."""
    out = subprocess.run(
        ["bash", "-c", f'REPO="{REPO}"; . "{REPO}/scripts/env.sh"; echo "$CACHE"; echo "$KVERSION"; echo "$OUT"'],
        check=True, capture_output=True, text=True).stdout.split("\n")
    return Path(out[0]), out[1], Path(out[2])


def git(gitdir, *args, env=None, input=None):
    e = dict(os.environ)
    e.update({
        "GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1],
        "GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1],
    })
    e.update(env or {})
    r = subprocess.run(["git", "--git-dir", str(gitdir), *args], env=e, input=input,
                       capture_output=True, text=isinstance(input, str) or input is None)
    if r.returncode != 0:
        err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode()
        sys.exit(f"patches: git {' '.join(args)} failed:\n{err}")
    out = r.stdout if isinstance(r.stdout, str) else r.stdout.decode()
    return out.strip()


def base_repo(cache, kversion):
    """The bare repository of pristine 6.12, made once per package version."""
    gitdir = cache / f"linux-{kversion}.git"
    if (gitdir / "s-snap-complete").exists():
        return gitdir
    if not TARBALL.exists():
        sys.exit(f"patches: {TARBALL} is missing: run scripts/setup.sh")
    print(f"patches: making a git repository of {TARBALL} in {gitdir} (once)", flush=True)
    shutil.rmtree(gitdir, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(["tar", "-C", tmp, "--strip-components=1", "-xf", str(TARBALL)], check=True)
        subprocess.run(["git", "init", "-q", "--bare", str(gitdir)], check=True)
        work = ["--work-tree", tmp]
        git(gitdir, *work, "add", "-A", "-f")
        stamp = {"GIT_AUTHOR_DATE": "2024-11-17T00:00:00Z", "GIT_COMMITTER_DATE": "2024-11-17T00:00:00Z"}
        git(gitdir, *work, "commit", "-q", "-m", f"Linux 6.12 (Debian linux-source-6.12 {kversion})",
            env=stamp)
        git(gitdir, "tag", BASE_TAG)
    (gitdir / "s-snap-complete").touch()
    return gitdir


class Step:
    def __init__(self, patch):
        self.patch = patch
        self.adds = []          # repository paths (files or directories)
        self.lines = []         # (path, text)
        self.files = []         # the new files it adds, resolved

    def message(self):
        text = (PATCHES / self.patch).read_text()
        head = re.split(r"^--- a/", text, maxsplit=1, flags=re.M)[0].rstrip("\n")
        m = re.match(r"Subject: \[PATCH\] (.*)\n", head)
        if not m:
            sys.exit(f"patches: {self.patch} does not start with 'Subject: [PATCH] '")
        body = head[m.end():].strip("\n")
        return f"{m.group(1)}\n\n{body}\n\n{SIGNOFF}\n" if body else f"{m.group(1)}\n\n{SIGNOFF}\n"

    def has_diff(self):
        return re.search(r"^\+\+\+ ", (PATCHES / self.patch).read_text(), re.M) is not None


def parse_series():
    steps, excluded = [], set()
    for n, raw in enumerate((PATCHES / "series").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "exclude":
            excluded.add(rest)
        elif word == "patch":
            if not (PATCHES / rest).is_file():
                sys.exit(f"patches/series:{n}: no patch {rest}")
            steps.append(Step(rest))
        elif word == "add" and steps:
            steps[-1].adds.append(rest)
        elif word == "line" and steps:
            path, _, text = rest.partition(" ")
            steps[-1].lines.append((path, text))
        else:
            sys.exit(f"patches/series:{n}: cannot read '{raw}'")
    on_disk = sorted(p.name for p in PATCHES.glob("*.patch"))
    if on_disk != [s.patch for s in steps]:
        sys.exit("patches: patches/series must list every patches/*.patch, in order")
    return steps, excluded


def kernel_files():
    """The kernel files of this repository (what build-kernel.sh lays into the tree)."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "Documentation", "drivers", "kernel",
                          "rust", "samples"], check=True, capture_output=True, text=True).stdout
    return out.split()


def resolve(steps, excluded):
    """Assigns every kernel file of the repository to the step that adds it."""
    files = kernel_files()
    owner = {}
    for i, step in enumerate(steps):
        for add in step.adds:
            found = [f for f in files if f == add or f.startswith(add.rstrip("/") + "/")]
            found = [f for f in found if f not in owner and f not in excluded]
            if not found:
                sys.exit(f"patches/series: '{add}' of {step.patch} adds no file")
            for f in found:
                owner[f] = i
                step.files.append(f)
    for i, step in enumerate(steps):
        for path, text in step.lines:
            if path not in owner or owner[path] >= i:
                sys.exit(f"patches/series: {step.patch}: {path} is not added before it")
            count = (REPO / path).read_text().splitlines().count(text)
            if count != 1:
                sys.exit(f"patches/series: {step.patch}: '{text}' is {count} times in {path}")
    missing = [f for f in files if f not in owner and f not in excluded]
    if missing:
        sys.exit("patches: kernel files that no patch of patches/series adds:\n  " + "\n  ".join(missing))


def content(path, k, steps):
    """A new file as it is after step k: lines later steps add are left out."""
    held = {text for later in steps[k + 1:] for p, text in later.lines if p == path}
    lines = (REPO / path).read_text().splitlines(keepends=True)
    return "".join(l for l in lines if l.rstrip("\n") not in held).encode()


def fill_cover(cover, kversion):
    """Puts the subject, blurb, configuration and benchmark into the cover letter."""
    template = (PATCHES / "cover-letter").read_text()
    subject, _, blurb = template.partition("\n\n")
    wanted = ("CONFIG_RUST=", "CONFIG_BLK_DEV_DM=", "CONFIG_RUST_DM_ABSTRACTIONS=", "CONFIG_DM_S_SNAP=",
              "CONFIG_SAMPLE_RUST_DM_", "CONFIG_SAMPLES_RUST=")
    config = "".join(f"  {l}\n" for l in (REPO / "kernel/configs/s_snap.config").read_text().splitlines()
                     if l.startswith(wanted))
    results = REPO / "bench-results/results.md"
    bench = "  (no benchmark results in this checkout: make bench)\n"
    if results.exists():
        md = results.read_text()
        date = re.search(r"^Date: .*$", md, re.M)
        head = re.search(r"^## Headline.*?\n\n(.*?)\n\n", md, re.S | re.M)
        if date and head:
            bench = f"{date.group(0)}\n\n{head.group(1)}\n"
    blurb = (blurb.replace("@KVERSION@", kversion).replace("@CONFIG@", config.rstrip("\n"))
             .replace("@BENCHMARK@", bench.rstrip("\n")))
    text = cover.read_text()
    text = text.replace("*** SUBJECT HERE ***", subject.strip()).replace("*** BLURB HERE ***", blurb.rstrip())
    cover.write_text(text)


def write(out_dir):
    cache, kversion, _ = env_paths()
    steps, excluded = parse_series()
    resolve(steps, excluded)
    gitdir = base_repo(cache, kversion)
    base = git(gitdir, "rev-parse", BASE_TAG)
    # One date for every commit: the series of a checkout is the same on every run.
    date = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%cI"],
                          capture_output=True, text=True).stdout.strip() or "2026-01-01T00:00:00Z"
    stamp = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    with tempfile.TemporaryDirectory() as tmp:
        index = {"GIT_INDEX_FILE": f"{tmp}/index"}
        git(gitdir, "read-tree", base, env=index)
        parent = base
        added = []
        for k, step in enumerate(steps):
            if step.has_diff():
                git(gitdir, "apply", "--cached", str(PATCHES / step.patch), env=index)
            added += step.files
            touched = set(step.files) | {p for p, _ in step.lines}
            for f in added:
                if f not in touched:
                    continue
                blob = git(gitdir, "hash-object", "-w", "--stdin", input=content(f, k, steps))
                mode = "100755" if os.access(REPO / f, os.X_OK) else "100644"
                git(gitdir, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{f}", env=index)
            tree = git(gitdir, "write-tree", env=index)
            parent = git(gitdir, "commit-tree", tree, "-p", parent, input=step.message(),
                         env={**index, **stamp})
        git(gitdir, "update-ref", "refs/heads/s-snap", parent)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    git(gitdir, "format-patch", "-q", "--cover-letter", "--thread=shallow", "-o", str(out_dir),
        f"{BASE_TAG}..s-snap")
    fill_cover(next(out_dir.glob("0000-*.patch")), kversion)
    print(f"patches: wrote {len(steps)} patches and a cover letter into {out_dir}")
    return steps


def run_logged(cmd, log, **kw):
    with open(log, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw).returncode == 0


def checkpatch(tree, patch):
    """checkpatch.pl --strict findings of a patch, less the accepted ones."""
    r = subprocess.run([str(tree / "scripts/checkpatch.pl"), "--strict", "--terse", "--show-types",
                        "--no-summary", str(patch)], cwd=tree, capture_output=True, text=True)
    lines = patch.read_text().splitlines()
    problems = []
    for finding in r.stdout.splitlines():
        m = re.search(r":(\d+): (?:ERROR|WARNING|CHECK):(\w+):", finding)
        if not m or m.group(2) in CHECKPATCH_ACCEPTED:
            continue
        # User-visible strings are not broken to fit 100 columns (coding
        # style 2), but checkpatch only recognises C string literals.
        if m.group(2) == "LONG_LINE" and 'c_str!("' in lines[int(m.group(1)) - 1]:
            continue
        problems.append(finding)
    if r.returncode != 0 and not r.stdout:
        problems.append(f"checkpatch.pl failed: {r.stderr.strip()}")
    return problems


def check(out_dir):
    cache, kversion, out = env_paths()
    write(out_dir)
    gitdir = base_repo(cache, kversion)
    series_cache = cache / "series"
    tree = series_cache / f"linux-{kversion}"
    logs = out / "patches-check"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    # A tree of its own, kept between runs so that its builds are incremental.
    if not (tree / ".git").exists():
        print(f"patches: checking out 6.12 into {tree} (once)", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
        series_cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(gitdir), str(tree)], check=True)
    tgit = tree / ".git"
    subprocess.run(["git", "-C", str(tree), "am", "--abort"], capture_output=True)
    git(tgit, "--work-tree", str(tree), "checkout", "-q", "-f", "-B", "series-check", BASE_TAG)
    git(tgit, "--work-tree", str(tree), "clean", "-q", "-f", "-d")
    # The test configuration is not in the series: lay it in, untracked.
    (tree / "kernel/configs").mkdir(exist_ok=True)
    shutil.copy(REPO / "kernel/configs/s_snap.config", tree / "kernel/configs/s_snap.config")
    kmake = ["make", "-C", str(tree), f"-j{os.cpu_count()}", "LLVM=-19", "RUSTC=/usr/bin/rustc",
             "RUSTDOC=/usr/bin/rustdoc", f"BINDGEN={Path.home() / '.cargo/bin/bindgen'}"]
    passed = failed = 0
    patches = sorted(out_dir.glob("0*.patch"))[1:]
    for patch in patches:
        name = patch.name[:4]
        log = logs / f"{name}.log"
        t0 = time.time()
        ok = run_logged(["git", "-C", str(tree), "-c", f"user.name={AUTHOR[0]}", "-c",
                         f"user.email={AUTHOR[1]}", "am", "-q", str(patch)], log)
        problems = [] if ok else ["git am failed"]
        if ok:
            found = checkpatch(tree, patch)
            if found:
                problems.append(f"checkpatch: {len(found)} findings")
                with open(log, "a") as f:
                    f.write("\n".join(found) + "\n")
            ok = (run_logged(kmake + ["-s", "tinyconfig"], log)
                  and run_logged(kmake + ["-s", "s_snap.config"], log)
                  and run_logged(kmake + ["-s", "bzImage", "modules"], log))
            if not ok:
                problems.append("build failed")
        status = "FAIL" if problems else "PASS"
        print(f"patches: {status} {patch.name} ({time.time() - t0:.0f} s)"
              + (f": {'; '.join(problems)}, see {log}" if problems else ""), flush=True)
        if problems:
            failed += 1
            subprocess.run(["tail", "-n", "20", str(log)])
            if "git am failed" in problems:
                break
        else:
            passed += 1
    if failed == 0:
        # The series is this repository: the final tree has its files as they are.
        differ = [f for f in kernel_files()
                  if (tree / f).exists() and (tree / f).read_bytes() != (REPO / f).read_bytes()]
        status = "FAIL" if differ else "PASS"
        print(f"patches: {status} the final tree has the repository's kernel files"
              + (f" (differ: {' '.join(differ)})" if differ else ""), flush=True)
        passed, failed = passed + (not differ), failed + bool(differ)
        # And its module runs the posting's transcript.
        env = dict(os.environ, S_SNAP_CACHE=str(series_cache), S_SNAP_OUT=str(logs / "vm"))
        initrd = logs / "initramfs.cpio.gz"
        modroot = tree / ".s-snap-modroot"
        shutil.rmtree(modroot, ignore_errors=True)
        ok = (run_logged(kmake + ["-s", f"INSTALL_MOD_PATH={modroot}", "INSTALL_MOD_STRIP=1",
                                  "modules_install"], logs / "vm.log")
              and run_logged([str(REPO / "scripts/build-guest-tools.sh")], logs / "vm.log", env=env)
              and run_logged([str(REPO / "scripts/mkinitramfs.sh"), str(initrd)], logs / "vm.log", env=env)
              and run_logged([sys.executable, str(REPO / "tools/testing/s-snap/vmtest.py"), "--kernel",
                              str(tree / "arch/x86/boot/bzImage"), "--initrd", str(initrd), "--out",
                              str(logs / "vm"), "demo-transcript"], logs / "vm.log", env=env))
        print(f"patches: {'PASS' if ok else 'FAIL'} the final kernel replays the posting's transcript"
              + ("" if ok else f", see {logs / 'vm.log'}"), flush=True)
        passed, failed = passed + ok, failed + (not ok)
    print(f"\n{passed} passed, {failed} failed")
    return failed == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["lint", "write", "check"])
    ap.add_argument("--out", type=Path, default=None, help="where the series goes (out/patches)")
    a = ap.parse_args()
    out_dir = a.out or env_paths()[2] / "patches"
    if a.command == "lint":
        steps, excluded = parse_series()
        resolve(steps, excluded)
    elif a.command == "write":
        write(out_dir)
    else:
        sys.exit(0 if check(out_dir) else 1)


if __name__ == "__main__":
    main()
