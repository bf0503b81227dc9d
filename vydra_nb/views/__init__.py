"""The views layer: plain mimebundles that survive without a kernel (``display``) and the live
job widget (``job_view``, which imports ipywidgets: import it only where widgets are wanted)."""
