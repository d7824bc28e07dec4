# shellcheck shell=bash
#
# Helpers for scripts/test: make sure the tools and local services the test
# suite needs are present and running on a Debian-like machine.
#
# Every ensure_* function is one step. It prints one short line per thing it
# did ("redis: already running on 127.0.0.1:6379"), is safe to run again, and
# exits the script with a clear message when it cannot do its job.
#
# To add a step (Node/npm packages, Chromium, an SMTP sink, ...): write an
# ensure_<name> function below and append its name to SB_STEPS in scripts/test.

# ----------------------------------------------------------------------------
# generic helpers

SB_REDIS_HOST=127.0.0.1
SB_REDIS_PORT=6379
SB_PG_HOST=127.0.0.1
SB_PG_PORT=5432
SB_PG_ROLE=switchboard
SB_PG_PASSWORD=switchboard
SB_WAIT_SECONDS=${SB_WAIT_SECONDS:-30}

SB_APT_UPDATED=0

sb_log() { # component message...
    local who=$1
    shift
    printf '%s: %s\n' "$who" "$*"
}

sb_die() { # message...
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

sb_have() { command -v "$1" >/dev/null 2>&1; }

sb_is_root() { [ "$(id -u)" -eq 0 ]; }

# True when we can run commands as root (being root, or through sudo).
sb_can_root() { sb_is_root || sb_have sudo; }

sb_as_root() { # command...
    if sb_is_root; then
        "$@"
    elif sb_have sudo; then
        sudo "$@"
    else
        return 126
    fi
}

# Run a command as another local user (root: runuser; otherwise sudo -u).
sb_as_user() { # user command...
    local user=$1
    shift
    if sb_is_root && sb_have runuser; then
        runuser -u "$user" -- "$@"
    elif sb_have sudo; then
        sudo -u "$user" -- "$@"
    else
        return 126
    fi
}

# apt-get install the given packages (apt-get update once per run). Output
# goes to a log file that is shown only when something fails.
sb_apt_install() { # component package...
    local who=$1
    shift
    sb_have apt-get || sb_die "$who: $* missing and apt-get is not available; install them by hand"
    sb_can_root || sb_die "$who: $* missing; not root and no sudo — run: apt-get install -y $*"
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/switchboard-apt.XXXXXX")
    # A C.UTF-8 locale always exists on Debian; it keeps package scripts (e.g.
    # postgresql creating its first cluster) from tripping over an unset or
    # ungenerated locale.
    local -a env=(env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8)
    if [ "$SB_APT_UPDATED" -eq 0 ]; then
        sb_log "$who" "apt-get update"
        if ! sb_as_root "${env[@]}" apt-get update >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            sb_die "$who: apt-get update failed (full log: $log)"
        fi
        SB_APT_UPDATED=1
    fi
    sb_log "$who" "apt-get install $*"
    if ! sb_as_root "${env[@]}" apt-get install -y --no-install-recommends "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        sb_die "$who: apt-get install $* failed (full log: $log)"
    fi
    rm -f "$log"
}

# Poll a command until it succeeds or $SB_WAIT_SECONDS pass.
sb_wait_for() { # command...
    local deadline=$((SECONDS + SB_WAIT_SECONDS))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

# True when something accepts TCP connections on host:port.
sb_tcp_open() { # host port
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Where services started by a non-root user keep their files.
sb_state_dir() {
    printf '%s\n' "${XDG_STATE_HOME:-$HOME/.local/state}/switchboard-test"
}

# ----------------------------------------------------------------------------
# Rust toolchain and C build prerequisites

# "1.95.0" >= "1.94" ?
sb_version_ge() { # have want
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

ensure_toolchain() {
    if ! sb_have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    sb_have cargo && sb_have rustc ||
        sb_die "rust: cargo/rustc not found. Install a current Rust toolchain with rustup (https://rustup.rs); Debian's packaged rustc is too old."

    local have want
    have=$(rustc --version | awk '{print $2}')
    want=$(sed -n 's/^rust-version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
    if [ -n "$want" ] && ! sb_version_ge "${have%%-*}" "$want"; then
        sb_die "rust: rustc $have is older than the workspace's rust-version $want; run: rustup update stable"
    fi

    # Crates with C code (aws-lc-sys, ring, the bundled SQLite) need a C
    # compiler, and linking needs libc headers: build-essential has both.
    # aws-lc-sys builds with plain cc on x86_64/aarch64 Linux; it only wants
    # cmake when asked to (AWS_LC_SYS_CMAKE_BUILDER=1).
    local -a missing=()
    sb_have cc || missing+=(build-essential)
    case "${AWS_LC_SYS_CMAKE_BUILDER:-0}" in
    1 | true) sb_have cmake || missing+=(cmake) ;;
    esac
    if ((${#missing[@]})); then
        sb_apt_install build "${missing[@]}"
    fi
    sb_log rust "rustc $have (workspace needs >= ${want:-any}), C compiler $(command -v cc)"
}

# ----------------------------------------------------------------------------
# Redis (127.0.0.1:6379)

sb_redis_ping() {
    if sb_have redis-cli; then
        [ "$(timeout 3 redis-cli -h "$SB_REDIS_HOST" -p "$SB_REDIS_PORT" ping 2>/dev/null)" = PONG ]
    else
        # Speak RESP by hand: send PING, expect +PONG.
        timeout 3 bash -c '
            exec 3<>"/dev/tcp/$0/$1" || exit 1
            printf "PING\r\n" >&3
            IFS= read -r reply <&3
            [[ $reply == "+PONG"* ]]' "$SB_REDIS_HOST" "$SB_REDIS_PORT" 2>/dev/null
    fi
}

sb_redis_start() {
    local dir logfile
    if sb_is_root; then
        dir=/var/lib/redis
        logfile=/var/log/redis/ci.log
    else
        # redis-server needs no privileges; keep its files in the user's state dir.
        dir="$(sb_state_dir)/redis"
        logfile="$dir/redis.log"
    fi
    mkdir -p "$dir" "$(dirname "$logfile")"
    sb_log redis "starting redis-server on $SB_REDIS_HOST:$SB_REDIS_PORT (log: $logfile)"
    if ! redis-server --daemonize yes --bind "$SB_REDIS_HOST" -::1 --port "$SB_REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$logfile"; then
        sb_die "redis: redis-server failed to start; see $logfile"
    fi
    if ! sb_wait_for sb_redis_ping; then
        tail -n 20 "$logfile" >&2 2>/dev/null || true
        sb_die "redis: started, but $SB_REDIS_HOST:$SB_REDIS_PORT did not answer PING within ${SB_WAIT_SECONDS}s; see $logfile"
    fi
}

ensure_redis() {
    if [ -n "${SWITCHBOARD_TEST_REDIS_URL:-}" ]; then
        sb_log redis "using SWITCHBOARD_TEST_REDIS_URL from the environment (not managing a local server)"
        if sb_have redis-cli; then
            [ "$(timeout 5 redis-cli -u "$SWITCHBOARD_TEST_REDIS_URL" ping 2>/dev/null)" = PONG ] ||
                sb_die "redis: SWITCHBOARD_TEST_REDIS_URL does not answer PING"
        fi
        return 0
    fi

    if sb_redis_ping; then
        sb_log redis "already running on $SB_REDIS_HOST:$SB_REDIS_PORT"
    else
        if sb_tcp_open "$SB_REDIS_HOST" "$SB_REDIS_PORT"; then
            sb_die "redis: something listens on $SB_REDIS_HOST:$SB_REDIS_PORT but does not answer PING (password set? another program?). Free the port, or point SWITCHBOARD_TEST_REDIS_URL at a usable Redis."
        fi
        if ! sb_have redis-server; then
            sb_apt_install redis redis-server
        fi
        # Installing the package may already have started it (sysvinit script).
        if sb_redis_ping; then
            sb_log redis "running on $SB_REDIS_HOST:$SB_REDIS_PORT (started by the package)"
        else
            sb_redis_start
            sb_log redis "started on $SB_REDIS_HOST:$SB_REDIS_PORT"
        fi
    fi
    export SWITCHBOARD_TEST_REDIS_URL="redis://$SB_REDIS_HOST:$SB_REDIS_PORT"
}

# ----------------------------------------------------------------------------
# PostgreSQL (127.0.0.1:5432) and the switchboard test role

sb_pg_ready() {
    if sb_have pg_isready; then
        pg_isready -q -h "$SB_PG_HOST" -p "$SB_PG_PORT" -t 3
    else
        sb_tcp_open "$SB_PG_HOST" "$SB_PG_PORT"
    fi
}

sb_pg_server_installed() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Highest installed server major version (e.g. 15).
sb_pg_latest_version() {
    local d v best=
    for d in /usr/lib/postgresql/*/bin/postgres; do
        v=${d#/usr/lib/postgresql/}
        v=${v%%/*}
        if [ -z "$best" ] || sb_version_ge "$v" "$best"; then
            best=$v
        fi
    done
    printf '%s\n' "$best"
}

# Start (creating it first if need be) a Debian cluster on port 5432.
sb_pg_start_cluster() {
    sb_can_root || sb_die "postgres: the server is not running and starting it needs root (or sudo): pg_ctlcluster --skip-systemctl-redirect <version> main start"
    sb_have pg_lsclusters || sb_die "postgres: pg_lsclusters missing (postgresql-common not installed?)"

    local line ver name status
    line=$(pg_lsclusters -h 2>/dev/null | awk -v port="$SB_PG_PORT" '$3 == port && !found { print $1, $2, $4; found = 1 }')
    if [ -z "$line" ]; then
        ver=$(sb_pg_latest_version)
        name=main
        if [ -d "/etc/postgresql/$ver/main" ]; then
            name=switchboard # a "main" exists but on another port; leave it alone
        fi
        sb_log postgres "creating cluster $ver/$name on port $SB_PG_PORT"
        sb_as_root env LANG=C.UTF-8 LC_ALL=C.UTF-8 \
            pg_createcluster --port "$SB_PG_PORT" --locale C.UTF-8 "$ver" "$name" >/dev/null ||
            sb_die "postgres: pg_createcluster $ver $name failed"
        status=down
    else
        read -r ver name status <<<"$line"
    fi

    case "$status" in
    online*)
        sb_log postgres "cluster $ver/$name is online; waiting for $SB_PG_HOST:$SB_PG_PORT"
        ;;
    *)
        sb_log postgres "starting cluster $ver/$name"
        # The socket directory lives on /run, which may have been emptied.
        sb_as_root install -d -m 2775 -o postgres -g postgres /var/run/postgresql 2>/dev/null || true
        sb_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
            sb_die "postgres: pg_ctlcluster $ver $name start failed; see /var/log/postgresql/postgresql-$ver-$name.log"
        ;;
    esac

    if ! sb_wait_for sb_pg_ready; then
        sb_die "postgres: cluster $ver/$name does not accept connections on $SB_PG_HOST:$SB_PG_PORT after ${SB_WAIT_SECONDS}s (listen_addresses? see /var/log/postgresql/postgresql-$ver-$name.log)"
    fi
}

# Run SQL as the postgres superuser: peer auth over the local socket first,
# then TCP as user postgres (works where host auth is trust).
sb_pg_admin_psql() { # psql args...
    local err out
    local -a psql=(psql -X -q -w -v ON_ERROR_STOP=1 -d postgres)
    if id postgres >/dev/null 2>&1 && { sb_is_root || sb_have sudo; }; then
        # cd / so psql does not warn about an unreadable working directory.
        if out=$(cd / && sb_as_user postgres "${psql[@]}" -p "$SB_PG_PORT" "$@" 2>&1); then
            printf '%s' "$out"
            return 0
        fi
        err=$out
    fi
    if out=$(PGCONNECT_TIMEOUT=5 "${psql[@]}" -h "$SB_PG_HOST" -p "$SB_PG_PORT" -U postgres "$@" 2>&1); then
        printf '%s' "$out"
        return 0
    fi
    printf '%s\n%s\n' "${err:-}" "$out" >&2
    return 1
}

sb_pg_ensure_role() {
    local exists
    exists=$(sb_pg_admin_psql -tA -c "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '$SB_PG_ROLE'") ||
        sb_die "postgres: cannot connect as the postgres superuser (tried peer auth via runuser/sudo and TCP as postgres). Create the role yourself: CREATE ROLE $SB_PG_ROLE LOGIN CREATEDB PASSWORD '$SB_PG_PASSWORD'; or set SWITCHBOARD_TEST_DATABASE_URL."
    if [ "$exists" = 1 ]; then
        # Re-assert the attributes and password so a half-configured role heals.
        sb_pg_admin_psql -c "ALTER ROLE $SB_PG_ROLE LOGIN CREATEDB PASSWORD '$SB_PG_PASSWORD'" >/dev/null ||
            sb_die "postgres: ALTER ROLE $SB_PG_ROLE failed"
        sb_log postgres "role $SB_PG_ROLE present (LOGIN CREATEDB, password reset)"
    else
        sb_pg_admin_psql -c "CREATE ROLE $SB_PG_ROLE LOGIN CREATEDB PASSWORD '$SB_PG_PASSWORD'" >/dev/null ||
            sb_die "postgres: CREATE ROLE $SB_PG_ROLE failed"
        sb_log postgres "created role $SB_PG_ROLE (LOGIN CREATEDB)"
    fi
}

sb_pg_verify_url() { # url
    local out
    if ! out=$(PGCONNECT_TIMEOUT=5 psql -X -q -w -tA "$1" -c 'select 1' 2>&1) || [ "$out" != 1 ]; then
        printf '%s\n' "$out" >&2
        sb_die "postgres: cannot run 'select 1' with SWITCHBOARD_TEST_DATABASE_URL=$1"
    fi
}

ensure_postgres() {
    local preset=${SWITCHBOARD_TEST_DATABASE_URL:-}

    if [ -z "$preset" ]; then
        if sb_pg_ready; then
            sb_log postgres "already running on $SB_PG_HOST:$SB_PG_PORT"
        else
            if ! sb_pg_server_installed; then
                sb_apt_install postgres postgresql
            fi
            # Installing the package may already have created and started 15/main.
            if sb_pg_ready; then
                sb_log postgres "running on $SB_PG_HOST:$SB_PG_PORT (started by the package)"
            else
                sb_pg_start_cluster
                sb_log postgres "started; accepting connections on $SB_PG_HOST:$SB_PG_PORT"
            fi
        fi
    else
        sb_log postgres "using SWITCHBOARD_TEST_DATABASE_URL from the environment (not managing a local server)"
    fi

    # psql (postgresql-client) is needed to set up the role and to verify.
    if ! sb_have psql; then
        sb_apt_install postgres postgresql-client
    fi

    if [ -z "$preset" ]; then
        sb_pg_ensure_role
        export SWITCHBOARD_TEST_DATABASE_URL="postgres://$SB_PG_ROLE:$SB_PG_PASSWORD@$SB_PG_HOST:$SB_PG_PORT/postgres"
    fi
    sb_pg_verify_url "$SWITCHBOARD_TEST_DATABASE_URL"
    sb_log postgres "SWITCHBOARD_TEST_DATABASE_URL works"
}

# ----------------------------------------------------------------------------
# Node.js and the npm packages of tests/js (the official socket.io-client,
# driven by tests/api/js_client.rs; playwright-core, by tests/api/board.rs)

SB_NODE_MIN=18
SB_JS_DIR=tests/js

ensure_node() {
    local -a missing=()
    sb_have node || missing+=(nodejs)
    sb_have npm || missing+=(npm)
    if ((${#missing[@]})); then
        sb_apt_install node "${missing[@]}"
    fi
    sb_have node && sb_have npm ||
        sb_die "node: node/npm still missing after installing ${missing[*]}; install Node.js >= $SB_NODE_MIN with npm by hand"

    # socket.io-client 4 and the test script (ES modules, Buffer base64url) need a
    # current Node; Debian 12's nodejs is 18, older releases ship 12 or 10.
    local have
    have=$(node --version 2>/dev/null) || sb_die "node: 'node --version' failed"
    have=${have#v}
    if ! sb_version_ge "$have" "$SB_NODE_MIN"; then
        sb_die "node: Node.js $have is older than $SB_NODE_MIN, which the JavaScript client tests need; install a newer Node.js (https://nodejs.org/en/download, or NodeSource's packages) and put it first on PATH"
    fi
    sb_log node "node $have (tests need >= $SB_NODE_MIN), npm $(npm --version 2>/dev/null)"
}

# The "version" of a package.json.
sb_js_version() { # package.json
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$1" | head -n 1
}

# Installs tests/js/node_modules exactly as package-lock.json says, when it is
# missing or the lock changed since the last install. npm writes its record
# of that install, node_modules/.package-lock.json, last; a lock newer than it
# (a pull, a version bump) means node_modules may be stale.
ensure_js_packages() {
    local client="$SB_JS_DIR/node_modules/socket.io-client/package.json"
    local playwright="$SB_JS_DIR/node_modules/playwright-core/package.json"
    local installed="$SB_JS_DIR/node_modules/.package-lock.json"
    local lock="$SB_JS_DIR/package-lock.json"
    [ -f "$lock" ] || sb_die "npm: $lock is missing (it is committed with the repository)"

    if [ -f "$client" ] && [ -f "$playwright" ] && [ -f "$installed" ] && ! [ "$lock" -nt "$installed" ]; then
        sb_log npm "$SB_JS_DIR packages up to date (socket.io-client $(sb_js_version "$client"), playwright-core $(sb_js_version "$playwright"))"
        return 0
    fi
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/switchboard-npm.XXXXXX")
    sb_log npm "npm ci --prefix $SB_JS_DIR"
    if ! npm ci --prefix "$SB_JS_DIR" --no-audit --no-fund >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        sb_die "npm: npm ci --prefix $SB_JS_DIR failed (full log: $log); is the npm registry reachable?"
    fi
    rm -f "$log"
    [ -f "$client" ] || sb_die "npm: npm ci finished but $client is missing"
    [ -f "$playwright" ] || sb_die "npm: npm ci finished but $playwright is missing"
    sb_log npm "installed socket.io-client $(sb_js_version "$client"), playwright-core $(sb_js_version "$playwright")"
}

# ----------------------------------------------------------------------------
# Chromium (headless), driven by playwright-core from tests/js in
# tests/api/board.rs (the apalis board checked in a real browser)

# The Chromium binary the tests use: SWITCHBOARD_TEST_CHROMIUM, or Debian's.
sb_chromium_path() {
    local candidate
    for candidate in "${SWITCHBOARD_TEST_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_chromium() {
    local chromium
    if ! chromium=$(sb_chromium_path); then
        sb_apt_install chromium chromium
        chromium=$(sb_chromium_path) ||
            sb_die "chromium: still missing after apt-get install chromium; install it by hand (apt-get install -y chromium) or point SWITCHBOARD_TEST_CHROMIUM at a Chromium binary"
    fi
    local version
    version=$("$chromium" --headless --no-sandbox --version 2>/dev/null) ||
        sb_die "chromium: '$chromium --version' failed; reinstall it (apt-get install --reinstall -y chromium)"
    export SWITCHBOARD_TEST_CHROMIUM="$chromium"
    sb_log chromium "$version ($chromium)"
}

# ----------------------------------------------------------------------------
# SMTP server for the e-mail tests: Debian's python3-aiosmtpd, which the tests
# start themselves (python3 -m aiosmtpd) on a free port. They run Debian's
# interpreter, /usr/bin/python3, so a pyenv or venv python first on PATH does
# not hide the package; SWITCHBOARD_TEST_PYTHON overrides it.

ensure_smtp_sink() {
    local python=${SWITCHBOARD_TEST_PYTHON:-/usr/bin/python3}
    if ! "$python" -c 'import aiosmtpd' >/dev/null 2>&1; then
        sb_apt_install smtp python3-aiosmtpd
    fi
    "$python" -c 'import aiosmtpd' >/dev/null 2>&1 ||
        sb_die "smtp: $python cannot import aiosmtpd after installing python3-aiosmtpd; install it by hand or set SWITCHBOARD_TEST_PYTHON"
    export SWITCHBOARD_TEST_PYTHON="$python"
    sb_log smtp "aiosmtpd $("$python" -c 'import aiosmtpd; print(aiosmtpd.__version__)') via $python"
}
