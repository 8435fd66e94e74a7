"""`omnigraph serve`: a loaded pipeline behind an OpenAI-compatible HTTP API.

Starlette on uvicorn (the `[serve]` extra, imported only by `serve`): the ASGI core FastAPI
is built on, without FastAPI's dependency-injection layer, which the few fixed routes here do
not need; request bodies are pydantic models (already a core dependency), the metrics are
prometheus_client's. The server is asyncio end to end on Pipeline.arun/astream: a request is
never a thread, a streaming client costs one task, a client that disconnects cancels its request.

- surface.py   which OpenAI endpoints a pipeline's typed inputs and outputs can serve
- app.py       the Starlette app: routes, auth, limits, health, models, metrics
- chat.py      POST /v1/chat/completions (text, audio out, SSE)
- media.py     POST /v1/audio/speech, /v1/images/generations
- run.py       POST /v1/pipelines/{name}/run, the general form every pipeline has
- wire.py      request parsing, base64 media, SSE framing, OpenAI's error JSON
- metrics.py   Prometheus counters and histograms
- server.py    uvicorn with a graceful drain on SIGINT/SIGTERM
"""
