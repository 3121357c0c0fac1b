"""The CAT Node: this machine's store, BOMs and Factory, served over HTTP.

    cats node start [--host H] [--port 8480] [--private]     # FastAPI on uvicorn, in the foreground
                    [--unconfined] [--allow-network] [--max-output BYTES] [--max-order-seconds S]
    cats node orders [--status S] [--json]                   # the orders it was given (jobs of kind node)

Its state is CATS_HOME's: the block store, the identity (`did:key`) that signs every BOM the node
makes, the trust list, signatures and pins; the orders peers submit are jobs of kind `node` in
CATS_HOME's job table (`cats jobs` lists them with the home's own runs); what only the node keeps
(nonces of signed requests, its runs' folders) lives in `CATS_HOME/node/`, so a restart loses nothing.

    app.py      the FastAPI application (routes, signed requests, CAR streaming)
    models.py   its JSON answers (pydantic)
    nonces.py   nonces seen, kept until their signature window closes
    orders.py   which Orders are admitted (the node's policy), and the worker thread that runs them,
                caps them, cancels them and stops them with the node
    runner.py   one Order run by `cats.factory.run` in a child process (Ray's driver in its main thread)
"""
