"""Typed settings and the shipped default configuration file."""

from config.settings import (
    DEFAULT_CONFIG_FILE,
    ChatSettings,
    ConfigError,
    ContextSettings,
    GenerationSettings,
    LoggingSettings,
    ModelSettings,
    Settings,
    SlackSettings,
    StorageSettings,
    TasksSettings,
    load_settings,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ChatSettings",
    "ConfigError",
    "ContextSettings",
    "GenerationSettings",
    "LoggingSettings",
    "ModelSettings",
    "Settings",
    "SlackSettings",
    "StorageSettings",
    "TasksSettings",
    "load_settings",
]
