"""The ceiling: a minimal Falcon + waitress app that answers POST /tasks with a 202 and does nothing else.

    python -m bench.ceiling [--port 0]

It runs with the service's own server settings (api.server.waitress_options, run.tune_interpreter), so the benchmark can
report the service's figures as ratios to what waitress and Falcon manage on this machine.
"""

from __future__ import annotations

import argparse
import logging
import uuid

import falcon
import waitress

from api.server import listen, url_of, waitress_options
from conf import load_config
from run import tune_interpreter


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
    config = load_config(overrides={"server": {"port": args.port}})
    tune_interpreter(config)
    app = falcon.App()
    app.add_route("/tasks", Tasks())
    sock = listen(config)
    server = waitress.create_server(app, sockets=[sock], **waitress_options(config))
    logging.info("ceiling ready on %s", url_of(sock))
    try:
        server.run()
    finally:
        server.close()
        sock.close()


if __name__ == "__main__":
    main()
