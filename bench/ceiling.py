"""The ceiling: a minimal Falcon + waitress app that answers POST /tasks with a 202 and does nothing else.

    python -m bench.ceiling [--port 0]

It runs with the service's own server settings (run.waitress_options, run.tune_interpreter), so the benchmark can
report the service's figures as ratios to what waitress and Falcon manage on this machine.
"""

from __future__ import annotations

import argparse
import logging
import uuid

import falcon
import waitress

from conf import load_config
from run import tune_interpreter, waitress_options


class Tasks:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.bounded_stream.read()
        resp.status = falcon.HTTP_202
        resp.media = {"id": str(uuid.uuid4()), "status": "queued"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config()
    tune_interpreter(config)
    app = falcon.App()
    app.add_route("/tasks", Tasks())
    options = waitress_options(config) | {"port": args.port}
    server = waitress.create_server(app, **options)
    logging.info("ceiling ready on http://%s:%s", options["host"], server.effective_port)
    try:
        server.run()
    finally:
        server.close()


if __name__ == "__main__":
    main()
