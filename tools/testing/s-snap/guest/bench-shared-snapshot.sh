# SPDX-License-Identifier: GPL-2.0
# vm: memory=14336 disks=2G,160G,256M timeout=7200
# `make bench`: first writes, rewrites, reads, a filesystem run and
# management at scale for s-snap, dm-snapshot, dm-thin and linear, on RAM
# disks and on disks whose flushes cost time (see bench-lib).  Not part of
# the normal suite (vmtest.py skips bench-*); run by
# tools/testing/s-snap/bench/run.py, which reads the results disk (vdc).
KINDS="ram ssd"
NS="0 1 4 16 64"
NS_FW="0 1 64"
NS_OTHER="1 64"
FW_IOS=2000
CAP=5
SHORT_CAP=2
SEQ_MB=64
ROUNDS=3
FLUSH_MS=1
FS_MB=256
FS_SECONDS=10
FS_SNAP_EVERY=2
MANY="65536 262144"
ROLLBACK_MB=256
. /tests/bench-lib
run_bench
