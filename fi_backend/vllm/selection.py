"""VLLM_ATTENTION_BACKEND, restored for fi_backend.

vLLM 0.26 dropped the variable: a backend is chosen only by `--attention-backend`,
`--attention-config.backend` (or `LLM(attention_backend=...)`, `attention_config=...`),
else automatically. We give it back, for our backend only:

    VLLM_ATTENTION_BACKEND=FI_BACKEND   (or CUSTOM) selects fi_backend, with no flag.

Where it acts: `EngineArgs.create_engine_config`, the one place where every front end (the
`LLM` class, `vllm serve`, the async engine) turns the user's choices into the VllmConfig
that every engine and worker process receives. There, when the user named no backend, the
variable fills `attention_backend`; an explicit choice always wins, and one log line says
which backend was taken and why.
"""

from __future__ import annotations

import functools
import os

from vllm.logger import init_logger

from fi_backend.vllm.version_gate import BACKEND_NAME, CUSTOM_SLOT, REGISTERED_NAME

ENV_VAR = "VLLM_ATTENTION_BACKEND"
ENV_VALUES_FOR_US = (BACKEND_NAME, CUSTOM_SLOT)

# Under vLLM's logger tree so that vLLM's handler prints our lines like its own.
logger = init_logger("vllm.fi_backend")

_HOOK_MARK = "_fi_backend_env_selection"


def backend_requested_by_env() -> str | None:
    """The enum name VLLM_ATTENTION_BACKEND asks for, if it asks for fi_backend."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    if value.upper() in ENV_VALUES_FOR_US:
        return REGISTERED_NAME
    logger.warning_once(
        "%s=%s is ignored: vLLM no longer reads this variable and fi_backend acts only on "
        "%s; choose other backends with --attention-backend",
        ENV_VAR, value, " or ".join(ENV_VALUES_FOR_US))
    return None


def _explicit_choice(engine_args) -> str | None:
    """The backend the user named through engine arguments, as text; None if none."""
    for choice in (engine_args.attention_backend, engine_args.attention_config.backend):
        if choice is not None:
            return getattr(choice, "name", str(choice))
    return None


def apply_env_selection(engine_args) -> None:
    """Fill `engine_args.attention_backend` from VLLM_ATTENTION_BACKEND unless the user chose."""
    requested = backend_requested_by_env()
    if requested is None:
        return
    explicit = _explicit_choice(engine_args)
    if explicit is None:
        engine_args.attention_backend = requested
        logger.info("fi_backend: %s=%s selects attention backend %s (fi_backend)",
                    ENV_VAR, os.environ[ENV_VAR], requested)
    elif explicit.upper() != requested:
        logger.warning(
            "fi_backend: attention backend %s, chosen explicitly, is used; %s=%s is ignored",
            explicit, ENV_VAR, os.environ[ENV_VAR])


def install_env_selection() -> None:
    """Make VLLM_ATTENTION_BACKEND known to vLLM and honoured by EngineArgs. Idempotent."""
    import vllm.envs as envs
    from vllm.engine.arg_utils import EngineArgs

    # Known variables are not reported as "Unknown vLLM environment variable" (and do not
    # fail `fail_on_environ_validation`); they also enter vLLM's compile-cache key.
    envs.environment_variables.setdefault(ENV_VAR, lambda: os.getenv(ENV_VAR))

    original = EngineArgs.create_engine_config
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):
        apply_env_selection(self)
        return original(self, *args, **kwargs)

    setattr(create_engine_config, _HOOK_MARK, True)
    EngineArgs.create_engine_config = create_engine_config
