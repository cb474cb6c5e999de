"""The official OpenAI SDK through the gateway: one streamed chat completion (with
include_usage) and one plain one. Prints what the SDK saw as JSON.

argv: base_url api_key
"""

import json
import sys

from openai import OpenAI

base_url, api_key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)

text = ""
usage = None
stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "count to five"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage

plain = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "hi"}],
)
print(
    json.dumps(
        {
            "stream_text": text,
            "stream_usage": [usage.prompt_tokens, usage.completion_tokens],
            "plain_usage": [plain.usage.prompt_tokens, plain.usage.completion_tokens],
            "plain_model": plain.model,
        }
    )
)
