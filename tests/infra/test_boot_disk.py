"""What the boot disk is created from (issue 19.4 and 19.8): the image family is resolved
by Compute when the disk is created, never by a lookup in the program; a snapshot
(`scripts/vm move`) replaces the image as the source."""

from __future__ import annotations

import pytest
from infra_harness import StackState, run_program

from infra.config import ConfigError

DISK = "gcp:compute/disk:Disk"
FAMILY = "projects/deeplearning-platform-release/global/images/family/"
DEPRECATED = (
    "error: invocation of gcp:compute/getImage:getImage returned an error: googleapi: Error "
    "404: The resource 'projects/deeplearning-platform-release/global/images/family/"
    "common-cu129-ubuntu-2204-nvidia-580' was not found, notFound"
)


def test_a_deprecated_image_family_does_not_break_a_second_up() -> None:
    """images.getFromFamily answers only non-deprecated images; once the family is
    deprecated, a lookup would fail every `up`. The program makes none."""
    state = StackState(image_lookup_error=DEPRECATED)
    first = run_program("dev", state=state)
    second = run_program("dev", state=state)
    assert "gcp:compute/getImage:getImage" not in state.invokes
    for plan in (first, second):
        disk = plan.one(DISK)
        assert disk.inputs["image"] == FAMILY + "common-cu129-ubuntu-2204-nvidia-580"
        assert "snapshot" not in disk.inputs
        assert disk.ignore_changes == ["image"]  # the recorded image stays the disk's
    # the disk records the image the family resolved to when it was created
    assert second.outputs["image_name"] == "common-cu129-ubuntu-2204-nvidia-580-v20260416"


def test_an_exact_image_name_is_used_as_given() -> None:
    plan = run_program("dev", {"imageName": "common-cu129-ubuntu-2204-nvidia-580-v20250101"})
    assert plan.one(DISK).inputs["image"] == (
        "projects/deeplearning-platform-release/global/images/"
        "common-cu129-ubuntu-2204-nvidia-580-v20250101"
    )


def test_a_moved_disk_is_created_from_its_snapshot() -> None:
    state = StackState()
    first = run_program("dev", state=state)
    assert first.outputs["deployed_settings"]["bootDiskSnapshot"] == ""
    assert 'text2img:bootDiskSnapshot: changed from "" to' in " ".join(
        run_program(
            "dev", {"bootDiskSnapshot": "s1"}, state=StackState(outputs=dict(first.outputs))
        ).warnings
    )
    moved = run_program(
        "dev", {"zone": "asia-northeast1-c", "bootDiskSnapshot": "t2i-dev-boot-move-1"}, state=state
    )
    disk = moved.one(DISK)
    assert disk.inputs["snapshot"] == (
        "projects/t2i-test-project/global/snapshots/t2i-dev-boot-move-1"
    )
    assert "image" not in disk.inputs  # image and snapshot exclude each other
    # an ignored property keeps its old value even when the disk is replaced: the image
    # must not be ignored here, or the new disk would get both sources
    assert disk.ignore_changes == []
    assert disk.inputs["zone"] == "asia-northeast1-c"
    assert moved.outputs["deployed_settings"]["bootDiskSnapshot"] == "t2i-dev-boot-move-1"
    notes = [w for w in moved.warnings if "since the last `pulumi up`" in w]
    assert any(n.startswith("text2img:zone:") for n in notes)
    assert any(n.startswith("text2img:bootDiskSnapshot:") for n in notes)


def test_removing_the_snapshot_later_warns_that_the_disk_is_replaced() -> None:
    state = StackState()
    run_program("dev", {"bootDiskSnapshot": "t2i-dev-boot-move-1"}, state=state)
    back = run_program("dev", {}, state=state)
    note = next(w for w in back.warnings if w.startswith("text2img:bootDiskSnapshot:"))
    assert 'from t2i-dev-boot-move-1 to "" since' in note
    assert "pulumi config set bootDiskSnapshot t2i-dev-boot-move-1" in note


@pytest.mark.parametrize("name", ["Snap_1", "-x", "a" * 64])
def test_snapshot_name_is_validated(name: str) -> None:
    with pytest.raises(ConfigError, match=r"text2img:bootDiskSnapshot: .* is not a snapshot name"):
        run_program("dev", {"bootDiskSnapshot": name})
