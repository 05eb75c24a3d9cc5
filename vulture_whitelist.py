"""Names `vulture` (make lint's dead-code check) cannot see used, each with the reason.
Anything else it reports is dead code: delete it rather than add it here."""

# ruff: noqa
# fmt: off
_ = object()

# Used by frameworks, not by our calls: pydantic settings and validators, FastAPI
# routes, uvicorn's exit flag, llama.cpp's context parameters (ctypes fields)
model_config
_._model_ref
_._model_found
_._is_file
_._stall_factor
_._retention_spelling
_._format_literal  # overrides llama_cpp's SchemaConverter method
tags  # jinja2's Extension declares its tags so
create_response
compact_response
get_response
delete_response
cancel_response
list_input_items
list_models
create_conversation
get_conversation
update_conversation
delete_conversation
list_conversation_items
create_conversation_items
get_conversation_item
delete_conversation_item
healthz
responses_socket
_.should_exit
_.n_ctx
_.n_ubatch
_.n_seq_max
_.n_threads_batch
_.kv_unified
_.no_perf
_.n_tokens

# Request fields accepted (and echoed) that nothing reads
prompt_cache_retention
service_tier
stream_options
top_logprobs
client_metadata

# Public API used by the tests, the benchmarks or an AgentSession's caller
reconnects
replays
_.reconnects
_.replays
_.n_vocab
missing  # fleet/postgres: why PostgreSQL cannot start here
_.set_down
Router
_.route
_.tokens_of
LEAK_GAUGES
