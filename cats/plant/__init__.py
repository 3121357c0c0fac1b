"""Plants: where an Order runs. The embedded local Ray by default, or an existing cluster.

Only `connect()` imports Ray, so commands that never compute stay fast to start.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from cats.errors import CatsError

# 1 and 1.0 must encode alike, or the same Plant written two ways would get two CIDs.
Float = Annotated[float, AfterValidator(float)]


class Plant(BaseModel):
    """Where and how the slices run: which Ray (none: the embedded local one), CPUs and resources per
    task, retries, a time limit per slice, batching, redundant execution (`replicas`), and confinement
    (`confined`, with the `network` and `env` confined code gets), and the peers' nodes whose evaluations
    may be taken instead of running a slice (`reuse_from`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(default=None, description="Ray address; None starts (or joins) a local Ray")
    num_cpus: Float = Field(default=1.0, gt=0, description="CPUs per slice task")
    num_gpus: Float = Field(default=0.0, ge=0, description="GPUs per slice task (a fraction shares one)")
    resources: dict[str, Float] = Field(default_factory=dict, description="custom Ray resources per task")
    retries: int = Field(default=3, ge=0, description="retries of a task whose worker died")
    timeout_s: Float | None = Field(default=None, gt=0, description="limit per slice")
    batch: int | None = Field(default=None, gt=0, description="slices per task; None picks one")
    replicas: int = Field(default=1, ge=1, description="distinct worker processes that run each slice; "
                          "a strict majority of identical output CIDs decides")
    on_disagreement: Literal["fail", "mark"] = Field(
        default="fail", description="a majority with dissent fails the slice, or is kept and marked in the BOM")
    locality: bool = Field(default=True, description="on a cluster whose nodes advertise their stores "
                           "(cats-store:<name>), run each slice next to a store holding its input")
    confined: bool = Field(default=False, description="run the code in a sandbox: its input, its code read-only, "
                           "a private scratch folder, no other process, no network, nothing of CATS_HOME")
    network: bool = Field(default=False, description="confined code may reach the network (a node grants it only "
                          "if its policy allows)")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables of confined code "
                                "(it starts with an empty environment)")
    # Never encoded: where results may be fetched from is not what the Order asks for. A slice taken from a
    # trusted peer is the same evaluation, with the same output CID, as one run here, so the Order, its CID
    # and its memoized BOM must not depend on which peers were asked (or on their URLs changing).
    reuse_from: list[str] = Field(default_factory=list, exclude=True,
                                  description="CAT Node URLs asked for the evaluations of slices no run here has "
                                  "computed; an answer is taken only if a peer this home trusts signed its BOM")

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, field in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
            if name in resources:
                raise ValueError(f"{name}s are asked for with {field}={resources[name]:g}, "
                                 f"not resources={{{name!r}: …}}")
        return resources

    @field_validator("reuse_from")
    @classmethod
    def _node_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url[:80]!r} is not a node URL: it must start with http:// or https://")
        return [url.rstrip("/") for url in urls]

    @field_validator("env")
    @classmethod
    def _plain_variables(cls, env: dict[str, str]) -> dict[str, str]:
        """Names and values the sandbox can set as they are: its options travel NUL-separated, so a NUL
        would add options of its own (showing the machine's files), and a name with `=` is no name."""
        for name, value in env.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"env {name[:40]!r}: a variable's name must be non-empty without '=' or NUL, "
                                 "its value without NUL")
        return env

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave the GPU, replication and locality fields out at their defaults, so every Order written before
        they existed keeps its encoding, hence its CID and its memoized BOM."""
        data = handler(self)
        if not self.num_gpus:
            data.pop("num_gpus", None)
        if self.replicas == 1:
            data.pop("replicas", None)
        if self.on_disagreement == "fail":
            data.pop("on_disagreement", None)
        if self.locality:
            data.pop("locality", None)
        for name in ("confined", "network", "env"):
            if not data.get(name):
                data.pop(name, None)
        return data


def embedded(plant: Plant) -> bool:
    """Whether the Plant runs on the embedded local Ray (no address in the Plant or in RAY_ADDRESS):
    this machine, whose size no autoscaler changes."""
    import os

    return not (plant.address or os.environ.get("RAY_ADDRESS"))


def connect(plant: Plant, quiet: bool = False) -> Any:
    """Join the Plant's Ray, starting the embedded local one when none is running; returns `ray`."""
    import logging
    import os

    import ray

    if ray.is_initialized():
        return ray
    address = plant.address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("ray://"):
        try:
            import grpc  # noqa: F401 - what the Ray Client speaks; only `ray[client]` installs it
        except ImportError:
            raise CatsError(f"the Plant's address {address} is a Ray Client address, which needs the Ray Client: "
                            "pip install 'ray[client]'") from None
    if embedded(plant):
        # The embedded Ray keeps Ray's default for a new local cluster (token authentication on);
        # only Ray's notice about that default is silenced, as nobody running an Order chose it.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address=plant.address, include_dashboard=False, log_to_driver=not quiet,
                 configure_logging=True, logging_level=logging.WARNING)
    except ConnectionError as e:  # no Ray answers at the address given
        where = "the Plant's address" if plant.address else "RAY_ADDRESS"
        raise CatsError(f"cannot reach a Ray cluster at {address} ({where}): {str(e).splitlines()[0][:200]}; "
                        "start it, or unset the address to use the embedded Ray") from None
    return ray
