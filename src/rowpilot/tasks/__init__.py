"""Tasks: every kind of work over rows behind one interface (``_base.Task``)."""
