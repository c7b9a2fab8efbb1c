"""rmm's Flower adapter: everything that touches Flower (or runs its processes), written once and used by
both the hospital's code (client/) and the coordinator's (server/). It imports Flower and rmmfed.core,
never client/, server/ or simulations/; core/ (the model) never imports Flower.

- records.py: core/messages/protocol.py record dicts <-> Flower records;
- packed_arrays.py, packing.py: packed weights (the byte format, and its Flower records and ClientApp mod);
- refusal.py: a site's policy refusal on the wire (code and reason) and how the coordinator reads it;
- app_keys.py: the Flower app's own config keys (not RunConfig settings);
- version.py, pulls.py, supernode.py, grid.py: rmm's patches of Flower 1.41's non-public parts (the
  version guard, the object-pull back-off both sides shorten, the site's SuperNode, the coordinator's Grid);
- processes.py, config_args.py, key_fingerprint.py: deployment plumbing of ``rmm-client`` and
  ``rmm-server`` (supervised Flower processes, ``key=value`` config strings, SuperNode key fingerprints).
"""
