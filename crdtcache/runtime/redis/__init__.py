"""Redis mode: the same cache API on a shared Redis (see :mod:`._runtime`)."""
