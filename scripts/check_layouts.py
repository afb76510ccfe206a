#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Checks that bindgen's layouts of the C structs the Rust code reads agree
with the C compiler's, in a built kernel tree.

bindgen can disagree with clang: it gives an empty struct declared
____cacheline_aligned (struct sched_statistics without CONFIG_SCHEDSTATS) no
alignment, and every field after it is then read at the wrong offset from
Rust. This compares the offset of every named field and the size and
alignment of each struct below: clang computes them from the kernel's own
compile command (taken from init/.main.o.cmd), rustc from the tree's
rust/bindings/bindings_generated.rs.

Usage: check_layouts.py <kernel tree>; exit status 1 on any difference.
"""

import os
import re
import subprocess
import sys
import tempfile

# The structs whose fields the kernel crate's abstractions and the doc tests
# they run read through bindgen (bio, device-mapper, dm-bufio, dm-kcopyd,
# KUnit, and task_struct for kernel::task).
STRUCTS = [
    "bio",
    "bvec_iter",
    "bio_vec",
    "block_device",
    "device",
    "dm_target",
    "target_type",
    "dm_dev",
    "dm_io_region",
    "kunit_case",
    "kunit_suite",
    "task_struct",
]


# bindgen appends "_" to C names that are Rust keywords.
RUST_KEYWORDS = {"as", "box", "crate", "fn", "impl", "in", "loop", "match", "mod", "move",
                 "mut", "priv", "ref", "self", "super", "trait", "type", "use", "where"}


def c_name(field):
    """The C name of a bindgen field name."""
    if field.endswith("_") and field[:-1] in RUST_KEYWORDS:
        return field[:-1]
    return field


def bindgen_fields(bindings, name):
    """Named, non-bitfield fields of `pub struct name` in the bindings."""
    m = re.search(r"^pub struct %s \{\n(.*?)^\}" % re.escape(name), bindings, re.M | re.S)
    if not m:
        return None
    fields = re.findall(r"^    pub ([a-z_A-Z0-9]+): ", m.group(1), re.M)
    return [f for f in fields if not f.startswith(("_bitfield", "__bindgen"))]


def clang_layouts(tree, structs):
    """{key: value} for offsets, sizes and alignments, from clang."""
    with open(os.path.join(tree, "init/.main.o.cmd")) as f:
        cmd = f.readline().split(":=", 1)[1].strip()
    cmd = re.sub(r"-Wp,-MMD,\S+", "", cmd)
    cmd = re.sub(r"-c -o init/main\.o init/main\.c$", "", cmd)
    src = ["#include <linux/blkdev.h>", "#include <linux/device-mapper.h>",
           "#include <linux/dm-io.h>", "#include <linux/sched.h>",
           "#include <kunit/test.h>", "#include <linux/stddef.h>"]
    for name, fields in structs.items():
        src.append("long zz_size_%s = sizeof(struct %s);" % (name, name))
        src.append("long zz_align_%s = __alignof__(struct %s);" % (name, name))
        for f in fields:
            src.append("long zz_off_%s__%s = offsetof(struct %s, %s);"
                       % (name, f, name, c_name(f)))
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "layouts.c")
        s = os.path.join(d, "layouts.s")
        with open(c, "w") as f:
            f.write("\n".join(src) + "\n")
        subprocess.run(cmd + " -S -o %s %s" % (s, c), shell=True, cwd=tree, check=True)
        asm = open(s).read()
    # A zero lands in .bss as ".zero N" (N = 8, or more with KASAN redzones).
    return {m.group(1): int(m.group(2) or 0)
            for m in re.finditer(r"^zz_(\S+):\n(?:\s*#.*\n)*\s*(?:\.quad\s+(-?\d+)|\.zero\s+\d+)",
                                 asm, re.M)}


def rustc_layouts(tree, structs):
    """{key: value} as clang_layouts, from rustc over the bindings."""
    lines = ["#![allow(warnings)]",
             "mod bindings { use core::ffi; type __kernel_size_t = usize;"
             " type __kernel_ssize_t = isize; type __kernel_ptrdiff_t = isize;"
             ' include!("%s/rust/bindings/bindings_generated.rs"); }' % tree,
             "fn main() {"]
    for name, fields in structs.items():
        lines.append('println!("size_%s {}", core::mem::size_of::<bindings::%s>());' % (name, name))
        lines.append('println!("align_%s {}", core::mem::align_of::<bindings::%s>());' % (name, name))
        for f in fields:
            lines.append('println!("off_%s__%s {}", core::mem::offset_of!(bindings::%s, %s));'
                         % (name, f, name, f))
    lines.append("}")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "layouts.rs")
        exe = os.path.join(d, "layouts")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        subprocess.run(["rustc", "--edition", "2021", "-o", exe, src], check=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def main():
    tree = os.path.abspath(sys.argv[1])
    with open(os.path.join(tree, "rust/bindings/bindings_generated.rs")) as f:
        bindings = f.read()
    structs = {}
    for name in STRUCTS:
        fields = bindgen_fields(bindings, name)
        if fields is None:
            print("layouts: struct %s is not in the bindings" % name)
            return 1
        structs[name] = fields
    c = clang_layouts(tree, structs)
    r = rustc_layouts(tree, structs)
    bad = sorted(k for k in r if c.get(k) != r[k])
    for k in bad:
        print("layouts: %s is %s in C but %s in Rust" % (k, c.get(k), r[k]))
    n = len(r)
    print("layouts: %d of %d sizes, alignments and field offsets of %d structs agree"
          % (n - len(bad), n, len(structs)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
