"""The API layer: speak the Vydra API. Settings, errors, the transport and its rate limits, models,
jobs, media and downloads, the polling policy, and ``APIClient``. It imports nothing above it."""
