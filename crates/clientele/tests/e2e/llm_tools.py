"""An agent's tool loop with the official OpenAI SDK through the gateway: each turn streams a
chat completion with a tool, runs the tool call the model asked for and sends its result
back, so the conversation (the request) grows every turn. Prints the tool calls seen as JSON.

argv: base_url api_key session model turns
"""

import json
import sys

from openai import OpenAI

base_url, api_key, session, model, turns = sys.argv[1:6]
client = OpenAI(
    base_url=base_url,
    api_key=api_key,
    max_retries=0,
    timeout=20,
    default_headers={"X-Session-Id": session},
)
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
seen = []
for _ in range(int(turns)):
    calls = {}
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=tools, stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                if tc.function is not None:
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
    calls = [calls[i] for i in sorted(calls)]
    seen.append([[c["name"], c["arguments"]] for c in calls])
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in calls
            ],
        }
    )
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c["id"], "content": "cloudy, 12 C"})
print(json.dumps({"calls": seen}))
