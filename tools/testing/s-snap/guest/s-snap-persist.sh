# SPDX-License-Identifier: GPL-2.0
# vm: disks=32M,128M,16M boots=2 timeout=900
# Snapshots and their data survive dmsetup remove + reload (boot 1) and a
# reboot of the VM on the same disk images (boot 2).
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
if [ "$S_SNAP_BOOT" = 1 ]; then
	s-snap-workload run --ops 400 --seed 11 --max-snapshots 5 --hot-blocks 1024 \
		--reload-every 50 --save-model /dev/vdc || fail "workload with reloads"
	s-snap-workload verify --model /dev/vdc || fail "verify after remove + reload"
else
	s-snap-workload verify --model /dev/vdc || fail "verify after reboot"
fi
