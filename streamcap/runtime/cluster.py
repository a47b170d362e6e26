"""Cluster mode on Ray: one restartable actor per stream, placed by a custom resource, and the
controller that keeps the running actors equal to the wanted streams.

- :class:`StreamActor` runs a :class:`~streamcap.runtime.worker.StreamWorker` on its own event
  loop thread, started in ``__init__``: when Ray restarts the actor (its process or its node
  died; ``max_restarts=-1``) the new one picks the stream up from the bus by itself, with no
  call from the controller. Named ``stream:ID`` in the ``streamcap`` namespace, detached (the
  controller may restart without touching the streams).
- Placement: each actor needs 1 of the custom resource ``streamcap_streams``; a node started
  with ``--resources='{"streamcap_streams": N}'`` runs at most N streams (how many it can
  decode). ``SPREAD`` scheduling puts the streams on different nodes while there is room.
  Zero-resource actors would ignore placement (ENVIRONMENT.md), so the resource is required.
- :class:`Controller`: reads the wanted streams (the config's ``[[sources]]``; re-read when the
  file changes), plans with :func:`streamcap.core.reconcile.plan`, starts/stops/replaces actors
  and keeps the bus's stream set (``sc:streams``) equal to the wanted set.

Ray is imported lazily: single-box ``streamcap run`` never needs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

from streamcap.core.reconcile import Plan, fingerprint, plan
from streamcap.runtime.config import Config, load_config

log = logging.getLogger(__name__)

NAMESPACE = "streamcap"
RESOURCE = "streamcap_streams"
ACTOR_PREFIX = "stream:"


def actor_name(stream_id: str) -> str:
    return f"{ACTOR_PREFIX}{stream_id}"


def worker_config(config: Config, stream_id: str) -> Config:
    """The config a stream's worker gets: everything, with only its own source."""
    data = config.model_dump(mode="json")
    data["sources"] = [s for s in data.get("sources") or [] if s["id"] == stream_id]
    return Config.model_validate(data)


def wanted_streams(config: Config) -> dict[str, dict]:
    """Stream id → the spec its worker is started with (config JSON of that stream's worker)."""
    return {s.id: worker_config(config, s.id).model_dump(mode="json") for s in config.sources}


