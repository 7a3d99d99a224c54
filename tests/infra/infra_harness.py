"""Runs the real Pulumi program (infra/__main__.py) under pulumi.runtime.set_mocks and
records every resource registration: type, name, parent, inputs, dependencies.

Only Pulumi's public testing API is used: `set_mocks` (with its `monitor` argument, a
MockMonitor subclass that also keeps what `Mocks.new_resource` is not given: parent,
dependencies, resource options) and the `pulumi.runtime.test` decorator, which runs the
program and waits for every registration and output.

Config defaults are loaded from Pulumi.yaml, because the SDK applies them only under the
CLI, not under mocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import runpy
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "infra" / "__main__.py"
PROJECT_FILE = ROOT / "Pulumi.yaml"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "tok" + "Q7x" * 15  # what the mocked RandomPassword generates (48 characters)
TEST_PROJECT = "t2i-test-project"
PROJECT_NUMBER = "123456789012"
STARTUP_ENV = "TEXT2IMG_INFRA_STARTUP_SCRIPT"
IMAGE_NAME = "common-cu129-ubuntu-2204-nvidia-580-v20260416"


def project_defaults() -> dict[str, Any]:
    """Every key's default from Pulumi.yaml (keys without one are left out)."""
    spec = yaml.safe_load(PROJECT_FILE.read_text())["config"]
    return {key: decl["default"] for key, decl in spec.items() if "default" in decl}


def config_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    inputs: dict[str, Any]
    dependencies: list[str]
    custom: bool
    retain_on_delete: bool
    ignore_changes: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    replace_with: list[str] = field(default_factory=list)

    def text(self) -> str:
        return json.dumps(self.inputs, sort_keys=True, default=str)


def _fake_digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


@dataclass
class StackState:
    """What Pulumi keeps between two `pulumi up` of one stack, as far as the mocks need it:
    the random values already drawn (by logical name, with the inputs they were drawn for)
    and the stack's outputs (read back through a StackReference to the stack itself).
    A new StackState is a new or destroyed-and-recreated stack; `seed` stands for the
    randomness of that state's draws."""

    seed: str = "first-up"
    randoms: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)  # stacks read by StackReference
    invokes: list[str] = field(default_factory=list)  # provider functions the program called
    # what the image lookup answers from now on, e.g. for a deprecated family
    image_lookup_error: str | None = None


