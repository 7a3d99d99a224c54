# syntax=docker/dockerfile:1
# The service image with one model's weights inside, for `backend: cloudrun`
# (docs/backends.md): Cloud Run streams the image, so a cold start reads the weights
# without a download into the instance's memory-backed disk. Built by infra/images.py:
#   docker build -f service/cloudrun.Dockerfile --build-arg BASE=<service image@sha256:...> \
#     --build-arg MODEL=glide .
# The weights are fetched and checked by `text2img download` (the same pinned URLs,
# revisions and sha256 sums as on the VM), then re-hashed by `--check`; a mismatch fails
# the build. They live outside the base image's /models VOLUME: Docker discards what a
# later build step writes under a declared volume.
ARG BASE
# hadolint ignore=DL3006
FROM ${BASE}
ARG MODEL
ENV TEXT2IMG_MODEL_CACHE=/opt/text2img/models \
    TEXT2IMG_MODEL=${MODEL}
USER 0
RUN mkdir -p /opt/text2img/models && chown 10001:10001 /opt/text2img/models
USER 10001:10001
RUN test -n "${MODEL}" \
    && text2img download --model "${MODEL}" --quiet \
    && text2img download --model "${MODEL}" --check --quiet
