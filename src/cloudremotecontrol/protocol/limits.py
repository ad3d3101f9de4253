"""Sizes and rates the server and agent enforce; documented in docs/reference.md (Limits)."""

MAX_FRAME_BYTES = 1 << 20  # one WebSocket frame, either direction
MAX_HTTP_BODY_BYTES = 1 << 20  # one JSON request body
MAX_MESSAGE_BODY_BYTES = 256 << 10  # the JSON body of one user message
MAX_KV_VALUE_BYTES = 64 << 10  # the JSON value of one key/value key
MAX_OUTPUT_CHUNK_BYTES = 64 << 10  # one job.output message
MAX_OUTPUT_KEPT_BYTES = 4 << 20  # output kept server-side per job target
MAX_COMMAND_BYTES = 128 << 10  # argv or shell string of one job
MAX_MACHINES_PER_GROUP = 1000
MAX_SCENARIO_STEPS = 500  # steps of one scenario (`crc up` run shown on the dashboard)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
DEFAULT_JOB_TIMEOUT_SECONDS = 600
DEFAULT_KEY_TTL_SECONDS = 24 * 3600
HEARTBEAT_SECONDS = 20.0  # WebSocket ping interval and pong timeout (streams, masters)
# An agent's control connection: TCP keepalive finds a vanished peer (keepalive.py), so
# the agent pings only this often (a live kernel, a hung process); the server closes a
# connection silent for AGENT_SILENCE_SECONDS (its --agent-silence-timeout).
AGENT_PING_SECONDS = 45.0  # under the 60 s idle timeout of proxies (nginx, AWS ALB)
AGENT_SILENCE_SECONDS = 120.0
MAX_UNACKED = 1000  # messages in flight to one agent before the server waits for acks
MAX_FILE_BYTES = 4 << 30  # one file pushed or pulled (streamed, never held in memory)
MAX_FACT_ADDRESSES = 64  # addresses per list in a machine's facts
# Key/value long polls (GET .../kv/KEY?wait=) waiting at once, per machine and per master
# user, in one server process; past it 429 (each wait holds a connection, a socket).
MAX_KV_WAITS_PER_MACHINE = 16  # an agent waits once per `crc agent kv wait` running
MAX_KV_WAITS_PER_USER = 128  # a scenario waits once per running step (`--parallel` <= 64)
KV_WAIT_RETRY_AFTER_SECONDS = 5
MAX_KV_WAIT_SECONDS = 300.0  # one key/value long poll (`crc kv get --wait`, `crc agent kv wait`)
# user.* messages waiting in one machine's outbox (sent, not yet acknowledged) past which
# a machine's message to it is refused (the master's never are): a compromised machine
# looping 256 KiB messages to `all` fills neither the database nor its peers.
MAX_PENDING_PEER_MESSAGES = 100
MAX_JSON_DEPTH = 32  # nesting of any JSON value a client or machine sends (a body, a value)


def file_too_large(name: str, how: str) -> str:
    """The one wording of a file over ``MAX_FILE_BYTES``; ``how``: "pushed", "pulled"."""
    return f"{name} is larger than {MAX_FILE_BYTES >> 30} GiB, the most one file {how} can be"
