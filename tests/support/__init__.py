"""Tooling the tests (and the browser benchmark) share that is not a test itself: a real
headless Chromium driven through a call (``chromium``), the one-browser-call scenario that
``tests/test_webrtc.py`` runs in a loopback network namespace (``webrtc_scenario``), the
tiny model configs of the services tests (``models``), two-process DDP training runs
(``ddp``), espeak-ng Telugu speech for the call tests (``speech``) and where the external
programs the tests run are found (``programs``). Tests import from here, never from another
test module."""
