"""kvcache layer: which token sequences keep their KV, where, and who may reuse it.

base.py (the `KVCache` interface and its types) manager.py (`KVCacheManager`: the one
implementation) policy.py (`LRUPolicy`: which slot, which snapshots go) mover.py (KV
moves through the backend's `KVOps`) prefix_index.py (tenant radix tree) host_store.py
(snapshots in host RAM) integrity.py (what `check_integrity` checks). It imports nothing
from warmloop but `metrics`; the engine imports it (see docs/architecture.md).
"""
