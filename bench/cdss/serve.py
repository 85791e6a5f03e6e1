"""Start one benchmark target the way `haidang serve` does: `serve.py APP PORT WORKERS [STACK]`.

STACK: "auto" (uvloop + httptools, as served) or "asyncio-h11"."""

import sys

from serving.cdss.app import run_http

if __name__ == "__main__":
    run_http(sys.argv[1], "127.0.0.1", int(sys.argv[2]), int(sys.argv[3]),
             sys.argv[4] if len(sys.argv) > 4 else "auto")
