# shellcheck shell=bash
# Shell helpers shared by quickstart.sh, the bench and profile scripts and the driver suite;
# sourced, not run.

# Runs a command as the postgres OS user when we are root (initdb and postgres refuse root).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A port nobody uses right now, below the kernel's ephemeral range (so outgoing connections,
# of which the benchmark's idle test opens a thousand, cannot take it before we bind it).
free_port() {
    local low hi p
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    hi=$(( low > 12000 ? low - 1 : 32767 ))
    while :; do
        p=$(( 10000 + RANDOM % (hi - 10000) ))
        if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] &&
            ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# Waits until 127.0.0.1:$1 accepts connections, for at most $2 tenths of a second (default
# 100, 10 s); non-zero when it never did.
wait_port() {
    local _
    for _ in $(seq 1 "${2:-100}"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
