# SPDX-License-Identifier: GPL-2.0
# vm: disks=268430022s,8G timeout=600
# The posting's dmsetup session, command by command: every status line must be
# the posting's, byte for byte.
modprobe dm_s_snap
sh /tests/replay-transcript /tests/transcript.txt
