#!/bin/sh
# `make test`'s browser tests drive Debian's Chromium through its chromedriver (a test tool's
# own browser download cannot work offline). Installs both when this machine can (root or
# password-less sudo, with apt-get); otherwise stops with one line saying what to install.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "make test: installing chromium and chromium-driver for the browser tests (apt-get)..."
    if ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver) \
        >/tmp/automation-browser-deps.log 2>&1; then
      exit 0
    fi
  fi
fi
echo "make test: the browser tests need Chromium and chromedriver: install them (Debian/Ubuntu: 'sudo apt-get install chromium chromium-driver'), then run make test again." >&2
exit 1
