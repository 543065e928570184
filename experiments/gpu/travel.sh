#!/usr/bin/env bash
# The device tool sends the working tree (tracked files + carried paths) and refuses more than
# 64 MiB. The committed models (results/**/model.pt, about 70 MB) plus the CIFAR-10 tarball
# (19 MB) are over it, and a GPU run needs none of the committed models. `hide` takes them out
# of git's index only (the files stay on disk, nothing is committed) and lists them in
# .git/info/exclude, so they do not travel; `restore` undoes both. Run `restore` right after
# the lease, before any commit.
#   bash experiments/gpu/travel.sh hide [KEEP...]   # KEEP: model.pt paths that must travel
#   (device run ..., carry [".gpu-data"])
#   bash experiments/gpu/travel.sh restore
set -euo pipefail
cd "$(dirname "$0")/../.."
LIST=.git/gpu-travel-hidden
case ${1:-} in
  hide)
    [ -e "$LIST" ] && { echo "already hidden ($LIST exists): run restore first" >&2; exit 1; }
    git ls-files 'results/**/model.pt' | { grep -vxF -f <(printf '%s\n' "${@:2}") || true; } > "$LIST"
    xargs -a "$LIST" git rm --cached -q --
    cat "$LIST" >> .git/info/exclude
    echo "hid $(wc -l < "$LIST") models; the tree that travels: $(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb | tail -1 | cut -f1) bytes + carried paths"
    ;;
  restore)
    [ -e "$LIST" ] || { echo "nothing hidden" >&2; exit 0; }
    xargs -a "$LIST" git reset -q --
    grep -vxF -f "$LIST" .git/info/exclude > .git/info/exclude.tmp || true
    mv .git/info/exclude.tmp .git/info/exclude && rm "$LIST"
    git status --short | head
    ;;
  *) echo "usage: $0 hide|restore" >&2; exit 2 ;;
esac
