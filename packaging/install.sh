#!/usr/bin/env bash
# Install the edgefleet agent on a Linux device without the .deb (Python >= 3.11 and systemd):
# the user edgefleet, a venv in /opt/edgefleet, /etc/edgefleet/agent.toml, the systemd unit
# rendered for the device class, the service enabled and started. Safe to run again: what is
# already in place is kept (an existing agent.toml is never overwritten), the agent is upgraded.
#
# Run it from the packaging/ folder of a source checkout or release: it needs render_unit.py,
# agent.toml.example and systemd/ beside it.
#
# Example:
#   sudo packaging/install.sh --device-id pi-07 --broker-url mqtts://broker.local:8883 \
#       --trusted-key keys/signing.pub --broker-password-file pi-07.pass --extras tflite
#   packaging/install.sh --device-id pi-07 --broker-url mqtt://broker.local:1883 \
#       --trusted-key keys/signing.pub --dry-run        # print the steps, change nothing
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=/opt/edgefleet
VENV=$PREFIX/venv
SHARE=$PREFIX/share
CONFIG_DIR=/etc/edgefleet
CONFIG=$CONFIG_DIR/agent.toml
UNIT=edgefleet-agent.service

usage() {
    cat <<'EOF'
Usage: install.sh [options]

Where the agent comes from (default: the newest edgefleet on the package index pip is set up for):
  --wheel FILE              install this edgefleet wheel; its dependencies from the index
  --wheelhouse DIR          install only from the wheels in DIR, no index (offline devices)
  --version VERSION         install edgefleet==VERSION from the index
  --extras LIST             pip extras, e.g. tflite (LiteRT for the Raspberry Pi classes)
  --python PATH             interpreter for the venv (default: python3; must be >= 3.11)

The config, written only when /etc/edgefleet/agent.toml does not exist yet:
  --device-id ID            unique device id (required for a new config)
  --broker-url URL          mqtt://host:1883 or mqtts://host:8883 (required for a new config)
  --trusted-key FILE        public key bundles must be signed with (required for a new config)
  --broker-password-file F  the broker password, copied to /etc/edgefleet/broker.pass (0640)
  --device-class NAME       hardware class (default: detected with `edgefleet agent detect-class`)

  --no-start                install and enable, but do not (re)start the service
  --dry-run                 print what would be done, change nothing
  -h, --help                this help
EOF
}

DRY_RUN=0
START=1
PYTHON=python3
WHEEL=""
WHEELHOUSE=""
VERSION=""
EXTRAS=""
DEVICE_ID=""
BROKER_URL=""
TRUSTED_KEY=""
PASSWORD_FILE=""
DEVICE_CLASS=""

die() {
    echo "install.sh: $*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a folder}; shift 2 ;;
        --version) VERSION=${2:?--version needs a version}; shift 2 ;;
        --extras) EXTRAS=${2:?--extras needs a list}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --device-id) DEVICE_ID=${2:?--device-id needs an id}; shift 2 ;;
        --broker-url) BROKER_URL=${2:?--broker-url needs a URL}; shift 2 ;;
        --trusted-key) TRUSTED_KEY=${2:?--trusted-key needs a file}; shift 2 ;;
        --broker-password-file) PASSWORD_FILE=${2:?--broker-password-file needs a file}; shift 2 ;;
        --device-class) DEVICE_CLASS=${2:?--device-class needs a name}; shift 2 ;;
        --no-start) START=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# Every change to the system goes through `run`: it prints the command, and runs it unless --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        printf '+'
        printf ' %q' "$@"
        printf '\n'
        "$@"
    fi
}

step() {
    echo "==> $*"
}

check_system() {
    step "check the system"
    if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        die "run as root (or with --dry-run to see the steps)"
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python >= 3.11 or pass --python"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is $("$PYTHON" -V 2>&1); the agent needs Python >= 3.11 (pass --python)"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
        die "$PYTHON has no venv/ensurepip module (Debian/Ubuntu: apt-get install python3-venv)"
    command -v systemctl >/dev/null || die "systemctl not found: the agent runs as a systemd service"
    for file in "$HERE/render_unit.py" "$HERE/agent.toml.example" "$HERE/systemd/edgefleet-agent.service.in"; do
        [ -f "$file" ] || die "$file is missing: run install.sh from its packaging/ folder"
    done
    if [ ! -f "$CONFIG" ]; then
        [ -n "$DEVICE_ID" ] || die "$CONFIG does not exist yet: --device-id is required"
        [ -n "$BROKER_URL" ] || die "$CONFIG does not exist yet: --broker-url is required"
        [ -n "$TRUSTED_KEY" ] || die "$CONFIG does not exist yet: --trusted-key is required"
        [ -f "$TRUSTED_KEY" ] || die "--trusted-key $TRUSTED_KEY: no such file"
    fi
    if [ -n "$PASSWORD_FILE" ] && [ ! -f "$PASSWORD_FILE" ]; then
        die "--broker-password-file $PASSWORD_FILE: no such file"
    fi
    if [ -n "$WHEEL" ] && [ ! -f "$WHEEL" ]; then
        die "--wheel $WHEEL: no such file"
    fi
}

