"""vydra_nb: notebook-native video, image and audio generation with the Vydra.ai API."""
__version__ = "0.1.0"
