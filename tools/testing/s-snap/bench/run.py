#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Run the shared-snapshot benchmark in the VM and write its results.

Boots the guest test bench-shared-snapshot (tools/testing/s-snap/guest/
bench-lib) with vmtest.py.  The guest runs fio and leaves, on its last disk,
a tar archive of fio's JSON reports, the block-layer counters read around
every run and the timings of management operations.  This script reads that
archive and writes into the results directory:

  results.csv           every run: fio's figures and the counters' deltas
  results.md            the headline, the tables of both device kinds, the
                        counts per first write, management at scale
  fw-ram.png, fw-ssd.png  first-write IOPS against N, one panel per workload

``--archive FILE`` only parses a saved archive (the run keeps it as
OUT/bench-logs/<test>.results.tar); ``--smoke`` runs the tiny bench-smoke test
instead (numbers meaningless).
"""

import argparse
import csv
import datetime
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
VMTEST = REPO / "tools/testing/s-snap/vmtest.py"
TARGETS = ["linear", "s-snap", "s-snap-8k", "snapshot", "thin"]
NAMES = {
    "linear": "linear",
    "s-snap": "s-snap, 64 KiB chunks",
    "s-snap-8k": "s-snap, 8 KiB chunks",
    "snapshot": "dm-snapshot",
    "thin": "dm-thin",
}
SNAPSHOTTERS = ["s-snap", "s-snap-8k", "snapshot", "thin"]
FIRST_WRITES = ["fw-qd1", "fw-qd16", "fw-fsync"]
WORKLOADS = FIRST_WRITES + ["rewrite", "seq-1m", "origin-read", "snap-read", "snap-fw",
                            "fs-ext4"]
WORKLOAD_TEXT = {
    "fw-qd1": "first writes, 4 KiB, queue depth 1",
    "fw-qd16": "first writes, 4 KiB, queue depth 16 (libaio)",
    "fw-fsync": "first writes, 4 KiB, each followed by an fsync",
    "rewrite": "rewrites of the chunks fw-qd1 copied",
    "seq-1m": "sequential 1 MiB writes (MB/s)",
    "origin-read": "random 4 KiB origin reads",
    "snap-read": "4 KiB reads of the newest snapshot, copied chunks",
    "snap-fw": "first writes to the newest snapshot, whole 64 KiB chunks it shares with "
               "the origin, queue depth 1 (linear: the same writes to the origin)",
    "fs-ext4": "ext4 on the origin: random 4 KiB file writes, fsync every 32, "
               "a snapshot every few seconds (MB/s)",
}
# Which figure a workload reports: IOPS, or MB/s for the throughput runs.
MBPS = {"seq-1m", "fs-ext4"}
KIND_TEXT = {
    "ram": "`ram`: brd RAM disks, no write cache: every flush is free (CPU cost alone)",
    "ssd": "`ssd`: virtio disks with a volatile write cache under dm-delay, "
           "{flush} ms per flush (REQ_PREFLUSH); reads, writes and FUA writes undelayed",
}
STAT_FIELDS = ["r_ios", "r_merges", "r_sectors", "r_ticks", "w_ios", "w_merges", "w_sectors",
               "w_ticks", "in_flight", "io_ticks", "queue", "d_ios", "d_merges", "d_sectors",
               "d_ticks", "f_ios", "f_ticks"]
CSV_FIELDS = ["kind", "target", "n", "workload", "round", "ios", "seconds", "iops", "mb_s",
              "p50_us", "p99_us", "mean_us", "sync_mean_us", "flushes", "commits", "store_bytes",
              "meta_bytes", "origin_bytes", "switches"]


def run_vm(args, test):
    cmd = [sys.executable, str(VMTEST), "--kernel", str(args.kernel), "--initrd",
           str(args.initrd), "--out", str(args.out), "--log-dir", str(args.log_dir),
           "--keep-images", "--show", test]
    print("bench: " + " ".join(cmd), flush=True)
    started = time.monotonic()
    rc = subprocess.call(cmd)
    elapsed = time.monotonic() - started
    images = args.out / "images" / test
    archive = args.log_dir / f"{test}.results.tar"
    try:
        if rc != 0:
            sys.exit(f"bench: the VM run failed (exit {rc}); see {args.log_dir}/{test}.boot1.*.log")
        # The results disk holds a tar archive from its first byte; keep it.
        data = (images / "vdc.img").read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w") as copy:
                for member in tar.getmembers():
                    copy.addfile(member, tar.extractfile(member) if member.isfile() else None)
        archive.write_bytes(out.getvalue())
        archive.with_suffix(".elapsed").write_text(f"{elapsed:.1f}\n")
    finally:
        shutil.rmtree(images, ignore_errors=True)
    return archive, elapsed


def read_archive(path):
    files = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name.removeprefix("./")] = tar.extractfile(member).read().decode()
    return files


def lines(text):
    return [line.split(",") for line in text.splitlines() if line.strip()]


def percentile(section, key, pct):
    pcts = section.get(key, {}).get("percentile", {})
    value = pcts.get(f"{pct:.6f}")
    return value / 1000.0 if value is not None else None


def parse(files):
    info = {}
    many = []
    for row in lines(files.get("info.csv", "")):
        if row[0] == "many":
            many.append(row[1:])
        else:
            info[row[0]] = ",".join(row[1:])
    if info.get("done") != "1":
        sys.exit("bench: the archive has no complete benchmark run")

    counters = {}
    for row in lines(files.get("counters.csv", "")):
        label, phase, dev, values = tuple(row[:5]), row[5], row[6], row[7:]
        # `commits` counts journal blocks and checkpoints; archives from before it
        # was in `usage` have `commit_sequence`, which counts checkpoints only.
        if dev in ("commits", "commit_sequence", "ctxt"):
            if not values or not values[0]:
                # A module without the field: no count.
                continue
            stat = {"count": int(values[0])}
        else:
            stat = dict(zip(STAT_FIELDS, map(int, values)))
        counters.setdefault(label, {}).setdefault(dev, {})[phase] = stat

    def delta(label, dev, field):
        c = counters.get(label, {}).get(dev)
        if not c or "before" not in c or "after" not in c:
            return None
        return c["after"][field] - c["before"][field]

    runs = []
    for row in lines(files.get("fio/index.csv", "")):
        label = tuple(row)
        kind, target, n, workload, round_ = label
        text = files["fio/" + "_".join(label) + ".json"]
        # fio writes its warnings into the output file, before the JSON.
        report = json.loads(text[text.index("{"):])
        job = report["jobs"][0]
        direction = "read" if workload.endswith("read") else "write"
        sec = job[direction]
        seconds = job["job_runtime"] / 1000.0
        ios = sec["total_ios"]
        run = {
            "kind": kind, "target": target, "n": int(n), "workload": workload,
            "round": int(round_), "ios": ios, "seconds": seconds,
            # fio's own figures.
            "iops": sec["iops"],
            "mb_s": sec["bw_bytes"] / 1e6,
            "p50_us": percentile(sec, "clat_ns", 50), "p99_us": percentile(sec, "clat_ns", 99),
            "mean_us": sec.get("clat_ns", {}).get("mean", 0) / 1000.0,
            "sync_mean_us": (job["sync"]["lat_ns"]["mean"] / 1000.0
                             if job.get("sync", {}).get("total_ios") else None),
        }
        chunk = 8192 if target == "s-snap-8k" else 65536
        origin = delta(label, "vda", "w_sectors")
        store = delta(label, "vdb", "w_sectors")
        flushes = [delta(label, d, "f_ios") for d in ("vda", "vdb")]
        run["flushes"] = sum(flushes) if None not in flushes else None
        commits = delta(label, "commits", "count")
        run["commits"] = (commits if commits is not None
                          else delta(label, "commit_sequence", "count"))
        run["switches"] = delta(label, "ctxt", "count")
        run["origin_bytes"] = origin * 512 if origin is not None else None
        # Bytes written to the store device; its metadata part is what is
        # left after the chunk copies (one per first write for s-snap, one
        # per snapshot for dm-snapshot) or, for dm-thin, its metadata slice.
        n_ = int(n)
        copies = 0 if n_ == 0 or workload not in FIRST_WRITES else (
            n_ if target == "snapshot" else 1)
        if workload not in FIRST_WRITES:
            # Copies of other runs are not counted: no metadata split.
            run["store_bytes"] = None
            run["meta_bytes"] = None
        elif target.startswith("s-snap"):
            cow = delta(label, "cow", "w_sectors")
            run["store_bytes"] = cow * 512 if cow is not None else None
            run["meta_bytes"] = cow * 512 - ios * copies * chunk if cow is not None else None
        elif target == "thin":
            meta = delta(label, "tmeta", "w_sectors")
            data = delta(label, "tdata", "w_sectors")
            run["store_bytes"] = (meta + data) * 512 if meta is not None else None
            run["meta_bytes"] = meta * 512 if meta is not None else None
        elif target == "snapshot":
            run["store_bytes"] = store * 512 if store is not None else None
            run["meta_bytes"] = (store * 512 - ios * copies * chunk
                                 if store is not None else None)
        else:
            run["store_bytes"] = run["meta_bytes"] = None
        runs.append(run)

    times = []
    for row in lines(files.get("times.csv", "")):
        kind, target, n, op, seconds = row
        times.append({"kind": kind, "target": target, "n": int(n), "op": op,
                      "seconds": float(seconds)})
    return info, runs, times, many


def median_cells(runs):
    """One entry per (kind, target, n, workload): median, min and max of the
    figure (IOPS or MB/s) over the rounds, and medians of the other fields."""
    groups = {}
    for run in runs:
        groups.setdefault((run["kind"], run["target"], run["n"], run["workload"]), []).append(run)
    cells = {}
    for key, group in groups.items():
        figure = "mb_s" if key[3] in MBPS else "iops"
        values = [r[figure] for r in group]
        cell = {"value": statistics.median(values), "min": min(values), "max": max(values),
                "rounds": len(group), "figure": figure}
        for field in ("ios", "seconds", "p50_us", "p99_us", "mean_us", "sync_mean_us", "flushes",
                      "commits", "store_bytes", "meta_bytes", "origin_bytes", "switches"):
            vals = [r[field] for r in group if r[field] is not None]
            cell[field] = statistics.median(vals) if vals else None
        # Per first write: medians of each round's ratio.
        for field in ("flushes", "commits", "store_bytes", "meta_bytes", "origin_bytes",
                      "switches"):
            vals = [r[field] / r["ios"] for r in group if r[field] is not None and r["ios"]]
            cell[field + "_per_io"] = statistics.median(vals) if vals else None
        cells[key] = cell
    return cells


def fmt(value):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def best_other(cells, kind, target, n, workload):
    """The best non-linear target other than `target` for the same cell."""
    best = None
    for other in SNAPSHOTTERS:
        if other == target or (target.startswith("s-snap") and other.startswith("s-snap")):
            continue
        cell = cells.get((kind, other, n, workload))
        if cell and (best is None or cell["value"] > best[1]["value"]):
            best = (other, cell)
    return best


def workload_table(cells, kind, workload):
    ns = sorted({k[2] for k in cells if k[0] == kind and k[3] == workload})
    if not ns:
        return []
    base = cells.get((kind, "linear", 0, workload))
    if base is None and workload == "snap-read":
        base = cells.get((kind, "linear", 0, "origin-read"))
    unit = "MB/s" if workload in MBPS else "IOPS"
    out = [f"### {workload}: {WORKLOAD_TEXT[workload]}", "",
           f"| target | N | {unit} (median) | min-max | vs linear | vs best other | "
           "latency p50 / p99 / mean (ms) | I/Os, seconds |",
           "|---|---:|---:|---:|---:|---|---:|---:|"]
    for target in TARGETS:
        for n in ns:
            cell = cells.get((kind, target, n, workload))
            if not cell:
                continue
            rel = f"{cell['value'] / base['value']:.3f}" if base and base["value"] else "-"
            other = best_other(cells, kind, target, n, workload) if target != "linear" else None
            vs = (f"{cell['value'] / other[1]['value']:.2f} ({other[0]})"
                  if other and other[1]["value"] else "-")
            lat = " / ".join(fmt(cell[f] / 1000 if cell[f] is not None else None)
                             for f in ("p50_us", "p99_us", "mean_us"))
            if workload == "fw-fsync" and cell["sync_mean_us"] is not None:
                lat += f"; fsync mean {fmt(cell['sync_mean_us'] / 1000)}"
            out.append(f"| {target} | {n} | {fmt(cell['value'])} | {fmt(cell['min'])}-"
                       f"{fmt(cell['max'])} | {rel} | {vs} | {lat} | "
                       f"{cell['ios']:.0f}, {cell['seconds']:.1f} |")
    out.append("")
    return out


def counts_table(cells, kind):
    out = ["| target | N | workload | flushes / write | commits / write | store bytes / write "
           "| metadata bytes / write | context switches / write |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    any_row = False
    for target in SNAPSHOTTERS + ["linear"]:
        for workload in FIRST_WRITES:
            for n in sorted({k[2] for k in cells if k[0] == kind and k[1] == target}):
                cell = cells.get((kind, target, n, workload))
                if not cell:
                    continue
                vals = [cell.get(f + "_per_io") for f in
                        ("flushes", "commits", "store_bytes", "meta_bytes", "switches")]
                if all(v is None for v in vals):
                    continue
                any_row = True
                out.append(f"| {target} | {n} | {workload} | " +
                           " | ".join(fmt(v) for v in vals) + " |")
    return out + [""] if any_row else []


def headline(cells, ns=(1, 64)):
    out = ["| device | workload | N | s-snap 64 KiB | s-snap 8 KiB | dm-snapshot | dm-thin "
           "| linear | s-snap 64 KiB / best other |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("ram", "ssd"):
        for workload in FIRST_WRITES:
            for n in ns:
                vals = [cells.get((kind, t, n, workload)) for t in SNAPSHOTTERS]
                if not any(vals):
                    continue
                base = cells.get((kind, "linear", 0, workload))
                # Same chunk size (64 KiB) on both sides.
                mine = vals[0]["value"] if vals[0] else None
                other = max((v["value"] for v in vals[2:] if v), default=None)
                rel = f"{mine / other:.2f}" if mine and other else "-"
                out.append(f"| {kind} | {workload} | {n} | " +
                           " | ".join(fmt(v["value"]) if v else "-" for v in vals) +
                           f" | {fmt(base['value']) if base else '-'} | {rel} |")
    return out


def management(times, many):
    out = ["## Management", "",
           "Snapshot create and delete, each timed alone (one `dmsetup` call, or the "
           "suspend/create/resume sequence the target needs), median over rounds and kinds "
           "(ms):", "",
           "| target | operation | N | ms (median) | min-max | samples |",
           "|---|---|---:|---:|---:|---:|"]
    groups = {}
    for t in times:
        op = t["op"]
        if op == "snap-create" and t["n"] not in (1, 64):
            continue
        if op.startswith(("copy-", "load-", "delete-", "reclaim-", "back-", "provision-",
                          "rollback-", "dmsetup-")) and op != "dmsetup-status":
            continue
        groups.setdefault((t["target"], op, t["n"]), []).append(t["seconds"] * 1000)
    for (target, op, n), vals in sorted(groups.items()):
        out.append(f"| {target} | {op} | {n} | {fmt(statistics.median(vals))} | "
                   f"{fmt(min(vals))}-{fmt(max(vals))} | {len(vals)} |")
    out += ["", "`snap-delete` at N=1 deletes the only snapshot (it holds the copies of the",
            "N=1 runs); `snap-delete-newest` and `-oldest` delete the newest and the oldest",
            "of the 64 after all runs. dm-snapshot's delete is `dmsetup remove` of the",
            "snapshot and its COW slice; dm-thin's is the pool's `delete` message;",
            "s-snap's is `snapshot delete`, which returns once the deletion is committed;",
            "its space comes back afterwards, in the background. `dmsetup-status` is",
            "`dmsetup status` timed just before the delete: what one `dmsetup` call costs",
            "in the guest (starting the program under TCG takes most of it), so that a",
            "delete's own cost is its time less this one.",
            "", "### A snapshot holding many exceptions (`ram`)", "",
            "| target | exceptions | fill (s) | table load (ms) | delete (ms) | "
            "dmsetup status (ms) | space back (s) | metadata bytes / exception |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for target, k, *rest in many:
        k = int(k)
        t = {x["op"]: x["seconds"] for x in times if x["target"] == target}
        fill = t.get(f"copy-{k}exc", t.get(f"provision-{k}blocks"))
        per = metadata_per_exception(target, k, rest)
        delete = t.get(f"delete-{k}exc", 0)
        # s-snap gives the space back after the delete returned, timed from the delete
        # to its event (runs before the event: polled after the delete); the others
        # within the delete.
        back = t.get(f"back-{k}exc", delete + t.get(f"reclaim-{k}exc", 0))
        out.append(f"| {target} | {k:,} | {fmt(fill)} | {fmt(t.get(f'load-{k}exc', 0) * 1000)} "
                   f"| {fmt(delete * 1000)} | {fmt(t.get(f'dmsetup-{k}exc', 0) * 1000)} "
                   f"| {fmt(back)} | {fmt(per)} |")
    out += ["", "s-snap and dm-snapshot use 8 KiB chunks here (a 64 KiB-chunk store with",
            "262,144 exceptions needs 16 GiB of copies). dm-thin's snapshot holds its",
            "blocks unshared: a thin volume with one 4 KiB write per 64 KiB block",
            "(`skip_block_zeroing`), snapshotted, its origin then deleted. Table load:",
            "s-snap `s-snap-origin` (opens the store); dm-thin the pool and the thin",
            "device; dm-snapshot the snapshot (it reads every exception). Metadata bytes",
            "from the targets' own figures: s-snap `usage` (metadata_blocks x 4 KiB,",
            "the fixed area's bitmaps and the 1 MiB journal area included), dm-thin",
            "`status` (used metadata blocks x 4 KiB, its space maps included), dm-snapshot `status`",
            "(metadata sectors x 512); each divided by the exceptions. Space back: from",
            "the delete until the space is free again (s-snap: from the start of the",
            "`snapshot delete` message until the event the target raises when",
            "`usage` shows `deleting_snapshots 0`, caught by a `dmsetup wait` that",
            "was already waiting). `dmsetup status`: one",
            "`dmsetup` call timed just before the delete, what any delete costs at least.",
            ""]
    return out


def rollback_section(times, info):
    """The rollback rate against a plain copy of the same data, per device kind."""
    rows = {}
    for t in times:
        for what in ("rollback", "copy-back"):
            prefix = what + "-"
            if t["op"].startswith(prefix) and t["op"].endswith("MiB"):
                mib = int(t["op"][len(prefix):-3])
                rows.setdefault((t["kind"], mib), {}).setdefault(what, []).append(t["seconds"])
    if not rows:
        return []
    out = ["## Rollback", "",
           "`snapshot rollback` of an origin whose first `MiB` were rewritten since the "
           "snapshot (64 KiB chunks), from the message until `usage` shows no rollback, "
           "against a plain copy of as much data from the store device to the origin device "
           "(dd, 1 MiB direct I/O, one flush at the end); medians over the rounds.", "",
           "| device | MiB | chunks | rollback (s) | chunks/s | plain copy (s) | chunks/s "
           "| rollback / copy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (kind, mib), v in sorted(rows.items()):
        chunks = mib * 16
        rb = statistics.median(v.get("rollback", [0]))
        cp = statistics.median(v.get("copy-back", [0]))
        rate = chunks / rb if rb else 0
        copy_rate = chunks / cp if cp else 0
        ratio = rate / copy_rate if copy_rate else 0
        out.append(f"| {kind} | {mib} | {chunks:,} | {fmt(rb)} | {fmt(rate)} | {fmt(cp)} "
                   f"| {fmt(copy_rate)} | {fmt(ratio)} |")
    counts = sorted((k, v) for k, v in info.items() if k.startswith("rollback-"))
    if counts:
        out += ["", "What each rollback did (store commits; the origin disk's writes, KiB "
                "written and flushes, counted on `ssd` only):", ""]
        out += [f"- {k[len('rollback-'):]}: {v}" for k, v in counts]
    out += ["", "The rollback copies the snapshot's chunks back with dm-kcopyd, 16 at a time; "
            "before each commit that takes copied chunks off its list it flushes the origin "
            "device, so each batch costs a flush of the origin and a commit of the store.", ""]
    return out


def metadata_per_exception(target, k, fields):
    try:
        if target.startswith("s-snap"):
            kv = dict(zip(fields[0::2], fields[1::2]))
            return int(kv["metadata_blocks"]) * 4096 / k
        if target == "thin":
            # 0 <len> thin-pool <txid> <used meta>/<total meta> <used data>/<total> ...
            used = int(fields[4].split("/")[0])
            return used * 4096 / k
        if target == "snapshot":
            # 0 <len> snapshot <alloc>/<total> <metadata sectors>
            return int(fields[4]) * 512 / k
    except (IndexError, KeyError, ValueError):
        return None
    return None


def plot(path, cells, kind, header):
    try:
        import matplotlib
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, workload in zip(axes, FIRST_WRITES):
        for target in SNAPSHOTTERS:
            pts = sorted((k[2], c["value"], c["min"], c["max"]) for k, c in cells.items()
                         if k[0] == kind and k[1] == target and k[3] == workload)
            if not pts:
                continue
            xs = [max(p[0], 0.5) for p in pts]  # N=0 drawn at 0.5 on the log axis
            ax.errorbar(xs, [p[1] for p in pts],
                        yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                        marker="o", capsize=3, label=NAMES[target])
        base = cells.get((kind, "linear", 0, workload))
        if base:
            ax.axhline(base["value"], color="gray", linestyle="--", label="linear")
        ns = sorted({k[2] for k in cells if k[0] == kind and k[3] == workload})
        ax.set_xscale("log", base=2)
        ax.set_xticks([max(n, 0.5) for n in ns])
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_yscale("log")
        ax.set_xlabel("snapshots of the origin (N)")
        ax.set_ylabel("IOPS (median; bars: min-max)")
        ax.set_title(WORKLOAD_TEXT[workload], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"First writes on `{kind}` devices; {header}; QEMU TCG: ratios hold, "
                 "absolute numbers do not", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(path, runs):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for run in sorted(runs, key=lambda r: (r["kind"], TARGETS.index(r["target"]), r["n"],
                                               WORKLOADS.index(r["workload"]), r["round"])):
            writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v)
                             for k, v in run.items()})


def params(info):
    """The guest's parameters (KEY=value ..., lists space separated)."""
    out, key = {}, None
    for word in info.get("params", "").split():
        if "=" in word:
            key, value = word.split("=", 1)
            out[key] = value
        elif key:
            out[key] += " " + word
    return out


