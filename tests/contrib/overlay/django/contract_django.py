"""Django's own BaseCacheTests (tests/cache/tests.py, unmodified) on crdtcache.

Wired exactly as Django wires its RedisCacheTests: a TestCase subclass with
``@override_settings(CACHES=caches_setting_for_tests(BACKEND=..., exclude=...))``.
One class per serializer of the setup (``setups.py``). The ``cull`` and ``zero_cull``
aliases are excluded as for Django's Redis and memcached backends (crdtcache does not
cull): test_cull, test_zero_cull and test_cull_delete_when_store_empty then skip
themselves ("Culling isn't implemented."). Under msgpack, the five tests that store
arbitrary objects are skipped with the reason, and run in the pickle class.
"""

from __future__ import annotations

import unittest

from cache.tests import BaseCacheTests, caches_setting_for_tests
from django.test import TestCase, override_settings
from setups import NEEDS_PICKLE, PAIRED, location, options, serializers

BACKEND = "crdt_django_pair.PairCache" if PAIRED else "crdtcache.contrib.django.CrdtCache"
#: What Django excludes for its Redis and memcached backends.
NO_CULLING = {"cull", "zero_cull"}
#: Tests that store values outside crdtcache's value types (pickled by reference, model
#: instances, querysets, an HttpResponse).
PICKLED = {
    "test_data_types": "stores a module-level function and a class",
    "test_cache_read_for_model_instance": "stores a model instance",
    "test_cache_write_for_model_instance_with_deferred": "stores a queryset",
    "test_cache_read_for_model_instance_with_deferred": "stores a queryset",
    "test_cache_write_unpicklable_object": "the cache middleware stores an HttpResponse",
}


def _class(serializer: str) -> type:
    settings = caches_setting_for_tests(
        BACKEND=BACKEND, LOCATION=location(), exclude=NO_CULLING, OPTIONS=options(serializer)
    )
    cls = type(f"Crdt{serializer.title()}Tests", (BaseCacheTests, TestCase), {})
    if serializer == "msgpack":
        for name, what in PICKLED.items():
            skip = unittest.skip(f"{NEEDS_PICKLE}: {what}")
            setattr(cls, name, skip(getattr(BaseCacheTests, name)))
    return override_settings(CACHES=settings)(cls)


for _serializer in serializers():
    _cls = _class(_serializer)
    globals()[_cls.__name__] = _cls
