"""The Data Service: a small HTTP registry of datasets named by URI, with signed, expiring reads.

    cats data token add alice            # a principal and its bearer token, written offline
    cats data serve                      # FastAPI on uvicorn, state in CATS_HOME/dataservice/
    POST /data/register  {uri, meta}     -> {handle, uri, uris, meta, owner, readers, expires_at}
    GET  /data/{handle}                  -> the same, for its owner and readers
    POST /data/sign      {handle, ttl_s} -> {signed_uri, expires_at}: GET /d/{handle}?...&sig=HMAC

The service stores references and metadata and streams bytes through `cats.data` when a signed URL
is fetched; it never computes on them. Modules, one concern each:

    models.py   the wire format (pydantic): requests, responses, dataset metadata
    db.py       state in one SQLite file (WAL): principals, datasets, their URIs and readers, access log
    signing.py  the HMAC key (a 0600 file made on first start), signatures, tokens
    app.py      the FastAPI application
    client.py   an httpx client for the CLI (`CATS_DATA_SERVICE`, `CATS_DATA_TOKEN`)
    probe.py    metadata the client computes cheaply before registering (format, npy/Parquet headers, sha256)

Everything lives in `CATS_HOME/dataservice/`, so a restart loses nothing. Sources are read within
`cats.data.reach.Reach.service()`: what the operator shares, never the node's own state.
"""