def write_markdown(path, cells, times, many, info, header):
    p = params(info)
    flush = p.get("FLUSH_MS", "?")
    out = ["# Shared snapshot benchmark v2", "", *header, "",
           "**QEMU TCG (software emulation): ratios between targets in the same run hold, "
           "absolute numbers do not.**", "",
           "## Headline: first writes (IOPS, median of the rounds)", "",
           *headline(cells), "",
           "`s-snap 64 KiB / best other`: s-snap over the better of dm-snapshot and",
           "dm-thin, all three with 64 KiB chunks. s-snap with 8 KiB chunks copies an",
           "eighth of the data the others copy; it is shown for the effect of the",
           "chunk size (its metadata blocks are 4 KiB at every chunk size). Every table",
           "below gives the ratio to linear",
           "and to the best other target of the same cell (`vs best other`; for",
           "`s-snap-8k` that is a 64 KiB target).", "",
           "## Method", "",
           "- Load: fio " + info.get("fio", "?") + " in the guest, O_DIRECT. A first-write "
           "run replays an iolog of 4 KiB writes to the first block of distinct 64 KiB units "
           "in random order, none written since the snapshots were taken, and stops after "
           f"{p.get('FW_IOS', '?')} writes or {p.get('CAP', '?')} s, whichever comes first. "
           f"Other runs stop after {p.get('FW_IOS', '?')} I/Os or {p.get('SHORT_CAP', '?')} s.",
           "- Targets: linear; s-snap with 64 KiB and 8 KiB chunks; dm-snapshot (persistent, "
           "64 KiB chunks, one COW slice per snapshot); dm-thin (64 KiB blocks, metadata "
           "and data slices of the store device). One origin per target and round; N grows "
           "0, 1, 4, 16, 64 on it, the snapshots created one by one, each N on its own "
           "area of the origin. dm-thin's origin is written once first, so that its blocks "
           "are provisioned and every first write breaks sharing.",
           "- Devices: " + "; ".join(KIND_TEXT[k].format(flush=flush) for k in ("ram", "ssd")) +
           ". dm-delay counts in jiffies; the guest runs at 1000 Hz, so a flush costs 1 ms "
           "(a consumer NVMe drive without power-loss protection takes about that).",
           "- Rounds: every round runs all targets on both kinds in turn; medians and "
           "min-max over the rounds. `results.csv` has every run.",
           "- Counts per write: block-layer counters (`/sys/block/*/stat`) read before "
           "and after each run. Flushes are those reaching the virtio disks (`ssd`; FUA is "
           "emulated by a flush there); commits are s-snap's (`commits` of `usage`: journal "
           "blocks and checkpoints; archives from before 2026-12-08 had checkpoints only); store "
           "bytes are those written to the store's slices; metadata bytes are the store "
           "bytes less the chunk copies (dm-thin: its metadata slice); context switches "
           "are the guest's (`ctxt` of `/proc/stat`, every task: fio, the targets' workers, "
           "kcopyd), fio's start and exit included (some hundreds a run), so compare each "
           "with linear's for the same workload, which is what fio and the block layer cost "
           "alone.",
           f"- Left out to fit the time: fw-qd16 and fw-fsync run at N = {p.get('NS_FW', '?')} "
           f"only, rewrite, seq-1m and the reads at N = {p.get('NS_OTHER', '?')} (linear: all "
           "at N = 0), the filesystem run in one round.",
           "- Caveats: the guest has one CPU, and dm-delay's flush delay (under 50 ms it "
           "uses a polling thread) keeps that CPU busy while a flush is delayed, so work "
           "done beside a pending flush is slower too; a flush is released at a timer "
           "tick (linear's fsync measures 1.00 ms). Flushes are counted at the virtio "
           "disks: virtio-blk has no FUA, so a FUA write adds a flush there that dm-delay did not delay. The guest clock "
           "is jiffies (1 ms): latency percentiles are multiples of 1 ms. Later N run on "
           "the same store, holding the exceptions of the earlier N. Runs at N = 0 are "
           "short (2,000 I/Os in about 0.1 s on `ram`): their ratios to linear are noise. "
           "Management times include starting each `dmsetup` (tens of ms under TCG), as "
           "an administrator's commands do. dm-thin's store bytes include the 4 KiB write "
           "itself (it lands on the data device).",
           "", f"Parameters: `{info.get('params', '?')}`", ""]
    for kind in ("ram", "ssd"):
        out += [f"## `{kind}` devices", "", KIND_TEXT[kind].format(flush=flush) + ".", ""]
        for workload in WORKLOADS:
            out += workload_table(cells, kind, workload)
        counts = counts_table(cells, kind)
        if counts:
            out += [f"### Counts per first write (`{kind}`)", "", *counts]
        out += [f"![first writes on {kind}](fw-{kind}.png)", ""]
    out += management(times, many)
    out += rollback_section(times, info)
    out += trails(cells)
    path.write_text("\n".join(out) + "\n")


