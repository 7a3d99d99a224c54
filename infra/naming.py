"""Cloud resource names derived from the stack, so two stacks in one project never collide.

Every name starts with `t2i-<slug>`, where the slug is the stack name lowercased to
[a-z0-9-] and cut to 16 characters (with a hash suffix when cut, so distinct long
stack names stay distinct). That keeps the longest derived name within the tightest
limit: service account ids (6-30 characters).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SLUG_MAX = 16


def stack_slug(stack: str) -> str:
    """`dev` -> `dev`; any name that had to be changed or cut -> prefix + '-' + 4 hex."""
    slug = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-") or "stack"
    if slug != stack or len(slug) > SLUG_MAX:
        # `a_b`, `a.b` and `A-b` all slugify alike; the hash of the raw name keeps them apart
        digest = hashlib.sha256(stack.encode()).hexdigest()[:4]
        slug = f"{slug[: SLUG_MAX - 5].rstrip('-')}-{digest}"
    return slug


@dataclass(frozen=True)
class Names:
    """All physical names of one stack."""

    stack: str
    project: str

    @property
    def slug(self) -> str:
        return stack_slug(self.stack)

    @property
    def prefix(self) -> str:
        return f"t2i-{self.slug}"

    def resource(self, suffix: str) -> str:
        """A GCE/Cloud Run/AR name: lowercase, starts with a letter, at most 63 characters."""
        return f"{self.prefix}-{suffix}"

    def account_id(self, suffix: str) -> str:
        """A service account id (6-30 characters)."""
        name = f"{self.prefix}-{suffix}"
        assert 6 <= len(name) <= 30, name
        return name

    def role_id(self, suffix: str, unique: str = "") -> str:
        """A custom role id ([a-zA-Z0-9_.], at most 64 characters). `unique` is the stack's
        random part: a deleted role's id stays taken for 37 days (iam.py)."""
        name = f"t2i_{self.slug.replace('-', '_')}_{suffix}"
        if unique:
            name = f"{name}_{unique}"
        assert re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", name), name
        return name

    @property
    def build_bucket(self) -> str:
        """Globally unique bucket name for Cloud Build source uploads."""
        return f"{self.project}-{self.prefix}-build"

    @property
    def labels(self) -> dict[str, str]:
        return {"app": "text2img", "stack": self.slug, "managed-by": "pulumi"}
