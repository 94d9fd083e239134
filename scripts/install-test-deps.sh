#!/usr/bin/env bash
# install-test-deps.sh installs what rbee's tests need from Debian packages
# and is safe to run again: today that is OpenSSH (sshd for the tests' own
# servers, ssh-keygen for their keys) and Chromium (the dashboard's browser
# test). It never starts the system sshd.
set -euo pipefail

packages=()
[ -x /usr/sbin/sshd ] || packages+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || packages+=(openssh-client)
[ -x /usr/bin/chromium ] || packages+=(chromium)

if [ "${#packages[@]}" -eq 0 ]; then
	echo "install-test-deps: nothing to install" >&2
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-test-deps: no apt-get here; install these with your package manager: ${packages[*]}" >&2
	exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	as_root=(sudo -n)
else
	echo "install-test-deps: need root to install: ${packages[*]}" >&2
	echo "  run: sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
	exit 1
fi

# policy-rc.d answering 101 keeps the package scripts from starting the
# system sshd; the tests start their own unprivileged servers.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
	"${as_root[@]}" chmod 0755 "$policy"
	made_policy=1
fi
cleanup() {
	if [ "$made_policy" -eq 1 ]; then
		"${as_root[@]}" rm -f "$policy"
	fi
}
trap cleanup EXIT

echo "install-test-deps: installing ${packages[*]}" >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -q --no-install-recommends "${packages[@]}"
