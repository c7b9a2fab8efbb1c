"""Evidence commands: Table-1 ablation, baselines, leave-one-site-out, robustness, calibration, report, scale.

Each command is a module with ``main(argv)``, run as ``python -m rmmfed.simulations.evidence.<name>``;
results go to ``--out`` as Markdown and CSV. Pure helpers (feature building, baselines, Brier score,
test-time masking, tables) live in their own modules so they can be tested without Flower.
"""
