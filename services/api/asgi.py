"""The app built from the environment, for servers that import it: ``app`` for ASGI servers (granian,
uvicorn --workers, gunicorn), ``rsgi`` for granian's RSGI interface (FENCEX_INTERFACE=rsgi)."""

from services.api.app import create_app
from services.api.rsgi import RsgiEdge
from services.api.settings import Settings

app = create_app(Settings())
rsgi = RsgiEdge(app)
