"""One typed Settings object: defaults < config file < CHINWAG_* environment < CLI flags."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_cache_dir, user_data_dir
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bot.errors import ConfigError

APP_NAME = "chinwag"
DEFAULT_CONFIG_FILE = Path(__file__).with_name("chinwag.toml")
CONFIG_ENV_VAR = "CHINWAG_CONFIG"

DEFAULT_SYSTEM_PROMPT = (
    "You are chinwag, a helpful assistant that chats with a team in their chat tools. "
    "Answer clearly and concisely. If you do not know something, say so instead of guessing."
)

_config_file: ContextVar[Path] = ContextVar("chinwag_config_file", default=DEFAULT_CONFIG_FILE)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """Which model to run and where: in this process ("local") or on a model server ("openai")."""

    # "openai": any server speaking the OpenAI-compatible chat API (vLLM, llama.cpp, Ollama, TGI…)
    # at `base_url`, `name` being the model's id there; its key comes from CHINWAG_MODEL_API_KEY.
    backend: Literal["local", "openai"] = "local"
    base_url: str | None = None
    name: str = "qwen2.5-coder-0.5b-instruct"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["auto", "none", "int8", "int4"] = "auto"
    # The quantized layers' kernels: chinwag's own (bot/inference/kernels.cpp, built once; a path of
    # `simd` and a C++ compiler needed, else torch's are used). "auto": where the path has integer
    # dot products (AVX512-VNNI, AVX2, NEON) the decode step rounds its activations to int8 and
    # prompts to 16 bits, on AVX-512 CPUs with AVX512-BF16 only to bf16, else float32; "int8": the
    # same; "int16": 16 bits everywhere; "float32": exact; "torch": torch's kernels.
    kernels: Literal["auto", "int8", "int16", "float32", "torch"] = "auto"
    # Which instruction set chinwag's kernels are compiled for and run with (a "path"): "auto", the
    # best this CPU runs (AVX-512, else AVX2 + FMA; NEON on ARM); or one forced, which is an error at
    # start where the CPU cannot run it. Separate from `kernels`, which chooses the arithmetic.
    simd: Literal["auto", "avx512", "avx2", "neon"] = "auto"
    cache_dir: Path | None = None
    threads: int = Field(default=0, ge=0)
    # backend "openai": the context window when the server's model listing does not report one,
    # how long to wait for the server, and how often to retry one that is down, busy or failing.
    context_window: int = Field(default=4096, ge=256)
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    retries: int = Field(default=3, ge=0, le=10)

    @model_validator(mode="after")
    def _server_needs_url(self) -> ModelSettings:
        if self.backend == "openai" and not self.base_url:
            raise ValueError('backend "openai" needs base_url (e.g. "http://gpu-box:8000/v1")')
        return self


class GenerationSettings(_Section):
    """Default sampling parameters; a conversation may override them with /set."""

    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0, le=1000)
    max_tokens: int = Field(default=512, ge=1, le=8192)
    repetition_penalty: float = Field(default=1.05, ge=1.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class ChatSettings(_Section):
    """The persona every conversation starts with."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT


class ContextSettings(_Section):
    """How much of the model's context window a conversation may use."""

    max_tokens: int = Field(default=8192, ge=256)
    keep_ratio: float = Field(default=0.6, gt=0.0, le=1.0)
    summary_max_tokens: int = Field(default=256, ge=32, le=2048)


