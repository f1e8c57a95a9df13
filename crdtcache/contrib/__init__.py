"""Backends for the cache frameworks of other projects, each tested by its own suite.

* :mod:`crdtcache.contrib.django`: a Django cache backend (``CrdtCache``);
* :mod:`crdtcache.contrib.cashews`: a cashews backend (the ``crdtcache://`` scheme);
* :mod:`crdtcache.contrib.aiocache`: an aiocache cache class (``CrdtCache``).

Importing this package imports no framework: each module imports its own, which must
be installed (``pip install 'crdtcache[django]'``, ``[cashews]``, ``[aiocache]``).
"""
