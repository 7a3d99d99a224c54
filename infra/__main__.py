"""text2img on Google Cloud: composes the stack and exports what users and scripts need."""

import sys
from pathlib import Path

# Pulumi runs this folder as a script, which puts the folder itself on sys.path. Import
# the modules as the package `infra` instead, so none of them can shadow another module.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import pulumi  # noqa: E402
import pulumi_gcp as gcp  # noqa: E402

from infra import pricing  # noqa: E402
from infra.api_token import create_token  # noqa: E402
from infra.apis import enable_apis  # noqa: E402
from infra.cloudrun import create_gpu_service  # noqa: E402
from infra.config import ConfigError, load_settings  # noqa: E402
from infra.gateway import Gateway, VmUpstream, create_gateway  # noqa: E402
from infra.iam import grant_vm_access, service_account  # noqa: E402
from infra.images import build_images  # noqa: E402
from infra.metadata import instance_metadata, read_startup_script  # noqa: E402
from infra.naming import Names  # noqa: E402
from infra.network import create_network  # noqa: E402
from infra.preflight import PreflightError, in_program  # noqa: E402
from infra.propagation import VM_GRANT_WAIT, wait_for_grants  # noqa: E402
from infra.registry import create_repository, image_base  # noqa: E402
from infra.replacements import deployed_settings, warn_before_replacing  # noqa: E402
from infra.server import GpuServer, ServerArgs  # noqa: E402

settings = load_settings()
if settings.preflight:  # seconds, before anything is created (infra/preflight.py)
    try:
        for note in in_program(settings, dry_run=pulumi.runtime.is_dry_run()):
            pulumi.log.warn(note.text)
    except PreflightError as exc:
        raise ConfigError(str(exc)) from None
names = Names(stack=pulumi.get_stack(), project=settings.project)
warn_before_replacing(settings)  # compares with the last `pulumi up` of this stack
startup_script = read_startup_script()

apis = enable_apis(settings)
repo = create_repository(settings, names, apis)
token = create_token(settings, names, apis)
images = build_images(settings, names, image_base(settings, repo), repo, apis)


def vm_backend() -> Gateway:
    """backend vm: the network, the GPU VM (disk, schedule, autostop) and its gateway."""
    network = create_network(settings, names, apis)
    vm_account = service_account("vm", "text2img GPU VM", settings, names, apis)
    vm_grants = grant_vm_access(settings, vm_account, repo, token, apis)
    # the VM's first boot reads the secret, pulls the image and translates: its grants must
    # have propagated, not only exist, when it is created (infra/propagation.py)
    vm_grants_active = wait_for_grants("vm-grants-propagation", vm_grants, VM_GRANT_WAIT)

    after_apis = pulumi.InvokeOutputOptions(depends_on=apis)
    project_number = gcp.organizations.get_project_output(
        project_id=settings.project, opts=after_apis
    ).number

    server = GpuServer(
        "server",
        ServerArgs(
            settings=settings,
            names=names,
            subnet=network.vm_subnet,
            network_tag=network.vm_tag,
            service_account_email=vm_account.email,
            metadata=instance_metadata(
                settings,
                startup_script=startup_script,
                image=images.service,
                token_secret=token.secret.id,
            ),
            project_number=project_number,
            deps=[*apis, *vm_grants, vm_grants_active, network.nat, *network.firewalls],
        ),
    )

    gateway = create_gateway(
        settings,
        names,
        image=images.gateway,
        token=token,
        upstream=VmUpstream(server.instance, network),
        deps=[*apis, *network.firewalls],
    )
    pulumi.export("zone", settings.zone)
    pulumi.export("instance_name", server.instance.name)
    pulumi.export("spot", settings.spot)
    pulumi.export("idle_minutes", settings.idle_minutes)
    pulumi.export("image_name", server.boot_image.apply(lambda link: link.rsplit("/", 1)[-1]))
    pulumi.export(
        "ssh_command",
        server.instance.name.apply(
            lambda n: (
                f"gcloud compute ssh {n} --zone {settings.zone} "
                f"--project {settings.project} --tunnel-through-iap"
            )
        ),
    )
    pulumi.export("hourly_cost_estimate", pricing.hourly_cost_estimate(settings))
    pulumi.export("monthly_asleep_cost_estimate", pricing.monthly_asleep_estimate(settings))
    return gateway


def cloudrun_backend() -> Gateway:
    """backend cloudrun: the private Cloud Run GPU service and its gateway; no VM, disk,
    network, schedule or autostop."""
    if images.gpu is None:
        pulumi.log.warn(
            "text2img:backend: with serviceImage and gatewayImage prebuilt, the GPU service "
            "runs serviceImage as is: its instances download the weights at every start "
            "(unset serviceImage to build the image with the weights baked in)"
        )
    image = images.gpu if images.gpu is not None else images.service
    gpu = create_gpu_service(settings, names, image=image, token=token, deps=apis)
    pulumi.export("gpu_url", gpu.url)
    pulumi.export("gpu_region", settings.gpu_region)
    pulumi.export("max_gpus", settings.max_gpus)
    return create_gateway(
        settings, names, image=images.gateway, token=token, upstream=gpu, deps=apis
    )


gateway = cloudrun_backend() if settings.on_cloud_run else vm_backend()
pulumi.export("backend", settings.backend)
pulumi.export("url", gateway.url)
pulumi.export("token", token.value)
pulumi.export("project", settings.project)
pulumi.export("region", settings.region)
pulumi.export("image", images.service)
pulumi.export("gateway_image", images.gateway)
pulumi.export("deployed_settings", deployed_settings(settings))
pulumi.export("price_table", f"{pricing.PRICE_TABLE_DATE}; {pricing.PRICE_TABLE_SOURCE}")
