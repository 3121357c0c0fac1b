"""The mesh of CAT Nodes: nodes that serve their blocks and BOMs over HTTP and run Orders
for the peers they trust.

    cats node start                       # this machine as a node: cats.mesh.node (FastAPI on uvicorn)
    cats mesh pull BOM --from URL         # other nodes, from here: cats.mesh.client
    cats mesh submit order.py --to URL    # the Order goes to its data; the signed BOM comes back

A node's reads follow the IPFS trustless gateway (`GET /ipfs/{cid}` as a raw block or a CAR), so
whatever arrives is checked against its CID by whoever receives it; writes (blocks, pins,
signatures, Orders) are signed requests (`cats.identity.requests`) from DIDs on the trust list.
"""
