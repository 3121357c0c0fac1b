"""Content addressing: CIDs, codecs (raw, dag-pb, dag-cbor, dag-json), UnixFS, block stores, CAR.

Everything else in CATs names data by the CIDs made here; nothing here depends on the rest.
"""
