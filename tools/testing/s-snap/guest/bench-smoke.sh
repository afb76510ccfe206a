# SPDX-License-Identifier: GPL-2.0
# vm: memory=4096 disks=1G,8G,64M timeout=900
# A quick run of the benchmark with tiny sizes, to check that it works
# (`tools/testing/s-snap/bench/run.py --smoke`).  The numbers mean nothing.
KINDS="ram ssd"
NS="0 1 4"
NS_FW="0 1"
NS_OTHER="1"
FW_IOS=100
CAP=1
SHORT_CAP=1
SEQ_MB=8
ROUNDS=1
FLUSH_MS=1
FS_MB=16
FS_SECONDS=4
FS_SNAP_EVERY=2
MANY="2048"
ROLLBACK_MB=8
. /tests/bench-lib
run_bench
