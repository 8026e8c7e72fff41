"""Search past one process: the gallery cut into shards, each searched on its own, merged.

``partition``: which rows each shard owns (files kept whole) and a shard's view of the index;
``shard``: one shard's searcher; ``merge``: exact merging of shard results; ``fanout``: the
ingress side, a searcher that asks every shard; ``ray_app``: the Ray Serve deployments
(``ucofia-run serve --ray``). Only ``ray_app`` imports Ray (the ``ray-serve`` extra).
"""
