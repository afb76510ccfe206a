# SPDX-License-Identifier: GPL-2.0
# vm: memory=2048 disks=16M timeout=900
# A quick run of the benchmark with tiny sizes, to check that it works
# (`tools/testing/s-snap/bench/run.py --smoke`).  The numbers mean nothing.
NS="0 2"
RAM_MB=256
UNITS=200
SEQ=2000
IOS=2000
CAP=1
MANY_MB=8
ROUNDS=2
. /tests/bench-lib
run_bench
