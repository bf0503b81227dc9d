"""The tracking layer: the background tracker of live jobs and the SQLite history of every charged job."""
