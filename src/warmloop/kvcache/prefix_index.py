"""A radix tree over token ids: which held KV (slot or host snapshot) shares the longest
prefix with a prompt. One tree per tenant, so no tenant ever matches another's tokens.

Each node stores the holders whose token list passes through it, so a match walks the
prompt once and reads the holders at the deepest point reached. A holder is anything
hashable (the manager uses its Slot and Snapshot records) and is (re)inserted with the
exact token list its KV holds.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Node:
    edge: list[int]  # tokens on the edge from the parent to this node
    children: dict[int, _Node] = field(default_factory=dict)
    holders: set[Hashable] = field(default_factory=set)


class PrefixIndex:
    """Owned by the engine thread (through KVCacheManager)."""

    def __init__(self) -> None:
        self._roots: dict[str, _Node] = {}
        self._paths: dict[Hashable, tuple[str, tuple[int, ...]]] = {}

    def __contains__(self, holder: Hashable) -> bool:
        return holder in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._paths))

    def entry(self, holder: Hashable) -> tuple[str, tuple[int, ...]] | None:
        """(tenant, tokens) that `holder` is indexed with, or None."""
        return self._paths.get(holder)

    def insert(self, tenant: str, tokens: Sequence[int], holder: Hashable) -> None:
        """Record that `holder` holds KV for exactly `tokens` (replacing what it held)."""
        self.remove(holder)
        if not tokens:
            return
        node = self._roots.setdefault(tenant, _Node([]))
        i = 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                child = _Node(list(tokens[i:]))
                node.children[tokens[i]] = child
                child.holders.add(holder)
                break
            k = _common(child.edge, tokens, i)
            if k < len(child.edge):  # split the edge at k
                lower = _Node(child.edge[k:], child.children, set(child.holders))
                child.edge = child.edge[:k]
                child.children = {lower.edge[0]: lower}
            child.holders.add(holder)
            node = child
            i += k
        self._paths[holder] = (tenant, tuple(tokens))

    def remove(self, holder: Hashable) -> None:
        entry = self._paths.pop(holder, None)
        if entry is None:
            return
        tenant, tokens = entry
        root = self._roots.get(tenant)
        node = root
        i = 0
        trail: list[tuple[_Node, _Node]] = []
        while node is not None and i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            child.holders.discard(holder)
            trail.append((node, child))
            i += len(child.edge)
            node = child
        for parent, child in reversed(trail):  # prune branches nobody holds any more
            if not child.holders:
                del parent.children[child.edge[0]]
        if root is not None and not root.children:
            del self._roots[tenant]

    def match(self, tenant: str, tokens: Sequence[int]) -> tuple[int, set[Hashable]]:
        """Longest prefix of `tokens` that some holder of `tenant` has, and those holders."""
        node = self._roots.get(tenant)
        best: tuple[int, set[Hashable]] = (0, set())
        i = 0
        while node is not None and i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common(child.edge, tokens, i)
            best = (i + k, child.holders)
            if k < len(child.edge):
                break
            i += k
            node = child
        return best[0], set(best[1])

    def tokens_of(self, holder: Hashable) -> tuple[int, ...]:
        entry = self._paths.get(holder)
        return entry[1] if entry else ()

    def verify(self) -> list[str]:
        """Where the tree and the holders' recorded paths disagree (empty when they agree)."""
        problems: list[str] = []
        for holder, (tenant, tokens) in self._paths.items():
            n, holders = self.match(tenant, tokens)
            if n != len(tokens) or holder not in holders:
                problems.append(f"{holder!r:.60} is recorded with {len(tokens)} tokens; tree: {n}")
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            for holder in node.holders - self._paths.keys():
                problems.append(f"the tree still holds {holder!r:.60}, which has no path")
        return problems


def _common(edge: list[int], tokens: Sequence[int], start: int) -> int:
    n = min(len(edge), len(tokens) - start)
    k = 0
    while k < n and edge[k] == tokens[start + k]:
        k += 1
    return k
