#!/usr/bin/env bash
# Build one container image with Cloud Build and print its reference by digest on stdout
# (the only stdout line; progress goes to stderr). Idempotent: a tag that already exists
# is reused, never rebuilt (the repository's tags are immutable).
# Run by infra/images.py (pulumi-command) in the build context (the repository root) with:
#   T2I_PROJECT T2I_REGION (the Cloud Build region, `buildRegion`) T2I_IMAGE (repo path +
#   name, in any region) T2I_TAG T2I_DOCKERFILE
#   T2I_SERVICE_ACCOUNT (projects/P/serviceAccounts/EMAIL) T2I_STAGING (gs://bucket/dir)
#   T2I_MACHINE_TYPE
set -euo pipefail

for var in T2I_PROJECT T2I_REGION T2I_IMAGE T2I_TAG T2I_DOCKERFILE T2I_SERVICE_ACCOUNT \
    T2I_STAGING T2I_MACHINE_TYPE; do
    if [[ -z "${!var:-}" ]]; then
        echo "build_image.sh: $var is not set" >&2
        exit 2
    fi
done
if ! command -v gcloud >/dev/null 2>&1; then
    echo "build_image.sh: gcloud not found; install the Google Cloud CLI (see README, Deploy)" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ref="${T2I_IMAGE}:${T2I_TAG}"

digest_of() {
    gcloud artifacts docker images describe "$ref" --project "$T2I_PROJECT" \
        --format='value(image_summary.fully_qualified_digest)' 2>/dev/null
}

if by_digest=$(digest_of) && [[ -n "$by_digest" ]]; then
    echo "image $ref exists; reusing it" >&2
else
    echo "building $ref from $T2I_DOCKERFILE with Cloud Build ($T2I_MACHINE_TYPE); this takes minutes" >&2
    if ! gcloud builds submit . \
        --project "$T2I_PROJECT" \
        --region "$T2I_REGION" \
        --config "$here/cloudbuild.yaml" \
        --substitutions "_IMAGE=${ref},_DOCKERFILE=${T2I_DOCKERFILE},_BASE=${T2I_BASE:-},_MODEL=${T2I_MODEL:-}" \
        --service-account "$T2I_SERVICE_ACCOUNT" \
        --gcs-source-staging-dir "$T2I_STAGING" \
        --ignore-file "$here/build.gcloudignore" \
        --machine-type "$T2I_MACHINE_TYPE" \
        --timeout 3600s \
        --suppress-logs \
        --format none >&2; then
        echo "build_image.sh: the Cloud Build run in $T2I_REGION failed (log: gcloud builds" \
            "list --region $T2I_REGION --project $T2I_PROJECT, then gcloud builds log ID" \
            "--region $T2I_REGION). If it says 'cannot run builds in this region', your" \
            "project may build only in a few regions: pulumi config set buildRegion us-central1" >&2
        exit 1
    fi
    by_digest=$(digest_of) || true
fi

if [[ "$by_digest" != "${T2I_IMAGE}@sha256:"* ]]; then
    echo "build_image.sh: could not resolve $ref to a digest (got '${by_digest}')" >&2
    exit 1
fi
printf '%s\n' "$by_digest"
