"""Verification by CID: re-execute slices from the store alone, audit samples, check integrity,
compare environments, and run cheap validators that fetch only what they need.
"""
