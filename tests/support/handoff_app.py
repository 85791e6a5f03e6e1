"""A tiny app for tests/serving/test_http_handoff.py: answers with the id of the worker process."""

import os

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/pid")
    async def pid() -> dict:
        return {"pid": os.getpid()}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return app
