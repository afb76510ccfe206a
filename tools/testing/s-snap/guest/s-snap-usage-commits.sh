# SPDX-License-Identifier: GPL-2.0
# vm: disks=32M,64M timeout=600
# The `usage` reply counts commits: `commits` grows by one with each commit,
# journal blocks included, while `commit_sequence` (the superblock's) grows
# only with checkpoints. A first write after a snapshot is one journal
# commit; a second write to the same chunk needs none; a suspend commits a
# checkpoint. Benchmarks divide by `commits`.
. /tests/lib
load_origin 128
msg snapshot create 1 || fail "snapshot create"
commits=$(usage_field commits)
seq=$(usage_field commit_sequence)
[ -n "$commits" ] || fail "no commits field: $(msg usage)"

# One 4 KiB first write to chunk 3: its copy is committed in one journal block.
dd if=/dev/urandom of=/dev/mapper/work bs=4k seek=$((3 * 16 + 2)) count=1 oflag=direct \
	2>/dev/null || fail "first write"
[ "$(usage_field commits)" = $((commits + 1)) ] || fail "first write: $(msg usage), was commits $commits"
[ "$(usage_field commit_sequence)" = "$seq" ] || fail "a journal commit moved commit_sequence: $(msg usage)"
echo "ok: a first write is one commit, a journal block"

# The chunk is copied: another write to it commits nothing.
dd if=/dev/urandom of=/dev/mapper/work bs=4k seek=$((3 * 16 + 5)) count=1 oflag=direct \
	2>/dev/null || fail "second write"
[ "$(usage_field commits)" = $((commits + 1)) ] || fail "second write committed: $(msg usage)"
echo "ok: a write to a copied chunk commits nothing"

# A suspend checkpoints what the journal holds: both counters grow, by one
# (the resume commits nothing: no feature argument, no grown COW device).
dmsetup suspend work || fail "suspend"
dmsetup resume work || fail "resume"
[ "$(usage_field commits)" = $((commits + 2)) ] || fail "suspend: $(msg usage), was commits $commits"
[ "$(usage_field commit_sequence)" = $((seq + 1)) ] || fail "checkpoint: $(msg usage), was $seq"
echo "ok: a suspend commits a checkpoint"
dmsetup remove work || fail "remove"
echo "ok: commits counted"
