"""llama.cpp's OpenAI-compatible server, safe on every CPU: `python -m llmrl.llm.server <its arguments>`.

    python -m llmrl.llm.server --model "$(python -c 'import llmrl.llm.llamacpp as m; print(m.embedded_gguf_path())')" \\
        --host 127.0.0.1 --port 8000 --logits_all true

Takes exactly `python -m llama_cpp.server`'s arguments. The only difference: each `--model` first goes
through llmrl's self-check (`llmrl.llm.selfcheck`), and the server's models are built with its answer, so
the server does not segfault on its first request on CPUs where llama.cpp's AMX path crashes.
"""

from __future__ import annotations

import runpy
import sys

from llmrl.llm.selfcheck import extra_buffers_for, extra_buffers_setting, llama_defaults

__all__ = ["main"]


def _models(argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--model="):
            out.append(arg.split("=", 1)[1])
    return out


def main() -> None:
    models = _models(sys.argv[1:])
    forced = extra_buffers_setting()
    # A config file (no --model) names its models inside: without a check, plain buffers are the safe side.
    extra = all(extra_buffers_for(m) for m in models) if models else bool(forced)
    with llama_defaults(extra):
        sys.argv[0] = "llama_cpp.server"
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