class StreamActor:
    """Ray actor body (see the module doc); wrapped with ``ray.remote`` by :func:`actor_class`."""

    def __init__(self, spec: dict, stream_id: str, bus_url: str, fingerprint_: str) -> None:
        from streamcap.runtime.worker import StreamWorker

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from streamcap.server import logfilter
        logfilter.install()
        self._fingerprint = fingerprint_
        config = Config.model_validate(spec)
        url = config.sources[0].url
        self._worker = StreamWorker(config, stream_id, url, bus_url)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"stream-{stream_id}", daemon=True)
        self._thread.start()
        # started here, not by a call: a restarted actor resumes its stream by itself
        self._start = asyncio.run_coroutine_threadsafe(self._worker.start(), self._loop)

    def fingerprint(self) -> str:
        return self._fingerprint

    def info(self) -> dict:
        """The worker's state (waits up to 60 s for it to start); includes the Ray node id."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        try:
            self._start.result(60)
        except TimeoutError:
            return {"stream": self._worker.stream_id, "worker": "starting", "node": node}
        except Exception as exc:
            return {"stream": self._worker.stream_id, "worker": "failed", "failure": repr(exc), "node": node}
        out = asyncio.run_coroutine_threadsafe(_call(self._worker.info), self._loop).result(10)
        out.update(worker="failed" if out.get("failure") else "running", node=node, pid=os.getpid())
        return out

    def stop(self) -> bool:
        """Stop the stream and write what is queued for the bus (the controller then kills the actor)."""
        asyncio.run_coroutine_threadsafe(self._worker.stop(), self._loop).result(30)
        return True


async def _call(fn):
    return fn()


def actor_class():
    """``StreamActor`` as a Ray actor class: restarted forever, 1 ``streamcap_streams`` each."""
    import ray

    return ray.remote(max_restarts=-1, num_cpus=0, resources={RESOURCE: 1})(StreamActor)


class Controller:
    """Reconciles the wanted streams with the running actors (see the module doc). Sync: it runs
    in its own process (``streamcap controller``) or a test thread."""

    def __init__(self, bus_url: str, *, config: Config | None = None, config_path: str | Path | None = None,
                 ray_address: str | None = None, max_starts: int = 16) -> None:
        if (config is None) == (config_path is None):
            raise ValueError("give config or config_path")
        self.bus_url = bus_url
        self._config_path = Path(config_path) if config_path is not None else None
        self._config = config
        self._config_mtime: float | None = None
        self._ray_address = ray_address
        self._max_starts = max_starts
        self._known: dict[str, str | None] = {}  # stream → fingerprint of its running actor
        self._redis = None

    def connect(self) -> None:
        import ray
        import redis

        if not ray.is_initialized():
            ray.init(address=self._ray_address, namespace=NAMESPACE, log_to_driver=False)
        self._redis = redis.Redis.from_url(self.bus_url, decode_responses=True, socket_connect_timeout=5)

    def config(self) -> Config:
        if self._config_path is not None:
            mtime = self._config_path.stat().st_mtime
            if self._config is None or mtime != self._config_mtime:
                self._config = load_config(self._config_path)
                self._config_mtime = mtime
                log.info("controller: %d streams wanted (%s)", len(self._config.sources), self._config_path)
        assert self._config is not None
        return self._config

    def running(self) -> dict[str, str | None]:
        import ray

        names = [n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX)]
        out: dict[str, str | None] = {}
        for name in names:
            sid = name[len(ACTOR_PREFIX):]
            fp = self._known.get(sid)
            if fp is None:  # an actor this controller did not start (it restarted): ask it
                try:
                    fp = ray.get(ray.get_actor(name).fingerprint.remote(), timeout=30)
                except Exception as exc:  # boundary: an actor that cannot answer yet is left alone
                    log.info("controller: %s does not answer yet (%s)", name, type(exc).__name__)
                    fp = None
            out[sid] = fp
        return out

    def reconcile_once(self) -> Plan:
        specs = wanted_streams(self.config())
        wanted = {sid: fingerprint(spec) for sid, spec in specs.items()}
        running = self.running()
        todo = plan(wanted, running, max_starts=self._max_starts)
        for sid in todo.stop + todo.replace:
            self._kill(sid)
        for sid in todo.replace + todo.start:
            actor_class().options(name=actor_name(sid), namespace=NAMESPACE, lifetime="detached",
                                  scheduling_strategy="SPREAD").remote(specs[sid], sid, self.bus_url, wanted[sid])
            self._known[sid] = wanted[sid]
            log.info("controller: started %s", sid)
        if self._redis is not None:
            if wanted:
                self._redis.sadd("sc:streams", *wanted)
            gone = set(self._redis.smembers("sc:streams")) - set(wanted)
            if gone:
                self._redis.srem("sc:streams", *gone)
        return todo

    def _kill(self, sid: str) -> None:
        import ray

        try:
            actor = ray.get_actor(actor_name(sid))
        except ValueError:
            return
        try:
            ray.get(actor.stop.remote(), timeout=30)  # drain its bus writes first
        except Exception as exc:  # boundary: a stuck actor is killed anyway
            log.warning("controller: %s did not stop cleanly (%s)", sid, type(exc).__name__)
        ray.kill(actor, no_restart=True)
        self._known.pop(sid, None)
        log.info("controller: stopped %s", sid)

    def run(self, period_s: float = 2.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                todo = self.reconcile_once()
                if not todo.empty:
                    log.info("controller: started %d, stopped %d, replaced %d", len(todo.start), len(todo.stop),
                             len(todo.replace))
            except Exception:  # boundary: the next round tries again
                log.exception("controller: reconcile failed")
            stop.wait(period_s)

    def stop_all(self) -> None:
        for sid in list(self.running()):
            self._kill(sid)


def wait_for(predicate, timeout_s: float, every_s: float = 0.2):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout_s`` passes
    (TimeoutError). For the CLI and tests that wait on a cluster's state."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not reached within {timeout_s:g} s")
        time.sleep(every_s)
