"""The official Anthropic SDK through the gateway: one streamed message. Prints the usage the
SDK saw as JSON.

argv: base_url api_key
"""

import json
import sys

from anthropic import Anthropic

base_url, api_key = sys.argv[1], sys.argv[2]
client = Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)

with client.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "hello"}],
) as stream:
    text = "".join(stream.text_stream)
    message = stream.get_final_message()

u = message.usage
print(
    json.dumps(
        {
            "text": text,
            "usage": [
                u.input_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens,
                u.output_tokens,
            ],
        }
    )
)
