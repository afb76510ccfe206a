#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Developer tool: write the edits made in the kernel cache tree to existing
# kernel files as a patch in patches/.  Each existing kernel file belongs to
# exactly one patch, so the patch is simply "pristine 6.12 -> tree".
#
# usage: scripts/mkpatch.sh patches/NNNN-topic.patch "Subject line" FILE...
#   FILE paths are relative to the kernel tree (e.g. rust/kernel/lib.rs).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"
patch=${1:?usage: mkpatch.sh PATCH SUBJECT FILE...}
subject=${2:?usage: mkpatch.sh PATCH SUBJECT FILE...}
shift 2
[ $# -gt 0 ] || { echo "mkpatch: name the files" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
	echo "Subject: [PATCH] $subject"
	echo
} >"$tmp/patch"
for f in "$@"; do
	mkdir -p "$(dirname "$tmp/a/$f")" "$(dirname "$tmp/b/$f")"
	if [ -f "$PRISTINE/$f" ]; then
		cp "$PRISTINE/$f" "$tmp/a/$f"
	else
		tar -xOf /usr/src/linux-source-6.12.tar.xz "linux-source-6.12/$f" >"$tmp/a/$f"
	fi
	cp "$KTREE/$f" "$tmp/b/$f"
	(cd "$tmp" && diff -u --label "a/$f" --label "b/$f" "a/$f" "b/$f" >>patch) || true
done
mv "$tmp/patch" "$REPO/$patch"
echo "wrote $patch"
