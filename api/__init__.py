"""The HTTP API: Falcon resources in front of the actors."""

from api.app import create_app

__all__ = ["create_app"]