def trails(cells):
    """Where s-snap is behind the best other target, from the figures."""
    out = ["## Where s-snap trails", ""]
    for kind in ("ram", "ssd"):
        for workload in WORKLOADS:
            for n in sorted({k[2] for k in cells if k[0] == kind and k[3] == workload}):
                mine = [cells.get((kind, t, n, workload)) for t in ("s-snap", "s-snap-8k")]
                mine = max((c["value"] for c in mine if c), default=None)
                other = best_other(cells, kind, "s-snap", n, workload)
                if mine is None or other is None or mine >= other[1]["value"]:
                    continue
                out.append(f"- `{kind}` {workload} N={n}: {mine / other[1]['value']:.2f} of "
                           f"{other[0]}")
    out += ["", "The counts per first write above give the measured reason; see also "
            "NOTES.md beside this file.", ""]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", type=Path, help="bzImage to boot")
    parser.add_argument("--initrd", type=Path, help="initramfs to boot (with fio)")
    parser.add_argument("--out", type=Path, default=REPO / "out", help="scratch directory")
    parser.add_argument("--log-dir", type=Path, help="console logs (default OUT/bench-logs)")
    parser.add_argument("--results", type=Path, default=REPO / "bench-results",
                        help="where results go")
    parser.add_argument("--archive", type=Path, help="parse this results archive, do not boot")
    parser.add_argument("--smoke", action="store_true", help="tiny run (meaningless numbers)")
    args = parser.parse_args()
    args.log_dir = args.log_dir or args.out / "bench-logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)

    elapsed = None
    if args.archive:
        archive = args.archive
        saved = archive.with_suffix(".elapsed")
        if saved.exists():
            elapsed = float(saved.read_text())
    else:
        if not args.kernel or not args.initrd:
            parser.error("--kernel and --initrd are needed unless --archive is given")
        archive, elapsed = run_vm(args, "bench-smoke" if args.smoke else "bench-shared-snapshot")
    info, runs, times, many = parse(read_archive(archive))
    cells = median_cells(runs)

    args.results.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.fromtimestamp(archive.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    header = [
        f"Date: {when}; guest kernel {info.get('kernel', '?')} (CONFIG_HZ=1000), "
        f"{info.get('cpus', '?')} guest CPU(s); repository HEAD {commit} when the results "
        "were written" + (f"; VM run {elapsed / 60:.1f} min" if elapsed else ""),
        "",
        "Made by `make bench` (tools/testing/s-snap/bench/run.py, guest script "
        "tools/testing/s-snap/guest/bench-lib).",
    ]
    if "warning" in info:
        header += ["", f"**Warning: {info['warning']}.**"]
    if args.smoke:
        header += ["", "**Smoke run with tiny sizes: the numbers mean nothing.**"]
    write_csv(args.results / "results.csv", runs)
    write_markdown(args.results / "results.md", cells, times, many, info, header)
    for kind in ("ram", "ssd"):
        if any(k[0] == kind for k in cells):
            plot(args.results / f"fw-{kind}.png", cells, kind, when)
    print(f"bench: wrote {args.results}/results.csv, results.md, fw-*.png"
          + (f" (VM run {elapsed:.0f} s)" if elapsed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
