"""Fake model servers: real aiohttp apps speaking the backends' protocols.

Used by the tests, by the default ``gateway.yaml`` on a fresh install, and for trying the
gateway without a GPU.
"""

from .heartmula import create_heartmula_app
from .images import create_a1111_app, create_openai_images_app
from .lifecycle_servers import (
    create_llama_router_app,
    create_ollama_lifecycle_app,
    create_vllm_sleep_app,
)
from .model_server import create_model_server_app
from .openai_server import MockBehaviour, create_mock_app

__all__ = [
    "MockBehaviour",
    "create_a1111_app",
    "create_heartmula_app",
    "create_llama_router_app",
    "create_mock_app",
    "create_model_server_app",
    "create_ollama_lifecycle_app",
    "create_openai_images_app",
    "create_vllm_sleep_app",
]
