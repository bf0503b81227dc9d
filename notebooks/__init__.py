"""The example notebooks, shipped as package data (``vydra_nb.examples``): `vydra-nb demo` runs them."""
