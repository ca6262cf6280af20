"""What the tests share, beside the fixtures in ``tests/conftest.py``.

A test module imports helpers from here, never from another test module (a
test in ``test_support.py`` keeps it so). One concept a module:

- ``system``: this machine: the repo's path, the ``roscoe-test`` user and its
  venv, a missing component failing under CI, a reaped pid, an rclone mount.
- ``trees``: live trees: the awkward test tree, byte-for-byte snapshots, chown.
- ``roscoe``: the CLI as a subprocess, as root or as ``roscoe-test``.
- ``transactions``: what a test does with a transaction through the CLI (run,
  stage, commit, approve) and the exact error line and messages it expects.
- ``gcs``: fake-gcs-server and an rclone mount of a bucket on it, seeded.
- ``plans``: roscoe-plan(5) applied by plain shutil calls, the reference.
- ``examples``: the demo's sample cases and the tree reorganize.py leaves.
"""
