#!/usr/bin/env bash
# The Debian libraries that Qt 6 (PySide6, used by the viewer) loads, installed when missing.
#
#   bash scripts/qt-deps.sh [--desktop] [PYTHON]
#
# A quick probe first: if PYTHON (default .venv/bin/python) starts a QApplication offscreen,
# nothing is installed. Otherwise the packages of the list below that dpkg does not have are
# installed with apt-get (as root, or through sudo -n). --desktop adds the X11/xcb libraries a
# window on a real display needs (the tests and CI need only the offscreen ones).
# Safe to run again; on a system without apt-get it prints the list and fails if Qt cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."

desktop=0
if [ "${1:-}" = "--desktop" ]; then desktop=1; shift; fi
PYTHON=${1:-.venv/bin/python}

# offscreen Qt: libQt6Gui/Widgets and the offscreen platform plugin link these
offscreen=(libgl1 libegl1 libxkbcommon0 libfontconfig1 libfreetype6 libdbus-1-3 libglib2.0-0
           libx11-6 fonts-dejavu-core)
# a window on an X11 display: the xcb platform plugin's libraries
xcb=(libx11-xcb1 libxcb1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
     libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0)

probe() {
    # 0: Qt starts; 3: PySide6 is not installed in PYTHON; anything else: Qt cannot start
    QT_QPA_PLATFORM=offscreen "$PYTHON" - <<'EOF' >/dev/null 2>&1
import sys
try:
    import PySide6  # noqa: F401
except ModuleNotFoundError:
    sys.exit(3)
from PySide6 import QtWidgets
QtWidgets.QApplication([])
EOF
}

status=0
[ -x "$PYTHON" ] && { probe || status=$?; } || status=3
if [ "$status" -eq 0 ] && [ "$desktop" -eq 0 ]; then
    exit 0
fi

wanted=("${offscreen[@]}")
[ "$desktop" -eq 1 ] && wanted+=("${xcb[@]}")
missing=()
for pkg in "${wanted[@]}"; do
    # Debian 13 renamed some libraries (libglib2.0-0t64): a provider of the name counts too
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        && ! dpkg-query -W -f='${Status}' "${pkg}t64" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "qt-deps: Qt needs these libraries (Debian names): ${missing[*]}" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 && sudo="sudo -n" || {
            echo "qt-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
    fi
    echo "qt-deps: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ "$status" -eq 3 ]; then
    echo "qt-deps: PySide6 is not installed in $PYTHON yet; system libraries are in place" >&2
    exit 0
fi
status=0
probe || status=$?
if [ "$status" -ne 0 ]; then
    echo "qt-deps: Qt still cannot start offscreen; what it says:" >&2
    QT_QPA_PLATFORM=offscreen QT_DEBUG_PLUGINS=1 "$PYTHON" -c \
        'from PySide6 import QtWidgets; QtWidgets.QApplication([])' 2>&1 | tail -20 >&2
    exit 1
fi
