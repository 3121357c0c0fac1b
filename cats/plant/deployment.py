"""What a Plant reads from its deployment: the outputs of the `terraform/` module.

`terraform output -json` prints `{"name": {"value": ..., "type": ..., "sensitive": bool}, ...}`;
of those, a run needs the Ray address of the cluster and the RPC API of its IPFS node, the store
every Ray pod opens. Reading them from the outputs file, rather than having them typed by hand,
keeps the Plant pointed at what was actually deployed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cats.cas.store.ipfs import api_url
from cats.errors import CatsError
from cats.plant import Plant

# The outputs of terraform/outputs.tf a run reads (tests/test_iac.py checks the module has them).
OUTPUTS = ("ray_address", "ipfs_api")


class Deployment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ray_address: str
    ipfs_api: str

    @classmethod
    def from_outputs(cls, source: str | Path | Mapping[str, Any]) -> Deployment:
        """Read `terraform output -json`, as a file or already parsed; a CatsError names what is wrong."""
        if isinstance(source, Mapping):
            where, outputs = "deployment outputs", source
        else:
            where = f"deployment outputs {source}"
            try:
                outputs = json.loads(Path(source).read_text())
            except FileNotFoundError:
                raise CatsError(f"{where}: no such file (write it with `terraform output -json > {source}`)") from None
            except (OSError, UnicodeDecodeError) as e:
                raise CatsError(f"{where}: cannot read it: {e}") from None
            except json.JSONDecodeError as e:
                raise CatsError(f"{where}: not JSON ({e}); expected what `terraform output -json` prints") from None
        if not isinstance(outputs, Mapping):
            raise CatsError(f"{where}: expected a JSON object of outputs, as `terraform output -json` prints")
        values: dict[str, str] = {}
        for name in OUTPUTS:
            if name not in outputs:
                raise CatsError(f"{where}: no output {name!r} (has `terraform apply` run? outputs found: "
                                f"{', '.join(sorted(outputs)) or 'none'})")
            entry = outputs[name]
            value = entry.get("value") if isinstance(entry, Mapping) else None
            if not isinstance(value, str) or not value.strip():
                raise CatsError(f"{where}: output {name!r} must have a non-empty string value, "
                                f"got {json.dumps(entry, default=str)[:80]}")
            values[name] = value.strip()
        try:
            api_url(values["ipfs_api"])
        except CatsError as e:
            raise CatsError(f"{where}: output 'ipfs_api': {e}") from None
        return cls(**values)

    def plant(self, plant: Plant) -> Plant:
        """The Plant on this deployment's Ray; everything else about it (CPUs, replicas, …) stays."""
        return plant.model_copy(update={"address": self.ray_address})

    def environment(self) -> dict[str, str]:
        """The variables that make this process (the driver) use the deployment's IPFS node as its store."""
        return {"CATS_IPFS_API": self.ipfs_api}
