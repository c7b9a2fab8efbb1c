"""The Flower app's own config keys: the entries of ``[tool.flwr.app.config]`` that are not RunConfig settings.

The ServerApp leaves them out when it reads its RunConfig (server/server_app.py), and a consortium's
``[run]`` table may not set them (server/consortium.py): rmm-server sets out-dir, num-sites and
expected-sites itself; data-dir and ledger-dir are for simulations (the cohort folder, and where
simulated sites write their egress ledgers, client/ledger.py). tests/test_simulate.py checks that
these and the RunConfig keys are exactly the pyproject's.
"""

from __future__ import annotations

APP_KEYS = ("data-dir", "out-dir", "num-sites", "resume", "expected-sites", "ledger-dir")