class RetrievalSettings(_Section):
    """Answers from the team's documents: the Chroma store, the embeddings, what goes into a prompt."""

    enabled: bool = True
    chroma_url: str | None = None
    # A Chroma server only: where on it, how to sign in (the secret comes from the environment:
    # CHINWAG_CHROMA_TOKEN or CHINWAG_CHROMA_PASSWORD), and how long to wait for an answer.
    chroma_tenant: str = Field(default="default_tenant", min_length=1)
    chroma_database: str = Field(default="default_database", min_length=1)
    chroma_auth: Literal["none", "token", "basic"] = "none"
    chroma_token_header: Literal["Authorization", "X-Chroma-Token"] = "Authorization"
    chroma_user: str = ""
    chroma_timeout_s: float = Field(default=10.0, gt=0, le=600)
    collection: str = Field(default="chinwag", min_length=3, max_length=60)
    embedding_model: str = "all-minilm-l6-v2"
    chunk_size: int = Field(default=1000, ge=100, le=8000)
    chunk_overlap: int = Field(default=150, ge=0, le=2000)
    top_k: int = Field(default=4, ge=1, le=20)
    min_score: float = Field(default=0.3, ge=-1.0, le=1.0)
    min_score_with_tools: float = Field(default=0.5, ge=-1.0, le=1.0)
    max_context_tokens: int = Field(default=1500, ge=100)
    batch_size: int = Field(default=16, ge=1, le=512)
    hybrid: bool = True
    keyword_sync_s: float = Field(default=60.0, ge=0, le=86_400)
    grounded: bool = True
    # With `grounded`: decline when the model's log-probability of opening its reply with
    # "Not in the documents" is at least this, whatever it wrote (0: off, the check of words alone).
    # Off by default: with tools offered it cost as many right answers as it saved (bench/RESULTS.md).
    decline_logprob: float = Field(default=0.0, le=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self

    @model_validator(mode="after")
    def _basic_needs_user(self) -> RetrievalSettings:
        if self.chroma_auth == "basic" and not self.chroma_user:
            raise ValueError('chroma_auth "basic" needs chroma_user (the password: CHINWAG_CHROMA_PASSWORD)')
        return self


class ToolsSettings(_Section):
    """Tools the model may call during a turn."""

    enabled: bool | list[str] = True
    scopes: dict[str, bool | list[str]] = Field(default_factory=dict)
    disabled: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    constrained: bool = True
    max_rounds: int = Field(default=3, ge=1, le=10)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    result_max_chars: int = Field(default=2000, ge=100, le=50_000)
    max_outgoing_calls: int = Field(default=3, ge=0, le=50)
    max_concurrent_calls: int = Field(default=4, ge=1, le=64)
    workers: int = Field(default=2, ge=1, le=16)
    http_allow_hosts: list[str] = Field(default_factory=list)
    http_allow_private: bool = False
    http_timeout_s: float = Field(default=5.0, gt=0, le=60)
    http_max_bytes: int = Field(default=200_000, ge=1000, le=10_000_000)


class StorageSettings(_Section):
    """Where the conversation history lives."""

    url: str | None = None
    busy_timeout_ms: int = Field(default=5000, ge=0)
    write_deadline_s: float = Field(default=120.0, gt=0)


class SlackSettings(_Section):
    """The Slack app: how it connects, where it answers, how fast it edits. Tokens: environment only."""

    mode: Literal["socket", "http"] = "socket"
    api_base_url: str = "https://slack.com/api/"
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=3000, ge=0, le=65535)
    http_path: str = "/slack/events"
    allowed_channels: list[str] = Field(default_factory=list)
    allowed_users: list[str] = Field(default_factory=list)
    update_interval_s: float = Field(default=1.2, ge=0.0, le=60.0)
    updates_per_minute: int = Field(default=50, ge=1, le=10_000)
    max_message_chars: int = Field(default=3900, ge=200, le=12_000)
    thinking_text: str = "_Thinking…_"
    shutdown_timeout_s: float = Field(default=30.0, ge=0.0, le=600.0)
    # Replicas share the edit budget in Redis ("redis://host:6379/0"); unset: each process its own.
    redis_url: str | None = None

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_scheme(cls, value: Any) -> Any:
        value = _unset_if_empty(value)
        if isinstance(value, str) and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack_sdk appends the method name to the base URL as it is.
        return value if value.endswith("/") else value + "/"

    @field_validator("http_path")
    @classmethod
    def _leading_slash(cls, value: str) -> str:
        return value if value.startswith("/") else "/" + value


