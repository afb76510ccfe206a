# SPDX-License-Identifier: GPL-2.0
# vm: memory=4096 disks=16M timeout=3000
# `make bench`: the cost of an origin write as snapshots multiply, for
# s-snap, dm-snapshot, dm-thin and linear (see bench-lib).  Not part of the
# normal suite (vmtest.py skips bench-*); run by tools/testing/s-snap/bench/run.py.
NS="0 1 4 16 64"
RAM_MB=1536
UNITS=4000
SEQ=20000
IOS=20000
CAP=3
MANY_MB=512
ROUNDS=3
. /tests/bench-lib
run_bench
