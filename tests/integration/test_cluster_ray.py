"""Cluster mode on a real local Ray cluster (ray.cluster_utils.Cluster: a head and a second
node, each advertising `streamcap_streams`) with a real redis-server: the controller starts
4 synthetic streams as actors spread over the two nodes; the node running two of them is
removed; their actors restart on the other node, captions resume within 10 s, seq goes on
above everything seen, and every final in the log reached the viewer once (no gap, no
duplicate)."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamcap.core.types import CaptionState
from streamcap.outputs.wire import CaptionMsg
from streamcap.runtime.config import Config
from tests.helpers.servers import RedisServer
from tests.helpers.wsclient import WireClient

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

STREAMS = ["s1", "s2", "s3", "s4"]
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                          "health_check_failure_threshold": 3}


def _config() -> Config:
    return Config.model_validate({
        "server": {"port": 0},
        "engine": {"threads": 1},
        "sources": [{"id": s, "url": f"synthetic:shapes?seed={i}&fps=5&size=160x120&scene_s=2"}
                    for i, s in enumerate(STREAMS, 1)],
    })


@pytest.fixture
def ray_cluster():
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        from tests.conftest import unavailable
        unavailable("ray is not installed (the cluster extra: tools/setup.sh …,cluster)")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "resources": {"streamcap_streams": 4}, "include_dashboard": False,
        "_system_config": FAST_FAILURE_DETECTION})
    worker = cluster.add_node(num_cpus=1, resources={"streamcap_streams": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="streamcap", log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def _finals(client: WireClient, stream: str) -> list[CaptionMsg]:
    return [c for c in client.of(CaptionMsg, stream) if c.state is CaptionState.FINAL]


async def test_removing_a_node_moves_its_streams_and_nothing_is_lost(ray_cluster, tmp_path):
    import ray
    import redis

    from streamcap.runtime import bus
    from streamcap.runtime.cluster import Controller, actor_name
    from streamcap.runtime.gateway import Gateway

    cluster, worker_node = ray_cluster
    server = RedisServer(tmp_path / "redis").start()
    ctl = Controller(server.url, config=_config())
    try:
        ctl.connect()
        todo = await asyncio.to_thread(ctl.reconcile_once)
        assert sorted(todo.start) == STREAMS
        infos = {s: ray.get(ray.get_actor(actor_name(s)).info.remote(), timeout=120) for s in STREAMS}
        assert all(i["worker"] == "running" for i in infos.values()), infos
        nodes = {s: i["node"] for s, i in infos.items()}
        moved = sorted(s for s, n in nodes.items() if n == worker_node.node_id)
        assert len(moved) == 2, nodes  # SPREAD: two streams on each node
        async with Gateway(_config(), server.url) as gw:
            ws = gw.url("/ws").replace("http://", "ws://", 1) + "?streams=" + ",".join(STREAMS)
            async with WireClient(ws) as client:
                await client.wait_for(lambda: all(len(_finals(client, s)) >= 2 for s in STREAMS) or None,
                                      90, "two finals of every stream")
                newest = {s: max(c.seq for c in client.of(CaptionMsg, s)) for s in moved}
                removed_at = time.monotonic()
                await asyncio.to_thread(cluster.remove_node, worker_node)
                # captions of the moved streams again, numbered above everything seen
                for s in moved:
                    await client.wait_for(
                        lambda s=s: [c for c in client.timed(CaptionMsg, s) if c[1].seq > newest[s]] or None,
                        30, f"captions of {s} after the node went")
                resumed_after = {s: min(t for t, c in client.timed(CaptionMsg, s) if c.seq > newest[s]) - removed_at
                                 for s in moved}
                # and a final of each moved stream after it
                await client.wait_for(lambda: all(any(c.seq > newest[s] for c in _finals(client, s)) for s in moved)
                                      or None, 60, "a final of each moved stream after the move")
                got = {s: [c.seq for c in _finals(client, s)] for s in STREAMS}
        after = {s: ray.get(ray.get_actor(actor_name(s)).info.remote(), timeout=60) for s in moved}
        assert all(after[s]["node"] != worker_node.node_id for s in moved)
        assert all(after[s]["started_at_seq"] > newest[s] for s in moved), (after, newest)
        assert max(resumed_after.values()) <= 10.0, resumed_after
        r = redis.Redis.from_url(server.url, decode_responses=True)
        for s in STREAMS:
            log = [bus.seq_of(e) for e, _ in r.xrange(bus.finals_key(s))]
            window = [q for q in log if got[s][0] <= q <= got[s][-1]]
            assert got[s] == window, (s, got[s], window)  # every final in the log, once, in order
        r.close()
        print(f"moved {moved}: captions again after {resumed_after} s")
    finally:
        ctl.stop_all()
        server.stop()
