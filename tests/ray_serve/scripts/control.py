"""Owns a local Ray instance with Serve for tests/ray_serve, run in the ray venv: one JSON command a
line on stdin, one JSON answer a line on stdout. Closing stdin shuts Serve and Ray down.

    {"op": "deploy", "args": {...}}   serve.run(build_app(args)): returns once it is running
    {"op": "replicas"}                 the live replicas' ids, and Serve's count by state
    {"op": "kill", "replica": ID}      kills that replica's actor, as a crash would

Usage: control.py HTTP_PORT NUM_CPUS
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import ray
from ray import serve

from scribe_service.ray_serve import DEPLOYMENT, build_app

APP = "scribe"
PREFIX = f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#"


def replicas() -> dict[str, Any]:
    names = ray.util.list_named_actors(all_namespaces=True)
    ids = sorted(a["name"][len(PREFIX) :] for a in names if a["name"].startswith(PREFIX))
    status = serve.status().applications[APP].deployments[DEPLOYMENT]
    return {"ids": ids, "states": {str(k): v for k, v in status.replica_states.items()}}


def handle(command: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    if command["op"] == "deploy":
        serve.run(build_app(command["args"]), name=APP, route_prefix="/")
        return {"seconds": time.monotonic() - started}
    if command["op"] == "replicas":
        return replicas()
    if command["op"] == "kill":
        ray.kill(ray.get_actor(PREFIX + command["replica"], namespace="serve"), no_restart=True)
        return {}
    raise ValueError(f"unknown op {command['op']!r}")


def main(port: int, cpus: int) -> None:
    started = time.monotonic()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    serve.start(
        proxy_location="EveryNode",
        http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 170},
    )
    print(json.dumps({"ready": time.monotonic() - started}), flush=True)
    try:
        for line in sys.stdin:
            try:
                answer = {"ok": True, **handle(json.loads(line))}
            except Exception as exc:  # the test shows it; the instance stays up
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
