# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: a store type other than S.
. /tests/lib
modprobe dm_s_snap || fail "modprobe"
n=$(blockdev --getsz /dev/vda)
for t in P N s SS; do
	expect_fail "store type $t" dmsetup create work --table "0 $n s-snap-origin /dev/vda /dev/vdb $t 16"
done
expect_log "Unsupported exception store type: only S (shared) is supported"
