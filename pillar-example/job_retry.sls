# salt-job-retry: every option of the `job_retry:` block, with its default.
#
# This block goes in the MASTER config (e.g. /etc/salt/master.d/job_retry.conf):
# the returner, runner and engine all run on the master and read it from there.
# The file is kept in pillar form so it can also be served to minions that use
# `--return job_retry` (the returner then reads it with config.get).

job_retry:
  # Master switch. Off (the default): nothing is recorded or replayed, and
  # `salt-run job_retry.*` answers with an error saying it is disabled.
  enabled: false

  # Where the state lives: redis://, rediss:// (TLS) or unix:// URLs.
  # A password may be given in the URL (redis://:secret@host:6379/0).
  redis_url: redis://127.0.0.1:6379/0

  # Redis password; overrides one in redis_url. (default: none)
  # password: secret

  # Prefix of every Redis key: A-Z a-z 0-9 _ . : - (at most 64 characters).
  key_prefix: job_retry

  # Seconds to wait for Redis before a call fails.
  socket_timeout: 5.0

  # Seconds after publish before a silent minion counts as missing and is
  # queued by the sweep. (A minion that starts earlier gets the job anyway.)
  timeout: 30

  # Replays per (jid, minion); after that it is marked exhausted.
  max_attempts: 3

  # Seconds every key lives after its last write (7 days).
  ttl: 604800

  # Seconds a replay claim blocks another replay of the same (jid, minion):
  # duplicate start events (two masters, reconnect bursts) replay once.
  claim_lease: 10

  # Functions never replayed (globs). Setting this REPLACES the default list:
  exclude_functions:
    - saltutil.find_job
    - saltutil.running
    - saltutil.is_running
    - saltutil.kill_job
    - saltutil.term_job
    - saltutil.signal_job
    - saltutil.sync_*
    - saltutil.refresh_*
    - saltutil.clear_*
    - test.ping
    - test.version
    - test.versions*
    - test.echo
    - sys.*
    - grains.get
    - grains.item
    - grains.items
    - grains.ls
    - pillar.get
    - pillar.item
    - pillar.items
    - pillar.ls
    - config.get
    - config.option
    - state.running
    - state.show_*
    - mine.get

  # If non-empty, only these functions are recorded (exclusions still apply).
  include_functions: []

  # Seconds between the engine's sweeps.
  interval: 10

  # Seconds `salt-run job_retry.retry` waits for test.ping to learn which
  # minions are connected.
  retry_ping_timeout: 5

  # Events the returner keeps in memory while Redis is unreachable.
  backlog_max: 10000
