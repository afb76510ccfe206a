# SPDX-License-Identifier: GPL-2.0
# vm: disks=32M,512M timeout=300
# Bounded-time concurrent stress: for 60 s, two origin writers, four snapshot
# devices reading and writing (each replaced by a new snapshot every few
# seconds) and a pool of device-less snapshots created and deleted, all at
# once.  Every read is checked against a model: origin writes, also those in
# flight while a snapshot is created, never leak into a snapshot beyond the
# creation's cut.  Afterwards every device equals the model before and after a
# reload of the origin table, the usage figures agree with the model, and
# deleting every snapshot gives all chunks back.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
s-snap-stress --seconds 60 --seed 1 || fail "stress"
echo "s-snap-stress: ok"
