"""Preparing a create: every check that can fail before the first event, and the prompt.

`Preparer.prepare` resolves the chain (`previous_response_id` on the socket or in the
store, or the `conversation`'s items and its latest chain), the input items and item
references, renders the prompt, tokenizes it (for a continuation whose rendered history
is unchanged: only the new text, appended to the exact tokens the chain's KV holds),
picks the grammar and the output budget, and builds the sampling parameters. It runs
in a worker thread and changes no state, so a prepared request that never starts costs
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from warmloop.config import Config
from warmloop.engine.request import SamplingParams
from warmloop.fleet.keys import response_id
from warmloop.protocol.errors import (
    ConversationNotFound,
    InvalidRequest,
    ModelNotFound,
    PreviousResponseNotFound,
)
from warmloop.protocol.items import (
    CompactionItem,
    Item,
    ItemReference,
    MessageItem,
    ReasoningItem,
    new_id,
)
from warmloop.protocol.requests import CreateRequest, TextFormat
from warmloop.serving.grammar import Grammars
from warmloop.serving.prepared import CallContext, ConversationTurn, Prepared
from warmloop.serving.prompt import Head, PromptRenderer, compacted, kept_reasoning
from warmloop.serving.sealing import Sealer
from warmloop.serving.truncation import Piece, Tokenize, Truncation, truncate
from warmloop.session.conversations import (
    ConversationLock,
    ConversationStore,
    InMemoryConversationStore,
)
from warmloop.session.limits import fits, output_budget
from warmloop.session.response_store import ChainState, ResponseStore, StoredResponse

SUMMARY_REQUEST = (
    "Stop working on the task for a moment. Write a summary of this conversation for "
    "whoever continues it: the task, what has been done so far, what was found (file "
    "names, identifiers, commands and their results) and what is left to do. Write only "
    "the summary."
)
PLAIN_TEXT = TextFormat("text")


class Preparer:
    def __init__(
        self,
        config: Config,
        store: ResponseStore,
        renderer: PromptRenderer,
        tokenize: Tokenize,
        piece: Piece,
        grammars: Grammars,
        model_id: str,
        sealer: Sealer | None = None,
        conversations: ConversationStore | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.conversations = conversations or InMemoryConversationStore(
            config.store_max_responses, config.store_max_bytes
        )
        self.renderer = renderer
        self.tokenize = tokenize
        self.piece = piece
        self.grammars = grammars
        self.model_id = model_id
        self.sealer = sealer or Sealer(config.reasoning_key)
        self.model_names = {model_id, "default", *config.model_alias}
        self._head_tokens: dict[str, int] = {}

    def prepare(
        self,
        request: CreateRequest,
        ctx: CallContext,
        cached: StoredResponse | None = None,
        chain: ChainState | None = None,
        lock: ConversationLock | None = None,
    ) -> Prepared:
        """The prepared create (worker thread; changes nothing). `cached` is the parent
        response as the client's socket holds it (read on the event loop, which owns
        the socket's state); otherwise the parent comes from the store. For a create
        on a conversation, `chain` is its latest chain and `lock` the caller's hold on
        it (both the event loop's); its items come from the store."""
        body = request.body
        self._check_model(body.model)
        previous = self._previous(body.previous_response_id, ctx.tenant, cached)
        conversation = self._conversation(request.conversation, ctx.tenant, chain, lock)
        base_history = _earlier(previous, conversation)
        new_items = tuple(self._resolve(request.items, base_history, ctx.tenant))
        history_in = compacted(base_history + new_items)
        if not history_in and request.generate:
            raise InvalidRequest("'input' must contain at least one item.", param="input")
        p = self._build(request, ctx, previous, new_items, history_in, conversation=conversation)
        if p.compaction_threshold is not None:
            return replace(p, compaction=self._summary(p))
        return p

    def after_compaction(self, p: Prepared, summary: CompactionItem) -> Prepared:
        """The prompt of `p` once its conversation is compacted into `summary`: the
        instructions, the user's messages and the summary (see `compacted`). The head's
        KV is still in the slot; the rest is computed. Same id and creation time as
        `p`; it never compacts again."""
        history = compacted((*p.history_in, summary))
        return self._build(
            p.request,
            p.ctx,
            p.previous,
            p.new_items,
            history,
            conversation=p.conversation,
            same_as=p,
            compacted_by=summary,
        )

    def _build(
        self,
        request: CreateRequest,
        ctx: CallContext,
        previous: StoredResponse | None,
        new_items: tuple[Item, ...],
        history_in: tuple[Item, ...],
        *,
        conversation: ConversationTurn | None = None,
        same_as: Prepared | None = None,  # the response this is a phase of: its id, time
        compacted_by: CompactionItem | None = None,
    ) -> Prepared:
        body = request.body
        system = self.renderer.head(body.instructions, request.tools, _knobs(body.reasoning))
        # A warm-up (generate:false) stops before the assistant header so the next turn's
        # rendering extends it token for token.
        text = self.renderer.render(system, history_in, add_generation_prompt=request.generate)
        chain = previous.chain if previous else conversation.chain if conversation else None
        earlier = _earlier(previous, conversation)
        text, tokens, delta_only = self._tokens(text, chain, earlier)
        over = self._compaction_threshold(request, system, history_in, len(tokens))
        truncated = 0
        drop = None
        if not over and body.truncation == "auto" and not self._fits(len(tokens), request):
            cut = self._truncate(request, system, history_in, text, chain)
            if cut is not None:
                history_in, text, tokens, truncated = cut.history, cut.text, cut.tokens, cut.dropped
                if self.config.truncation_kv == "shift":
                    drop, delta_only = cut.drop, cut.drop is not None
                else:  # the head's KV stays; the kept turns are computed again
                    delta_only = False
        # A prompt about to be compacted never runs itself: its budget is decided after.
        max_out = 1 if over else output_budget(
            len(tokens),
            body.max_output_tokens,
            ctx=self.config.ctx,
            max_output=self.config.max_output_tokens,
            max_input=self.config.max_input_tokens,
            generate=request.generate,
        )  # fmt: skip
        grammar, trigger = self.grammars.for_request(request)
        params = SamplingParams.of(
            max_tokens=max_out,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            default_temperature=self.config.default_temperature,
            grammar=grammar,
            grammar_trigger=trigger,
        )
        offered = () if request.tool_choice == "none" else request.tools
        family = self.renderer.family
        return Prepared(
            id=same_as.id if same_as else response_id(self.config.response_worker),
            created_at=same_as.created_at if same_as else time.time(),
            compacted_by=compacted_by,
            request=request,
            ctx=ctx,
            previous=previous,
            new_items=new_items,
            history_in=history_in,
            prompt_text=text,
            tokens=tokens,
            delta_only=delta_only,
            params=params,
            tools=offered,
            parser=lambda: family.parser(offered, text),
            seal=self._sealing(request, ctx),
            shared_prefix=self._shared_prefix(system, history_in, text),
            truncated_items=truncated,
            drop=drop,
            compaction_threshold=over,
            retention=body.prompt_cache_retention or self.config.prompt_cache_retention,
            conversation=conversation,
        )

    def _compaction_threshold(
        self,
        request: CreateRequest,
        system: Head,
        history: tuple[Item, ...],
        prompt_tokens: int,
    ) -> int | None:
        """The threshold this prompt passed, when `context_management` asks for
        compaction and compacting would make the prompt shorter (the user's messages
        stay verbatim, so a conversation of little else gains nothing). A compacted
        prompt (it ends with its summary) never compacts again."""
        entry = request.compaction
        if entry is None or not request.generate:
            return None
        threshold = entry.compact_threshold or self.config.ctx * 3 // 4
        if prompt_tokens <= threshold or isinstance(history[-1], CompactionItem):
            return None
        kept = compacted((*history, CompactionItem("", "")))
        after = len(self.tokenize(self.renderer.render(system, kept)))
        if after + self.config.compact_summary_tokens >= prompt_tokens:
            return None
        return threshold

    def _summary(self, p: Prepared) -> Prepared:
        """The job that writes the summary: the whole conversation, then a request to
        summarize it, as a continuation of the chain (delta only when the chain is
        warm); greedy, --compact-summary-tokens, truncated if the conversation no
        longer fits."""
        body = p.request.body.model_copy(
            update={
                "temperature": 0,
                "top_p": None,
                "max_output_tokens": self.config.compact_summary_tokens,
                "truncation": "auto",
                "context_management": None,
                "text": None,
            }
        )
        request = replace(p.request, body=body, tool_choice="none", text_format=PLAIN_TEXT)
        ask = MessageItem(new_id("msg"), "user", SUMMARY_REQUEST)
        history = (*p.history_in, ask)
        return self._build(
            request, p.ctx, p.previous, p.new_items, history, conversation=p.conversation
        )

    def _truncate(
        self,
        request: CreateRequest,
        system: Head,
        history: tuple[Item, ...],
        full: str,
        chain: ChainState | None,
    ) -> Truncation | None:
        """Drop the oldest items down to --truncation-keep of the context, or as few as
        fit at all when that cannot be reached; None when nothing that may go is enough."""
        keep = self.config.truncation_keep
        for share in (keep, 1.0) if keep < 1 else (1.0,):

            def fits(n: int, share: float = share) -> bool:
                return self._fits(n, request, share)

            cut = truncate(
                self.renderer,
                self.tokenize,
                self.piece,
                system=system,
                history=history,
                full=full,
                lead=_lead(history),
                generate=request.generate,
                fits=fits,
                chain=chain,
            )
            if cut is not None:
                return cut
        return None

    def _fits(self, prompt_tokens: int, request: CreateRequest, share: float = 1.0) -> bool:
        cfg = self.config
        return fits(
            prompt_tokens,
            request.body.max_output_tokens,
            ctx=cfg.ctx,
            max_output=cfg.max_output_tokens,
            max_input=cfg.max_input_tokens,
            generate=request.generate,
            share=share,
        )

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_names:
            aliases = ", ".join(sorted(self.model_names - {self.model_id}))
            raise ModelNotFound(
                f"The model '{model}' does not exist. This server serves "
                f"'{self.model_id}' (aliases: {aliases}).",
                param="model",
            )

    def _previous(
        self, response_id: str | None, tenant: str, cached: StoredResponse | None
    ) -> StoredResponse | None:
        if response_id is None:
            return None
        record = cached if cached is not None and cached.id == response_id else None
        if record is None:
            record = self.store.get(response_id, tenant)
        if record is None:
            raise PreviousResponseNotFound(response_id)
        if record.response.get("status") in ("queued", "in_progress"):
            raise InvalidRequest(
                f"Response '{response_id}' is still in progress (a background response); "
                "continue from it once it has ended.",
                param="previous_response_id",
            )
        return record

    def _conversation(
        self,
        conversation_id: str | None,
        tenant: str,
        chain: ChainState | None,
        lock: ConversationLock | None,
    ) -> ConversationTurn | None:
        if conversation_id is None:
            return None
        items = self.conversations.items(conversation_id, tenant)
        if items is None:
            raise ConversationNotFound(conversation_id, param="conversation")
        return ConversationTurn(conversation_id, items, chain, lock)

    def _sealing(self, request: CreateRequest, ctx: CallContext) -> Callable[[str], str] | None:
        if "reasoning.encrypted_content" not in (request.body.include or ()):
            return None
        sealer, tenant = self.sealer, ctx.tenant
        return lambda text: sealer.seal(text, tenant)

    def _resolve(
        self, items: list[Item | ItemReference], history: tuple[Item, ...], tenant: str
    ) -> list[Item]:
        out: list[Item] = []
        known = {i.id: i for i in history}
        for n, item in enumerate(items):
            if isinstance(item, ReasoningItem) and item.sealed is not None:
                where = f"input[{n}].encrypted_content"
                item = replace(item, text=self.sealer.open(item.sealed, tenant, where), sealed=None)
            if isinstance(item, ItemReference):
                found = known.get(item.id)
                if found is None:
                    raise InvalidRequest(
                        f"Item with id '{item.id}' not found.", param=f"input[{n}].id"
                    )
                out.append(found)
            else:
                out.append(item)
        return out

    def _tokens(
        self, text: str, chain: ChainState | None, earlier: tuple[Item, ...]
    ) -> tuple[str, list[int], bool]:
        """The prompt's text, its tokens, and whether they extend the chain's (`earlier`:
        the conversation the chain computed)."""
        if chain is not None and text.startswith(chain.text):
            # The earlier turns render exactly as before: keep the chain's own tokens
            # (including the model's sampled ones) and tokenize only the new text.
            return text, list(chain.tokens) + self.tokenize(text[len(chain.text) :]), True
        if chain is not None and self.config.reasoning_history == "keep":
            reasonings = [i.text for i in earlier if isinstance(i, ReasoningItem)]
            markup = self.renderer.family.reasoning_markup
            new = kept_reasoning(text, chain.text, reasonings, markup)
            if new is not None:  # the template dropped reasoning: keep it as generated
                return chain.text + new, list(chain.tokens) + self.tokenize(new), True
        return text, self.tokenize(text), False

    def _shared_prefix(self, system: Head, history: tuple[Item, ...], text: str) -> int:
        """How many leading tokens are the conversation's fixed head: instructions, tools
        and leading system/developer messages (what sessions of one tenant share)."""
        lead = history[: _lead(history)]
        if not system.system and not system.tools and not lead:
            return 0
        try:
            head = self.renderer.render(system, lead, add_generation_prompt=False)
        except InvalidRequest:  # a template that will not render a head alone (Llama 3)
            return 0
        if not text.startswith(head):
            return 0
        n = self._head_tokens.get(head)
        if n is None:
            n = len(self.tokenize(head))
            if len(self._head_tokens) > 256:
                self._head_tokens.clear()
            self._head_tokens[head] = n
        # The head ends at a special token, so its tokens are a prefix of the prompt's.
        return n


def _earlier(
    previous: StoredResponse | None, conversation: ConversationTurn | None
) -> tuple[Item, ...]:
    """The conversation before a create's input: its parent's, or its conversation's."""
    if previous is not None:
        return previous.history
    return conversation.items if conversation is not None else ()


def _knobs(reasoning: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """`reasoning.effort` as the template knobs that read it: `enable_thinking` (Qwen3,
    Granite, …: off for none/minimal) and `reasoning_effort` (gpt-oss)."""
    effort = (reasoning or {}).get("effort")
    if not isinstance(effort, str):
        return ()
    return (("enable_thinking", effort not in ("none", "minimal")), ("reasoning_effort", effort))


def _lead(history: tuple[Item, ...]) -> int:
    """How many leading items are system/developer messages (part of the fixed head)."""
    n = 0
    while n < len(history):
        item = history[n]
        if not (isinstance(item, MessageItem) and item.role in ("system", "developer")):
            break
        n += 1
    return n
