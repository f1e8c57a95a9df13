"""Django settings for its tests/cache BaseCacheTests (outside its runtests.py).

Needs Django's extracted ``tests/`` directory on ``sys.path`` (the ``cache`` test app
and its ``Poll`` model) and the overlay directories.
"""

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3"}}
SECRET_KEY = "crdtcache-framework-suites"
INSTALLED_APPS = ["cache"]  # Django's own tests/cache app (the Poll model)
USE_TZ = False  # as Django's test_sqlite.py
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
TEST_RUNNER = "crdt_django_runner.RecordingRunner"
