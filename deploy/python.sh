#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter (pyhwloc needs 3.12). pyenv installs it
# without making it global, so `python3.12` may be a shim that refuses to run: try it,
# then pyenv's own versions.
set -euo pipefail
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
for cand in "${SEPSTREAM_PYTHON_BOOTSTRAP:-}" python3.12 python3; do
  [[ -n "$cand" ]] || continue
  path=$(command -v "$cand" 2>/dev/null) || continue
  if ok "$path"; then echo "$path"; exit 0; fi
done
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
# 3.12 first (what the project is tested on), then newer ones.
for path in $(ls -d "$root"/versions/3.12*/bin/python3 2>/dev/null | sort -V -r) \
            $(ls -d "$root"/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -V); do
  if ok "$path"; then echo "$path"; exit 0; fi
done
echo "no Python >= 3.12 found (install one, or set SEPSTREAM_PYTHON_BOOTSTRAP)" >&2
exit 1
