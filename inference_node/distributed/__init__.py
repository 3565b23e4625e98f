"""One model across several hosts (or local ranks) through mlx.distributed.

    inference-node serve --ranks N | --hostfile hosts.json      (or [distributed] in the TOML)

    supervisor.py   the process serve runs: mlx.launch, the port while the ranks are down,
                    relaunches
    launcher.py     mlx.launch, without its idle spin on the ranks' stdin
    rank.py         what each rank runs: joins the group; rank 0 leads and serves gRPC,
                    the others follow and open no port
    cluster.py      the hosts: mlx's hostfile format, or N ranks on loopback
    control.py      rank 0 -> all messages and all -> all readings, as collectives
    doorbell.py     rank 0's wake-up line to the others, which sleep on it while idle
    sharding.py     tensor or pipeline split, as mlx-lm has it; per-rank plan from headers
    mirror.py       rank 0's batch and prompt cache, their changes queued for the others
    leader.py       rank 0's guard on every collective, watchdog, heartbeat, failure hooks
    sharded_engine.py  the engine on rank 0 (a subclass: loads, unloads, fails fast)
    follower.py     every other rank's loop
    ranked.py       admission per host: one ledger each, split by the plan
    planning.py     `inference-node plan` with a row per host

Nothing here is imported by a single-host server.
"""
