"""The Cloud Run front door: checks the token, wakes the GPU VM, proxies to the service."""
