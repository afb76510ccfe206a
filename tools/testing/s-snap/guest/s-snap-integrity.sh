# SPDX-License-Identifier: GPL-2.0
# vm: disks=32M,128M timeout=900
# Random writes to the origin and to writable snapshots, with snapshots created,
# activated, deleted in between; every device must equal the model throughout.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
s-snap-workload run --ops 1000 --seed 7 --max-snapshots 8 --hot-blocks 2048 ||
	fail "workload"
