"""`sorakit serve`: OpenAI's video API over sorakit's pipelines, a durable job store, a web UI.

    app.py      FastAPI routes (/v1/videos..., /v1/models, /, /health, /metrics), auth, body limit
    api.py      request parsing and validation, the Video object, OpenAI-shaped errors
    store.py    the SQLite job store (transactions, atomic claims, re-queue after a crash)
    pool.py     worker processes: started, watched, replaced when one dies
    worker.py   one worker: load the model once, claim jobs, run the pipeline, write the files
    static/     the web UI (one HTML page using the same /v1 API)

The server imports :mod:`sorakit.pipelines`, never :mod:`sorakit.cli`.
"""
