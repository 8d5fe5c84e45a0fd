# salt-job-retry: every option of the `job_retry:` block, with its default.
# Generated from salt_job_retry/config.py by scripts/gen_config_docs.py.
#
# This block goes in the MASTER config (e.g. /etc/salt/master.d/job_retry.conf):
# the returner, runner and engine all run on the master and read it there.
# Minions that use `--return job_retry` read it with config.get (pillar works).

job_retry:
  # Master switch. Off: nothing is recorded or replayed and runners say so. (boolean)
  enabled: false

  # Where the state lives. A password may be given in the URL. (redis://, rediss:// or unix:// URL)
  redis_url: redis://127.0.0.1:6379/0

  # Redis Sentinel addresses; when set, the master of `sentinel_service` is used (`redis_url` gives db and TLS). (list of host:port strings)
  sentinels: []

  # The Sentinel service (master group) name. (string)
  sentinel_service: mymaster

  # Password of the Sentinels themselves, if any. (string)
  # sentinel_password:

  # Redis Cluster startup nodes; when set, Cluster mode is used (`redis_url` gives TLS only). (list of host:port strings)
  cluster_nodes: []

  # Redis ACL user; overrides one in `redis_url`. (string)
  # username:

  # Redis password; overrides one in `redis_url`. (string)
  # password:

  # CA bundle to verify a `rediss://` server. (path string)
  # ssl_ca_certs:

  # Client certificate for `rediss://` (mutual TLS). (path string)
  # ssl_certfile:

  # Key of `ssl_certfile`. (path string)
  # ssl_keyfile:

  # Prefix of every Redis key, so several masters or tests can share a Redis. (string of A-Z a-z 0-9 _ . : - (max 64))
  key_prefix: job_retry

  # Seconds to wait for Redis before a call fails. (number > 0)
  socket_timeout: 5.0

  # Seconds after publish before a silent minion counts as missing for the sweep. (number > 0)
  timeout: 30

  # Replays per (jid, minion) before it is marked exhausted. (integer >= 1)
  max_attempts: 3

  # Seconds every key lives after its last write (default 7 days). (integer >= 60)
  ttl: 604800

  # Seconds an engine holds a minion's replay sequence; an engine silent for 3 leases is replaced. (number > 0)
  claim_lease: 10

  # Functions never recorded for replay. Setting it replaces the default list. (list of glob strings)
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

  # If non-empty, only these functions are recorded (exclusions still apply). (list of glob strings)
  include_functions: []

  # Seconds between the engine's sweeps. (number > 0)
  interval: 10

  # Fleet-wide replay rate (all engines on this Redis); the rest wait their turn. (number > 0)
  max_replays_per_second: 50

  # Replay under the original jid (minions drop duplicates) or a fresh, linked one. ('original' or 'new')
  replay_jid: original

  # Seconds a minion's sequence waits for a replay's return before the next job goes out. (number > 0)
  replay_wait: 300

  # Jobs whose newer identical twin is owed too are not replayed (`superseded`). `fun` matches calls without arguments, `fun(*)` calls with any arguments. [] turns it off. (list of glob strings)
  supersede_functions: 
    - state.highstate
    - state.apply

  # Times a replay refused by a running state run is sent again before it is exhausted. (integer >= 1)
  max_refusals: 30

  # Seconds the engine waits for a minion to report its pid (when its start event has none). (number > 0)
  probe_timeout: 5

  # Replay a job a minion acknowledged but restarted before returning. (boolean)
  replay_interrupted: false

  # Also replay when `salt/presence/change` lists a minion as new (needs presence_events). (boolean)
  replay_on_presence: false

  # Seconds `retry` waits for saltutil.running answers (connected, and still running the job?). (number > 0)
  retry_ping_timeout: 5

  # Jobs whose packed arguments are larger are not recorded (status says why). (integer >= 1024)
  max_job_bytes: 1048576

  # The job cache that keeps Salt's job history when `master_job_cache: job_retry` stands in front of it. (returner name other than job_retry)
  job_cache: local_cache

  # Where events wait while Redis is unreachable (default: <cachedir>/job_retry). (path string)
  # spool_dir:

  # Size cap of the spool; events past it are dropped with an error. (integer >= 0)
  spool_max_bytes: 67108864
