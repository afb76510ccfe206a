# SPDX-License-Identifier: GPL-2.0
# vm: disks=268430022s,8G timeout=600
# The main job: the posting's dmsetup session replayed with /dev/vda as origin
# and /dev/vdb as COW.
modprobe dm_s_snap 2>/dev/null || echo "(dm_s_snap is not built yet: dmsetup will not know the targets)"
sh /tests/replay-transcript /tests/transcript.txt
