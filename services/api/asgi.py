"""The ASGI app built from the environment, for servers that import it (uvicorn --workers, gunicorn)."""

from services.api.app import create_app
from services.api.settings import Settings

app = create_app(Settings())
