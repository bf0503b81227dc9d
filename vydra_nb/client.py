"""``from vydra_nb.client import Client`` keeps working: the session's client, which records every job."""

from vydra_nb.session import default_client
from vydra_nb.session.client import Client

__all__ = ["Client", "default_client"]