create_user() {
    step "the system user and group edgefleet"
    if getent group edgefleet >/dev/null; then
        echo "group edgefleet exists"
    else
        run groupadd --system edgefleet
    fi
    if getent passwd edgefleet >/dev/null; then
        echo "user edgefleet exists"
    else
        run useradd --system --gid edgefleet --home-dir /var/lib/edgefleet --no-create-home \
            --shell /usr/sbin/nologin --comment "edgefleet agent" edgefleet
    fi
}

python_minor() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

make_venv() {
    step "the virtual environment $VENV"
    local want
    want=$(python_minor "$PYTHON")
    if [ "$(python_minor "$VENV/bin/python")" = "$want" ]; then
        echo "$VENV exists (Python $want)"
        return
    fi
    # Missing, or made by another Python minor version, with which it no longer runs.
    if [ -e "$VENV" ]; then
        run rm -rf "$VENV"
    fi
    run mkdir -p "$PREFIX"
    run "$PYTHON" -m venv "$VENV"
}

install_agent() {
    step "the edgefleet package"
    local requirement=edgefleet extras="" source_args=()
    [ -n "$EXTRAS" ] && extras="[$EXTRAS]"
    if [ -n "$WHEEL" ]; then
        requirement="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")$extras"
    elif [ -n "$VERSION" ]; then
        requirement="edgefleet$extras==$VERSION"
    else
        requirement="edgefleet$extras"
    fi
    if [ -n "$WHEELHOUSE" ]; then
        source_args=(--no-index --find-links "$WHEELHOUSE")
    fi
    run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --upgrade \
        "${source_args[@]}" "$requirement"
}

install_share() {
    # The unit template and its renderer live on the device, so the unit can be rendered again
    # after a change of device_class (see agent.toml).
    step "the unit renderer and templates in $SHARE"
    run mkdir -p "$SHARE/systemd"
    run install -m 0644 "$HERE/render_unit.py" "$HERE/README.md" "$SHARE/"
    run install -m 0644 "$HERE/systemd/edgefleet-agent.service.in" "$HERE/systemd/jetson.conf" "$SHARE/systemd/"
}

detect_class() {
    if [ -n "$DEVICE_CLASS" ]; then
        echo "$DEVICE_CLASS"
    elif [ -x "$VENV/bin/edgefleet" ]; then
        "$VENV/bin/edgefleet" agent detect-class --format json |
            "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["device_class"] or "")'
    fi
}

write_config() {
    step "the config $CONFIG"
    run install -d -m 0755 "$CONFIG_DIR"
    if [ -f "$PASSWORD_FILE" ]; then
        run install -m 0640 -o root -g edgefleet "$PASSWORD_FILE" "$CONFIG_DIR/broker.pass"
    fi
    if [ -f "$CONFIG" ]; then
        echo "$CONFIG exists: kept as it is"
        return
    fi
    local device_class
    device_class=$(detect_class || true)
    if [ -z "$device_class" ]; then
        if [ "$DRY_RUN" = 1 ] && [ ! -x "$VENV/bin/edgefleet" ]; then
            device_class="<detected after the install>"
        else
            die "the device class could not be detected: pass --device-class (see firmware_configs/)"
        fi
    fi
    run install -m 0644 "$TRUSTED_KEY" "$CONFIG_DIR/signing.pub"
    # The example config with its placeholders filled in; quoted replacements keep '&' literal.
    local text
    text=$(<"$HERE/agent.toml.example")
    text=${text//"<device-id>"/"$DEVICE_ID"}
    text=${text//"<device-class>"/"$device_class"}
    text=${text//"mqtt://<broker-host>:1883"/"$BROKER_URL"}
    if [ -z "$PASSWORD_FILE" ] && [ ! -f "$CONFIG_DIR/broker.pass" ]; then
        text=$(grep -v '^password_file = ' <<<"$text")
    fi
    if [ "$DRY_RUN" = 1 ]; then
        echo "would write $CONFIG (device_id $DEVICE_ID, device_class $device_class, broker $BROKER_URL)"
        return
    fi
    install -m 0640 -o root -g edgefleet /dev/null "$CONFIG"
    printf '%s\n' "$text" >"$CONFIG"
    "$VENV/bin/edgefleet" agent validate-config "$CONFIG"
}

install_unit() {
    step "the systemd unit for this device class"
    local class_args=()
    [ -n "$DEVICE_CLASS" ] && class_args=(--device-class "$DEVICE_CLASS")
    if [ "$DRY_RUN" = 1 ]; then
        if [ -x "$VENV/bin/python" ]; then
            "$VENV/bin/python" -B "$HERE/render_unit.py" --install --dry-run --config "$CONFIG" "${class_args[@]}"
        else
            run "$VENV/bin/python" -B "$SHARE/render_unit.py" --install --config "$CONFIG" "${class_args[@]}"
        fi
        return
    fi
    "$VENV/bin/python" -B "$SHARE/render_unit.py" --install --config "$CONFIG" "${class_args[@]}"
}

start_service() {
    step "the service $UNIT"
    if [ ! -d /run/systemd/system ]; then
        echo "systemd is not running here (a container or chroot): enable and start $UNIT on the device"
        return
    fi
    run systemctl daemon-reload
    run systemctl enable "$UNIT"
    if [ "$START" = 1 ]; then
        run systemctl restart "$UNIT"
        echo "status: systemctl status $UNIT; local API: unix:///run/edgefleet/agent.sock"
    fi
}

check_system
create_user
make_venv
install_agent
install_share
write_config
install_unit
start_service
if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: nothing was changed"
fi
