# The Cloud Run gateway: token check, wake-on-request, streaming proxy. No torch.
# Build from the repository root:  docker build -f service/gateway.Dockerfile .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
# the base package + the gateway extra only (fastapi/starlette, uvicorn, httpx,
# google-cloud-compute); the service extra (torch) is not installed
RUN pip install --no-compile '.[gateway]' \
    && useradd --system --uid 10001 --no-create-home gateway

USER 10001
# Cloud Run sets PORT; 8080 is its default too
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8080')}/healthz\", timeout=2)"]
CMD ["python", "-m", "text2img.gateway"]
