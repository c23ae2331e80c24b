"""Drives Questech's /v1 with the official OpenAI Python SDK (run by tests/e2e/openai_python.rs).

Usage: openai_sdk.py <base_url> <api_key> <model>. Exits non-zero, with the reason, on the first
answer that is not what OpenAI's own API would give; prints one JSON line of findings at the end.
"""

import json
import sys

import openai

base_url, api_key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
QUESTION = "Weather in Paris?"
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]},
    },
}]


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


# A tool call, whole.
r = client.chat.completions.create(
    model=model, tools=TOOLS, seed=3,
    messages=[{"role": "user", "content": QUESTION}])
choice = r.choices[0]
check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason}")
call = choice.message.tool_calls[0]
check(call.function.name == "get_weather", f"tool name {call.function.name}")
check(json.loads(call.function.arguments) == {"query": QUESTION}, call.function.arguments)

# The round trip: the tool's result goes back, the model answers in words.
r2 = client.chat.completions.create(
    model=model, tools=TOOLS,
    messages=[
        {"role": "user", "content": QUESTION},
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ])
check(r2.choices[0].message.content == "The tool said: sunny", r2.choices[0].message.content)

# The same call streamed: the deltas rebuild it.
name, args, finish = "", "", None
stream = client.chat.completions.create(
    model=model, tools=TOOLS, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": QUESTION}])
usage = None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        for t in c.delta.tool_calls or []:
            check(t.index == 0, f"index {t.index}")
            name += (t.function.name or "") if t.function else ""
            args += (t.function.arguments or "") if t.function else ""
        finish = c.finish_reason or finish
check(name == "get_weather" and json.loads(args) == {"query": QUESTION}, f"{name} {args}")
check(finish == "tool_calls", f"stream finish {finish}")
check(usage is not None and usage.completion_tokens > 0, f"stream usage {usage}")

# Vision: an image part; the provider's count of it is the bill's.
img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
r3 = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, img]}])
check(r3.usage.prompt_tokens == 95, f"vision prompt tokens {r3.usage.prompt_tokens}")

# Structured output with a JSON schema.
fmt = {"type": "json_schema", "json_schema": {"name": "weather", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
    "required": ["city", "temp"], "additionalProperties": False}}}
r4 = client.chat.completions.create(
    model=model, response_format=fmt, messages=[{"role": "user", "content": QUESTION}])
doc = json.loads(r4.choices[0].message.content)
check(doc == {"city": "fake", "temp": 1.5}, f"json {doc}")

# A request the model cannot serve is the SDK's BadRequestError, naming the field.
try:
    client.chat.completions.create(
        model=model, tool_choice="sometimes", messages=[{"role": "user", "content": "hi"}])
    sys.exit("FAILED: a bad tool_choice was accepted")
except openai.BadRequestError as e:
    check("tool_choice" in str(e), str(e))

print(json.dumps({"ok": True, "sdk": openai.__version__, "tool_call_id": call.id,
                  "stream_usage": usage.model_dump()}))
