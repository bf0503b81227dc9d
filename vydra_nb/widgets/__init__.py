"""Widgets: the live job view, ``show_job``, the prompt studio.

Importing this package imports ipywidgets; nothing below the display layer imports it, so
``import vydra_nb`` stays light.
"""

from .job_view import JobDisplay, JobView, show_job, widgets_available
from .studio import Studio, studio

__all__ = ["JobDisplay", "JobView", "Studio", "show_job", "studio", "widgets_available"]
