"""Offline training and evaluation of the router's strong-vs-weak scorer (never imported by the service).

    .venv/bin/python -m services.router.training.train   # writes services/router/artifacts/scorer.npz
    .venv/bin/python -m services.router.training.eval    # held-out-subject APGR / CPT report

See README.md in this folder.
"""
