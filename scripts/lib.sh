# Shared by the measurement scripts (sourced, not run): a free port, a local mosquitto's
# configuration, the module's development identity and SimulatedTemperatureSensor's message.

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# The module identity the scripts run the module as (a connection string with a test key).
DEV_CONNECTION_STRING="HostName=h;DeviceId=dev;ModuleId=filter;SharedAccessKey=c2VjcmV0"
SENSOR_BODY='{"machine":{"temperature":31.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}'
SENSOR_TOPIC='devices/dev/modules/filter/inputs/input1/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor'

# A TCP port nothing listens on.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# write_mosquitto_conf FILE PORT [LINE...]: a broker on 127.0.0.1:PORT, anonymous, that never drops
# queued messages (its default max_queued_messages 1000 drops them for a slow consumer), plus LINEs.
write_mosquitto_conf() {
  local file=$1 port=$2
  shift 2
  { printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$port"
    [ $# -eq 0 ] || printf '%s\n' "$@"; } > "$file"
}

# make_certificates DIR: a test CA (DIR/ca.pem) and a server certificate for localhost and
# 127.0.0.1 signed by it (DIR/server.pem, DIR/server.key), for a TLS mosquitto.
make_certificates() {
  local d=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=edgefilter-test-ca \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$d/san.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/san.ext" -out "$d/server.pem" 2>/dev/null
}