class Mocks(pulumi.runtime.Mocks):
    """Fills in what the provider would compute (emails, URIs, ids) from the inputs."""

    def __init__(self, stack: str = "dev", state: StackState | None = None) -> None:
        self.stack = stack
        self.state = state if state is not None else StackState()

    def _random_id(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Like the random provider under the engine: unchanged inputs keep the value."""
        kept = self.state.randoms.get(name)
        if kept is not None and kept[0] == inputs:
            return kept[1]
        size = int(inputs["byteLength"])
        value = hashlib.sha256(f"{self.state.seed}:{self.stack}:{name}".encode()).hexdigest()
        outputs = {**inputs, "hex": value[: 2 * size], "dec": str(int(value[: 2 * size], 16))}
        self.state.randoms[name] = (dict(inputs), outputs)
        return outputs

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        state = dict(args.inputs)
        typ = args.typ
        name = state.get("name", args.name)
        if typ == "random:index/randomPassword:RandomPassword":
            state["result"] = TOKEN
        elif typ == "random:index/randomId:RandomId":
            state = self._random_id(args.name, state)
        elif typ == "pulumi:pulumi:StackReference":
            self.state.references.append(name)
            return name, {**state, "outputs": dict(self.state.outputs), "secretOutputNames": []}
        elif typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{state['accountId']}@{state['project']}.iam.gserviceaccount.com"
        elif typ == "gcp:secretmanager/secret:Secret":
            return f"projects/{state['project']}/secrets/{state['secretId']}", state
        elif typ == "gcp:secretmanager/secretVersion:SecretVersion":
            state["version"] = "1"
        elif typ == "gcp:artifactregistry/repository:Repository":
            state["name"] = state["repositoryId"]
        elif typ == "gcp:projects/iAMCustomRole:IAMCustomRole":
            state["name"] = f"projects/{state['project']}/roles/{state['roleId']}"
        elif typ == "gcp:cloudrunv2/service:Service":
            state["uri"] = f"https://{name}-abc123-an.a.run.app"
        elif typ == "gcp:compute/instance:Instance":
            state["networkInterfaces"] = [
                {**nic, "networkIp": "10.20.0.2"} for nic in state.get("networkInterfaces", [])
            ]
        elif typ == "command:local:Command":
            image = state["environment"]["T2I_IMAGE"]
            state["stdout"] = f"{image}@sha256:{_fake_digest(image)}\n"
        elif typ == "gcp:compute/disk:Disk":
            # like the provider: a family is resolved to its newest image at creation and
            # the disk records the image it was made from (Compute's sourceImage)
            family = re.fullmatch(
                r"projects/([^/]+)/global/images/family/[^/]+", state.get("image") or ""
            )
            if family:
                state["image"] = (
                    "https://www.googleapis.com/compute/v1/projects/"
                    f"{family.group(1)}/global/images/{IMAGE_NAME}"
                )
            state["selfLink"] = (
                "https://www.googleapis.com/compute/v1/projects/"
                f"{state['project']}/zones/{state['zone']}/disks/{name}"
            )
        elif typ == "gcp:compute/resourcePolicy:ResourcePolicy":
            state["selfLink"] = f"https://compute.googleapis.com/compute/v1/{name}"
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        self.state.invokes.append(args.token)
        if args.token == "gcp:compute/getImage:getImage":
            if self.state.image_lookup_error:
                raise RuntimeError(self.state.image_lookup_error)
            name = args.args.get("name") or IMAGE_NAME
            link = (
                "https://www.googleapis.com/compute/v1/projects/"
                f"{args.args['project']}/global/images/{name}"
            )
            return {"name": name, "selfLink": link, "family": args.args.get("family")}, []
        if args.token == "gcp:organizations/getProject:getProject":
            return {"number": PROJECT_NUMBER, "projectId": args.args["projectId"]}, []
        raise AssertionError(f"unexpected invoke {args.token}")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    inputs=pulumi.runtime.rpc.deserialize_properties(request.object),
                    dependencies=list(request.dependencies),
                    custom=request.custom,
                    retain_on_delete=bool(request.retainOnDelete),
                    ignore_changes=list(request.ignoreChanges),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    replace_with=list(request.replace_with),
                )
            )
        return response


@dataclass
class Plan:
    stack: str
    resources: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    startup_script: str | None = None

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str) -> Registration:
        found = self.of_type(typ)
        assert len(found) == 1, f"{len(found)} resources of type {typ}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.resources if r.urn == urn)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings.append(record.getMessage())


def _run_main() -> None:
    runpy.run_path(str(MAIN), run_name="__main__")


@contextmanager
def _patched_export(sink: dict[str, Any]) -> Iterator[None]:
    original = pulumi.export
    pulumi.export = lambda name, value: sink.__setitem__(name, value)
    try:
        yield
    finally:
        pulumi.export = original


def _ensure_event_loop() -> None:
    """Pulumi's mocks run on the main thread's current event loop; tests that ran before
    (pytest-asyncio) may have closed and unset it, so give the thread a fresh one."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(
    stack: str = "dev",
    overrides: Mapping[str, Any] | None = None,
    *,
    project: str | None = TEST_PROJECT,
    state: StackState | None = None,
) -> Plan:
    """Run infra/__main__.py under mocks with Pulumi.yaml defaults + overrides; `state`
    carries a stack's state from one run to the next (a fresh one when None). After the
    run, the state holds the run's outputs, as Pulumi's would after a successful `up`."""
    _ensure_event_loop()
    values = project_defaults()
    if project is not None:
        values["project"] = project
    # the preflight calls Google's APIs; tests turn it on with a fake endpoint
    # (tests/infra/test_preflight.py)
    values["preflight"] = False
    values.update(overrides or {})
    state = state if state is not None else StackState()
    monitor = RecordingMonitor(Mocks(stack, state))
    logger = logging.getLogger(f"infra-harness-{stack}")
    logger.propagate = False
    capture = _Capture()
    logger.handlers[:] = [capture]
    pulumi.runtime.set_mocks(
        monitor.mocks,
        project="text2img",
        stack=stack,
        organization="organization",
        preview=False,
        monitor=monitor,
        logger=logger,
    )
    pulumi.runtime.set_all_config(
        {f"text2img:{key}": config_value(value) for key, value in values.items()}, []
    )
    # the file as the program sees it now (it may be edited while the tests run)
    script_path = Path(os.environ.get(STARTUP_ENV) or ROOT / "systemd" / "startup.sh")
    script = script_path.read_text() if script_path.is_file() else None
    exported: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    secret: set[str] = set()

    async def collect() -> None:
        for key, value in exported.items():
            out = pulumi.Output.from_input(value)
            outputs[key] = await out.future()
            if await out.is_secret():
                secret.add(key)

    @pulumi.runtime.test
    def program() -> Any:
        _run_main()
        return collect()

    with _patched_export(exported):
        program()
    state.outputs = dict(outputs)
    return Plan(stack, monitor.registrations, outputs, secret, capture.warnings, script)
