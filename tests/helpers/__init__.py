"""Code the tests share (not tests, not fixtures): import it as `from helpers.x import ...`.

- `isolation`: REPO_ROOT and `run_isolated` (a Python that cannot import this project, as a stranger's).
- `exports`: finishing an export folder as training does (training_summary.json, loss_curve.png).
- `servers`: free ports, waiting for a server to answer, stopping it.
- `training`: the tiny training config and the commands that launch training (one process or two gloo processes).
- `stranger`: the stranger script run on every transformers release.
- `synthetic_pg19`: the generated PG19-format books the tests train and evaluate on.

Fixtures live in tests/conftest.py; the loopback Hub in tests/fakes/hub.py.
"""