class DiscordSettings(_Section):
    """The Discord bot: where it answers, how fast it edits, which servers. Token: DISCORD_TOKEN only."""

    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    reply_in_thread: bool = True
    thread_auto_archive_minutes: Literal[60, 1440, 4320, 10080] = 1440
    message_content_intent: bool = False
    allowed_guilds: list[str] = Field(default_factory=list)
    allowed_channels: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    allow_dms: bool = True
    edit_interval_s: float = Field(default=1.0, ge=0.0, le=60.0)
    max_message_chars: int = Field(default=2000, ge=100, le=2000)
    sync_commands: bool = True
    shutdown_timeout_s: float = Field(default=30.0, ge=0.0, le=600.0)
    # Sharding: Discord splits the guilds into `shard_count` shards; this process connects
    # `shard_ids` of them (default: all), so replicas given different ids split the guilds.
    shard_count: int | None = Field(default=None, ge=1, le=10_000)
    shard_ids: list[int] | None = None

    @model_validator(mode="after")
    def _shards_within_count(self) -> DiscordSettings:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("shard_ids needs shard_count")
            if not self.shard_ids:
                raise ValueError("shard_ids lists no shard")
            wrong = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if wrong:
                raise ValueError(f"shard_ids must be from 0 to {self.shard_count - 1}, not {wrong}")
            if len(set(self.shard_ids)) != len(self.shard_ids):
                raise ValueError("shard_ids lists a shard twice")
        return self

    @field_validator("api_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        # discord.py appends paths that start with a slash.
        return value.rstrip("/")

    @field_validator("allowed_guilds", "allowed_channels", "allowed_roles", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        # Snowflakes are often written as TOML integers; compare them as text.
        return [str(v) for v in value] if isinstance(value, list) else value


class SchedulerSettings(_Section):
    """How one model serves many conversations at once: batch size, queue, prefix cache."""

    enabled: bool = True
    max_batch: int = Field(default=8, ge=1, le=256)
    max_queue: int = Field(default=64, ge=0, le=100_000)
    prefix_cache_mb: int = Field(default=256, ge=0, le=65_536)
    # The keys and values the scheduler keeps (the batch's and the prefix cache's): "float16" where
    # chinwag's kernels run the decode step (half the memory; attention computes in float32), else
    # the model's own dtype; "float32": the model's own dtype always (greedy replies then match
    # transformers' forward token for token at `model.kernels = "int16"`).
    kv_cache: Literal["float16", "float32"] = "float16"


class ServeSettings(_Section):
    """`chinwag serve`'s own endpoints: /healthz and /metrics."""

    monitor_host: str = "127.0.0.1"
    monitor_port: int = Field(default=9477, ge=0, le=65535)


class LoggingSettings(_Section):
    """Log level and file (the terminal stays clean for the chat)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: Path | None = None
    # Libraries' DEBUG records (SQL parameters, platform payloads) and request URLs hold what
    # people wrote: they reach the log only when this is on.
    message_text: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return _unset_if_empty(value)


class FewShot(_Section):
    """One worked example of a custom command: what it read, and what it should answer."""

    input: str
    output: str


class CustomCommand(_Section):
    """A team's own language command: `/name` on every surface, filled from a prompt template."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    description: str = ""
    # {thread}: the messages read, numbered, with their authors; {text}: their text alone.
    prompt: str
    examples: list[FewShot] = []
    # A JSON Schema: the answer is then JSON fitting it, by constrained decoding (as tool calls).
    output_schema: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _has_a_slot(self) -> CustomCommand:
        if "{text}" not in self.prompt and "{thread}" not in self.prompt:
            raise ValueError(f"command {self.name!r}: the prompt needs a {{text}} or {{thread}} slot")
        return self


DEFAULT_COMMANDS = [
    CustomCommand(
        name="standup",
        description="yesterday / today / blockers from a thread",
        prompt=(
            "Write a standup update from this team thread, with three headed lists: **Yesterday** "
            "(what was done), **Today** (what is planned), **Blockers** (what is stuck, or 'none'). "
            "Name who does what. Use only what the thread says.\n\n{thread}"
        ),
        temperature=0.0,
        max_tokens=300,
    ),
    CustomCommand(
        name="tldr",
        description="the gist in one or two sentences",
        prompt="Say in one or two sentences what this is about and what was decided.\n\n{thread}",
        examples=[
            FewShot(
                input="[1] Ana: the deploy failed again, disk full on db-2\n[2] Raj: I'll add 100 GB "
                "and rerun it tonight\n[3] Ana: ok, I'll tell the customer it is tomorrow",
                output="db-2 ran out of disk and broke the deploy; Raj adds 100 GB and reruns it "
                "tonight, and Ana tells the customer it moves to tomorrow.",
            )
        ],
        temperature=0.0,
        max_tokens=120,
    ),
]


class TasksSettings(_Section):
    """Language tasks (summarise, translate, action items) and the team's own commands."""

    max_messages: int = Field(default=5000, ge=1, le=100_000)
    piece_tokens: int = Field(default=3072, ge=256)
    summary_tokens: int = Field(default=400, ge=32, le=4096)
    commands: list[CustomCommand] = Field(default_factory=lambda: list(DEFAULT_COMMANDS))

    @model_validator(mode="after")
    def _unique_names(self) -> TasksSettings:
        names = [c.name for c in self.commands]
        if len(names) != len(set(names)):
            raise ValueError("tasks.commands: two commands have the same name")
        return self


class Settings(BaseSettings):
    """Everything chinwag reads at start; passed down, never read from the environment again."""

    model_config = SettingsConfigDict(
        env_prefix="CHINWAG_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data_dir: Path | None = None
    model: ModelSettings = ModelSettings()
    generation: GenerationSettings = GenerationSettings()
    chat: ChatSettings = ChatSettings()
    context: ContextSettings = ContextSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    tools: ToolsSettings = ToolsSettings()
    storage: StorageSettings = StorageSettings()
    slack: SlackSettings = SlackSettings()
    discord: DiscordSettings = DiscordSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    serve: ServeSettings = ServeSettings()
    logging: LoggingSettings = LoggingSettings()
    tasks: TasksSettings = TasksSettings()

    @field_validator("data_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # CHINWAG_DATA_DIR="" would otherwise mean the current directory, silently.
        return _unset_if_empty(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file.get())
        return (init_settings, env_settings, toml)

    # Derived locations -------------------------------------------------------------

    @property
    def resolved_data_dir(self) -> Path:
        """The data directory: CHINWAG_DATA_DIR / data_dir, else the platform's user data dir."""
        return (self.data_dir or Path(user_data_dir(APP_NAME))).expanduser()

    @property
    def model_cache_dir(self) -> Path:
        """Where prepared models (assembled GGUF, safetensors copies) are kept."""
        return (self.model.cache_dir or Path(user_cache_dir(APP_NAME)) / "models").expanduser()

    @property
    def chroma_dir(self) -> Path:
        """Where the embedded Chroma store keeps its files (unused with retrieval.chroma_url)."""
        return self.resolved_data_dir / "chroma"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the history database."""
        if self.storage.url:
            return self.storage.url
        return f"sqlite+aiosqlite:///{self.resolved_data_dir / 'chinwag.db'}"

    @property
    def log_file(self) -> Path:
        """The log file (default: logs/chinwag.log under the data directory)."""
        return (self.logging.file or self.resolved_data_dir / "logs" / "chinwag.log").expanduser()


def _unset_if_empty(value: Any) -> Any:
    """An empty path (an empty environment variable, "" in the file) means "not set"."""
    return None if isinstance(value, str | Path) and not str(value).strip() else value


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown configuration key '{key}'")
        else:
            lines.append(f"invalid value for '{key}': {item['msg']}")
    return "; ".join(lines)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the settings; `overrides` (CLI flags, nested dicts allowed) take precedence."""
    path = Path(config_file or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    token = _config_file.set(path)
    try:
        return Settings(**_drop_none(overrides))
    except ValidationError as error:
        raise ConfigError(f"{_describe(error)} (config file: {path})") from None
    except ValueError as error:  # malformed TOML
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    finally:
        _config_file.reset(token)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """CLI flags that were not given arrive as None; they must not override anything."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
