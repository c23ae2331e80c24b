"""Drives Questech's /v1 with the official OpenAI Python SDK (run by tests/e2e/openai_python.rs).

Usage: openai_sdk.py <base_url> <api_key> <model> <embedding model>. Exits non-zero, with the reason, on the first
answer that is not what OpenAI's own API would give; prints one JSON line of findings at the end.
"""

import json
import sys

import openai

base_url, api_key, model, embedding_model = sys.argv[1:5]
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

# Embeddings: the SDK asks for base64 by default and decodes it; floats when asked.
e = client.embeddings.create(model=embedding_model, input=["hello world", "three word text"])
check(len(e.data) == 2 and all(len(d.embedding) == 8 for d in e.data), f"embeddings {e}")
check(e.usage.prompt_tokens == 5, f"embedding usage {e.usage}")
f = client.embeddings.create(model=embedding_model, input="hello world", encoding_format="float")
check(all(abs(a - b) < 1e-6 for a, b in zip(f.data[0].embedding, e.data[0].embedding)),
      "base64 and floats agree")

# A Responses chain of three turns; the third from a second client, streamed with the helper.
r1 = client.responses.create(model=model, input="First question", instructions="Be brief")
check(r1.output_text == "Hello from fake upstream", f"responses text {r1.output_text!r}")
r2 = client.responses.create(model=model, input="Second question", previous_response_id=r1.id)
check(r2.previous_response_id == r1.id, "chained")
other = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
with other.responses.stream(model=model, input="Third question",
                            previous_response_id=r2.id) as s:
    streamed = "".join(ev.delta for ev in s if ev.type == "response.output_text.delta")
    final = s.get_final_response()
check(streamed == final.output_text == "Hello from fake upstream", f"stream {streamed!r}")
got = client.responses.retrieve(final.id)
check(got.output_text == streamed and got.status == "completed", f"retrieve {got}")
items = client.responses.input_items.list(final.id)
check(items.data[0].content[0].text == "Third question", f"input items {items}")

# A function tool through the Responses API, and its output back.
rtools = [{"type": "function", "name": "get_weather", "description": "The weather",
           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]
rt = client.responses.create(model=model, input=QUESTION, tools=rtools)
fc = [o for o in rt.output if o.type == "function_call"][0]
check(fc.name == "get_weather" and json.loads(fc.arguments) == {"query": QUESTION}, f"{fc}")
rt2 = client.responses.create(model=model, previous_response_id=rt.id, tools=rtools, input=[
    {"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}])
check(rt2.output_text == "The tool said: sunny", rt2.output_text)
client.responses.delete(final.id)
try:
    client.responses.retrieve(final.id)
    sys.exit("FAILED: a deleted response was found")
except openai.NotFoundError:
    pass

print(json.dumps({"ok": True, "sdk": openai.__version__, "tool_call_id": call.id,
                  "stream_usage": usage.model_dump()}))
